"""Image decoding, identity folders, manifests, pairs files and person-disjoint splits."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import DataError, ImageError
from pipeline.data.image_batch import decode_faces
from pipeline.data.images import MAX_PIXELS, decode_image, load_face
from pipeline.data.manifest import read_images, read_manifest, scan_folder
from pipeline.data.pairs import parse_pairs
from pipeline.data.splits import split_by_pairs


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_mode_decodes_to_rgb(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGB", (20, 12), (200, 100, 50)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    p = _save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    arr = decode_image(p)
    assert arr.shape == (12, 20, 3) and arr.dtype == np.uint8


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    p = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert decode_image(p).shape == (30, 10, 3)


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    p = _save(Image.fromarray(arr), tmp_path / "deep.png")
    out = decode_image(p)
    assert out.max() == 255 and out.min() == 0


@pytest.mark.parametrize("case,match", [
    ("empty", "empty file"), ("text", "not a recognised image"), ("truncated", "corrupt or truncated"),
    ("dir", "is a directory"), ("missing", "cannot read file"),
])
def test_bad_files_raise_image_error_naming_the_file(tmp_path: Path, case: str, match: str) -> None:
    p = tmp_path / f"{case}.jpg"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("hello, not a jpeg")
    elif case == "truncated":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
        p.write_bytes(buf.getvalue()[:200])
    elif case == "dir":
        p.mkdir()
    with pytest.raises(ImageError, match=match) as err:
        decode_image(p)
    assert str(p) in str(err.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    side = int(MAX_PIXELS**0.5) + 100
    p = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="decompression-bomb"):
        decode_image(p)


def test_load_face_crops_the_centre(tmp_path: Path) -> None:
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[25:75, 25:75] = 255
    p = _save(Image.fromarray(arr), tmp_path / "c.png")
    face = load_face(p, 0.5, 10)
    assert face.shape == (10, 10, 3) and face.min() > 200


def test_batch_decode_reports_rejects_and_keeps_the_rest(synthetic_folders: Path) -> None:
    bad = synthetic_folders / "person_0" / "broken.jpg"
    bad.write_text("garbage")
    table = scan_folder(synthetic_folders)
    faces = decode_faces(table["abs_path"].tolist(), table["image_path"].tolist(), 1.0, 16)
    assert len(faces.keep) == len(table) - 1
    assert faces.rejects["image_path"].tolist() == ["person_0/broken.jpg"]
    assert "not a recognised image" in faces.rejects["error"].iloc[0]


def test_scan_folder_layout_and_errors(synthetic_folders: Path, tmp_path: Path) -> None:
    table = scan_folder(synthetic_folders)
    assert len(table) == 18 and table["identity"].nunique() == 6
    assert table["image_path"].iloc[0] == "person_0/img_0.png"
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        scan_folder(tmp_path / "empty")


def test_manifest_csv_with_bom_relative_paths_and_duplicates(synthetic_folders: Path) -> None:
    csv = synthetic_folders / "m.csv"
    csv.write_bytes("\ufeffimage_path,identity,extra\nperson_1/img_0.png,p1,x\nperson_1/img_0.png,p1,x\n".encode())
    t = read_manifest(csv)
    assert len(t) == 1 and t["extra"].iloc[0] == "x"
    assert t["abs_path"].iloc[0] == str(synthetic_folders / "person_1" / "img_0.png")


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("path,who\na.jpg,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['image_path'\]"):
        read_manifest(tmp_path / "cols.csv")
    pd.DataFrame({"image_path": [1, 2]}).to_parquet(tmp_path / "types.parquet")
    with pytest.raises(DataError, match="row 0: column 'image_path' must be text"):
        read_manifest(tmp_path / "types.parquet")
    (tmp_path / "noid.csv").write_text("image_path,identity\na.jpg,\n")
    with pytest.raises(DataError, match="row 0: empty identity"):
        read_images(tmp_path / "noid.csv", require_identities=True)


def test_pairs_parsing_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "pairs.txt"
    good.write_text("2\t1\nA\t1\t2\nA\t1\tB\t3\nC\t2\t4\nC\t1\tD\t1\n")
    df = parse_pairs(good)
    assert df["fold"].tolist() == [1, 1, 2, 2]
    assert df["same"].tolist() == [True, False, True, False]
    assert df["path2"].iloc[1] == "B/B_0003.jpg"
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t1\nA\t1\nA\t1\tB\t3\n")
    with pytest.raises(DataError, match="line 2"):
        parse_pairs(bad)


def test_real_pairs_split_is_person_disjoint(pairs_file: Path, lfw_root: Path) -> None:
    import os

    pairs = parse_pairs(pairs_file)
    assert len(pairs) == 4200 and pairs["fold"].max() == 7
    people = set(os.listdir(lfw_root))
    split = split_by_pairs(people, pairs, (6, 7), (5,))
    assert split.train.isdisjoint(split.dev) and split.train.isdisjoint(split.val) and split.val.isdisjoint(split.dev)
    assert len(split.dev_pairs) == 1200
    dev_people = set(pairs[pairs.fold >= 6].name1) | set(pairs[pairs.fold >= 6].name2)
    assert dev_people == set(split.dev)
    assert split.train | split.val | split.dev == people


def test_min_images_per_identity_leaves_out_people_with_fewer_photos(synthetic_folders: Path) -> None:
    """data.min_images_per_identity=N: training people with < N photos are not trained on, not even unlabelled."""
    from pipeline.core.config import load_config
    from pipeline.train.prepare import prepare_training

    for j in (1, 2):  # person_5 keeps one photo, person_4 two; the others three
        (synthetic_folders / "person_5" / f"img_{j}.png").unlink()
    (synthetic_folders / "person_4" / "img_2.png").unlink()
    base = ["data.face_detector=none", "data.val_source=train", "data.val_fraction=0.01", "data.image_size_px=32",
            "train.augment=false", "distill.teacher="]
    everyone = prepare_training(synthetic_folders, None, load_config(None, base))
    trained = set(everyone.class_names)
    counts = {p: 3 for p in trained} | {p: n for p, n in (("person_5", 1), ("person_4", 2)) if p in trained}
    assert len(everyone.labels) == sum(counts.values())
    for need in (2, 3):
        data = prepare_training(synthetic_folders, None, load_config(None, [*base, f"data.min_images_per_identity={need}"]))
        assert set(data.class_names) == {p for p, n in counts.items() if n >= need}
        assert len(data.labels) == len(data.rows) == sum(n for n in counts.values() if n >= need)
        assert data.split.val == everyone.split.val  # validation and dev people are untouched
    with pytest.raises(DataError, match="no training people left.*< 9 images"):
        prepare_training(synthetic_folders, None, load_config(None, [*base, "data.min_images_per_identity=9"]))
