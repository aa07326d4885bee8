"""An enrol or lookup run that rejects at least `[rejects] fail_share` of its input ends Failed with the reason
(it used to end Completed, exit 0, having rejected everything); what went through is kept."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flow_testlib import gallery_and_probes

from flows.enroll import enroll_flow
from flows.enroll import main as enroll_main
from flows.lookup import lookup_flow
from pipeline.core.errors import DataError

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _bad(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = tmp_path / f"bad{i}.jpg"
        p.write_text("not an image")
        paths.append(str(p))
    return paths


def test_all_rejected_fails_by_default_and_a_lower_share_is_configurable(tiny_model: Path, real_subset: Path,
                                                                         tmp_path: Path, capsys) -> None:
    bad = _bad(tmp_path, 3)
    pd.DataFrame({"image_path": bad, "identity": ["A", "B", "C"]}).to_csv(tmp_path / "all_bad.csv", index=False)
    with pytest.raises(DataError, match=r"enrolment rejected 3 of 3 input\(s\) \(100%\), at or above \[rejects\] "
                                        r"fail_share=1; first: .*bad0.jpg: "):
        enroll_flow(str(tmp_path / "all_bad.csv"), str(tmp_path / "store"), str(tiny_model))
    gallery, probes = gallery_and_probes(real_subset, 3)
    mixed = pd.concat([gallery, pd.DataFrame({"image_path": bad[:2], "identity": ["A", "B"]})], ignore_index=True)
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    res = enroll_flow(str(tmp_path / "mixed.csv"), str(tmp_path / "store"), str(tiny_model))  # 2 of 5: fine
    assert (res["enrolled"], res["rejected"]) == (3, 2)
    # by hand, with a lower share: one line, exit 2, and the good images are enrolled all the same
    assert enroll_main(["--images", str(tmp_path / "mixed.csv"), "--index", str(tmp_path / "store2"), "--model",
                        str(tiny_model), "--fail-reject-share", "0.4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rejected 2 of 5 input(s) (40%), at or above [rejects] fail_share=0.4" in err[0]
    with pytest.raises(DataError, match=r"lookup \(identify\) rejected 2 of 2"):
        pd.DataFrame({"image_path": bad[:2]}).to_csv(tmp_path / "probes.csv", index=False)
        lookup_flow(str(tmp_path / "probes.csv"), str(tmp_path / "hits.parquet"), "identify",
                    index=str(tmp_path / "store"))
