"""Benchmark of the Prefect flows against the library calls they wrap, and of Dask scale-out.

    python bench/bench_flows.py --data ../shared/data/lfw --out docs/benchmarks.md

- Flow overhead: identify ``--probes`` real LFW images (top-5) against a gallery of ``--gallery`` people
  (one image each), through ``flows.lookup.lookup_flow`` (tasks, part files, merge, artifacts) and through
  the library (``pipeline.serve.gallery.run_chunked(identify_chunk)`` + one Parquet write), alternating, in the
  same process, same model, store and chunk size; the two result files must be equal.
- Memory: identify ``--memory-probes`` probe embeddings through the flow and the library, each in a fresh
  process, sampling its resident memory (top-5 and top-50).
- Scale-out: enrol ``--embed`` real images (embedding dominates) with ``flows.enroll.enroll_flow`` on the
  default task runner (one process) and on prefect-dask's DaskTaskRunner against a local 2-worker cluster
  (``distributed.LocalCluster``, 1 thread per worker), each into a fresh store; plus ``embed_table`` alone.
Flows run against a `prefect server start` on 127.0.0.1 (as in production: the Dask workers report to the
same API). Medians of ``--repeats`` runs after one warm-up run each (excluded: it imports torch in the Dask
workers and loads the model there). The model is untrained (0 steps) with the
default architecture and input size: speed does not depend on the weights. ``--out`` replaces the
"## Flows" section of a markdown file (other sections kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from docsection import write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# One torch intra-op thread in every process (Dask's nanny does the same for its workers): concurrency then
# comes only from chunks in flight / workers, and the main thread and task threads run alike.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from flows.enroll import enroll_flow  # noqa: E402
from flows.lookup import lookup_flow  # noqa: E402
from flows.settings import task_runner  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.io import write_parquet_atomic
from pipeline.data.manifest import read_images  # noqa: E402
from pipeline.model.artifacts import load_model  # noqa: E402
from pipeline.model.embed import embed_table  # noqa: E402
from pipeline.serve.gallery import (  # noqa: E402
    identify_chunk,
    open_gallery,
    read_probes,
    run_chunked,
)
from pipeline.train.loop import train  # noqa: E402
from pipeline.train.prepare import prepare_training  # noqa: E402

SECTION = "## Flows"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_model(images: pd.DataFrame, work: Path) -> Path:
    """An untrained model of the default configuration (the budget ends before the first step)."""
    subset = images[images["identity"].isin(images["identity"].value_counts().index[:60])]
    subset[["image_path", "identity"]].assign(image_path=subset["abs_path"]).to_csv(work / "train.csv", index=False)
    # the model these figures were measured with (session 2 default input, one small backbone)
    cfg = load_config(None, ["train.minutes=0.0001", "model.backbone=test_resnet", "train.member_shares=", "data.crop_fraction=0.52",
                             "data.image_size_px=64", "data.face_detector=none", "distill.teacher="])
    train(cfg, prepare_training(work / "train.csv", None, cfg), work / "model")
    return work / "model"


def bench_lookup(args: argparse.Namespace, images: pd.DataFrame, model_dir: Path, work: Path) -> dict[str, Any]:
    gallery = images.groupby("identity").head(1).head(args.gallery)
    gallery[["abs_path", "identity"]].rename(columns={"abs_path": "image_path"}).to_csv(work / "gallery.csv",
                                                                                        index=False)
    rest = images.drop(gallery.index)
    probes = rest.iloc[[i % len(rest) for i in range(args.probes)]]  # all other images, repeated up to N rows
    # a probe_id column keeps repeated images as distinct rows (manifests drop exact duplicate rows)
    probes[["abs_path"]].rename(columns={"abs_path": "image_path"}).assign(probe_id=range(len(probes))).to_csv(
        work / "probes.csv", index=False)
    enroll_flow(str(work / "gallery.csv"), str(work / "store"), str(model_dir))
    store, model = open_gallery(work / "store")

    def via_flow(in_flight: int) -> None:
        lookup_flow(str(work / "probes.csv"), str(work / f"flow{in_flight}.parquet"), "identify",
                    index=str(work / "store"), top_k=5, chunk_size=args.chunk, max_in_flight=in_flight)

    def via_library() -> None:
        table = read_probes(work / "probes.csv")
        res, _ = run_chunked(partial(identify_chunk, store, model, top_k=5), table, args.chunk)
        write_parquet_atomic(res, work / "lib.parquet")

    probes.head(200)[["abs_path"]].rename(columns={"abs_path": "image_path"}).to_csv(work / "warm.csv", index=False)
    lookup_flow(str(work / "warm.csv"), str(work / "warm.parquet"), "identify", index=str(work / "store"))
    via_library()
    flow_s, seq_s, lib_s = [], [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
        lib_s.append(timed(via_library))
        seq_s.append(timed(lambda: via_flow(1)))
        flow_s.append(timed(lambda: via_flow(4)))
    lib = pq.read_table(work / "lib.parquet").to_pandas()
    for name in ("flow1.parquet", "flow4.parquet"):
        pd.testing.assert_frame_equal(pq.read_table(work / name).to_pandas(), lib, check_dtype=False)
    return {"probes": len(probes), "distinct": probes["abs_path"].nunique(), "gallery": len(store), "rows": len(lib),
            "flow": flow_s, "flow_sequential": seq_s, "library": lib_s}


def bench_memory(args: argparse.Namespace, model_dir: Path, work: Path, url: str) -> dict[str, Any]:
    """Peak memory of identifying ``--memory-probes`` probe EMBEDDINGS (an `embed` Parquet: no image decoding),
    through the flow and through the library, each in a fresh process (peak RSS growth over a warm-up run)."""
    import numpy as np

    from pipeline.model.embed import embeddings_table

    model = load_model(model_dir)
    rng = np.random.default_rng(0)
    for name, n in (("warm", 100), ("many", args.memory_probes)):
        x = rng.standard_normal((n, model.encoder.embedding_dim), dtype=np.float32)
        rows = pd.DataFrame({"image_path": [f"probe-{i}.jpg" for i in range(n)], "identity": [None] * n})
        write_parquet_atomic(embeddings_table(rows, x / np.linalg.norm(x, axis=1, keepdims=True), model.model_version),
                             work / f"emb-{name}.parquet")
    out: dict[str, Any] = {"probes": args.memory_probes}
    env = {**os.environ, "PREFECT_API_URL": url}
    for top_k in (5, 50):
        for mode in ("library", "flow"):
            done = subprocess.run([sys.executable, __file__, "--memory-child", mode, "--work", str(work), "--chunk",
                                   str(args.chunk), "--top-k", str(top_k)], env=env, capture_output=True, text=True,
                                  timeout=1800)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            out[(mode, top_k)] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def current_rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(mode: str, work: Path, chunk: int, top_k: int) -> None:
    """Print the peak growth of this process's resident memory (sampled every 5 ms) during one big lookup."""
    import gc
    import threading

    store, model = open_gallery(work / "store")

    def run(name: str) -> int:
        out = work / f"mem-{mode}-{name}.parquet"
        if mode == "flow":
            lookup_flow(str(work / f"emb-{name}.parquet"), str(out), "identify", index=str(work / "store"),
                        top_k=top_k, chunk_size=chunk)
        else:
            res, _ = run_chunked(partial(identify_chunk, store, model, top_k=top_k),
                                 read_probes(work / f"emb-{name}.parquet"), chunk)
            write_parquet_atomic(res, out)
        return pq.read_metadata(out).num_rows

    run("warm")
    gc.collect()
    base, peak, done = current_rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    rows = run("many")
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "rows": rows, "base_mb": base, "peak_growth_mb": peak[0] - base}))


def memory_lines(mem: dict[str, Any]) -> list[str]:
    n = mem["probes"]
    lines = [f"Memory: identify {n:,} probe embeddings (an `embed` Parquet, so no image decoding), each path in a "
             "fresh process after a 100-probe warm-up run; the peak of the process's resident memory during the run "
             "(sampled every 5 ms) above its resident memory just before. Both paths read the whole probe table; "
             "the flow then holds at most `max_in_flight` chunks of results, the library all of them (top-50 makes "
             "the results, 50 rows a probe, outweigh the probe table):", "",
             "| top-k | path | seconds | result rows | RSS before | peak RSS growth |", "|---|---|---|---|---|---|"]
    for top_k in (5, 50):
        for mode, name in (("library", "library: `run_chunked` + Parquet write"),
                           ("flow", "`lookup_flow` (part files, streamed merge)")):
            r = mem[(mode, top_k)]
            lines.append(f"| {top_k} | {name} | {r['seconds']:.1f} | {r['rows']:,} | {r['base_mb']:.0f} MB | "
                         f"{r['peak_growth_mb']:.0f} MB |")
    return lines


def bench_embedding(args: argparse.Namespace, images: pd.DataFrame, model_dir: Path, work: Path) -> dict[str, Any]:
    from distributed import LocalCluster

    table = images.sample(n=args.embed, random_state=0)
    table[["abs_path", "identity"]].rename(columns={"abs_path": "image_path"}).to_csv(work / "embed.csv", index=False)
    table.head(args.embed_chunk)[["abs_path", "identity"]].rename(columns={"abs_path": "image_path"}).to_csv(
        work / "warm.csv", index=False)
    model = load_model(model_dir)
    runs = iter(range(1_000_000))

    def run(fl: Any, csv: str = "embed.csv") -> None:
        res = fl(str(work / csv), str(work / f"store-{next(runs)}"), str(model_dir), chunk_size=args.embed_chunk)
        if csv == "embed.csv" and res["enrolled"] + res["rejected"] != args.embed:
            raise RuntimeError(f"enrolled {res['enrolled']} + rejected {res['rejected']} != {args.embed}")

    out: dict[str, Any] = {"images": args.embed, "library": [], "flow_1_process": [], "flow_1_process_sequential": [],
                           "flow_dask_2_workers": []}
    sequential = partial(enroll_flow, max_in_flight=1)
    embed_table(model, table.head(args.embed_chunk))
    run(enroll_flow, "warm.csv")
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        out["cluster_start_s"] = time.perf_counter() - t0
        on_dask = enroll_flow.with_options(task_runner=task_runner(cluster.scheduler_address))
        out["dask_first_run_s"] = timed(lambda: run(on_dask, "warm.csv"))
        for _ in range(args.repeats):
            out["library"].append(timed(lambda: embed_table(model, table, chunk_size=args.embed_chunk)))
            out["flow_1_process"].append(timed(lambda: run(enroll_flow)))
            out["flow_1_process_sequential"].append(timed(lambda: run(sequential)))
            out["flow_dask_2_workers"].append(timed(lambda: run(on_dask)))
    return out


@contextmanager
def prefect_server(work: Path) -> Iterator[str]:
    """`prefect server start` on a free 127.0.0.1 port, used by the flow process and the Dask workers alike."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_UI_ENABLED": "false"}
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "threads": str(torch.get_num_threads()), "uptime": subprocess.run(["uptime"], capture_output=True,
                                                                             text=True).stdout.strip()}


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s"


def render(args: argparse.Namespace, info: dict[str, str], look: dict[str, Any], emb: dict[str, Any],
           mem: dict[str, Any], load_after: str) -> str:
    n, m = look["probes"], emb["images"]
    fl, lib = statistics.median(look["flow"]), statistics.median(look["library"])
    runs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    rows = [("library `embed_table` (sequential chunks)", emb["library"]),
            ("enroll flow, 1 process, `max_in_flight=1` (sequential chunks)", emb["flow_1_process_sequential"]),
            ("enroll flow, 1 process, `max_in_flight=4` (default)", emb["flow_1_process"]),
            ("enroll flow, DaskTaskRunner, 2 workers x 1 thread, `max_in_flight=4`", emb["flow_dask_2_workers"])]
    seq = statistics.median(look["flow_sequential"])
    lines = [SECTION, "", f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by "
             f"`python bench/bench_flows.py {' '.join(sys.argv[1:])}` (`bench/bench_flows.py`).", "",
             f"Machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, torch {info['torch']} "
             f"({info['threads']} intra-op thread per process, `OMP_NUM_THREADS`). **The machine was shared** with another "
             f"engineer's model training during the run, so absolute times are noisy; load before: "
             f"`{info['uptime']}`; after: `{load_after}`.", "",
             f"Model: untrained `test_resnet`, input 64 px, embedding "
             f"{load_config().model.embedding_dim}, flip TTA (speed does not depend on weights). Flows run against a "
             f"`prefect server start` on 127.0.0.1. Medians of {args.repeats} interleaved runs after a warm-up run.", "",
             f"### Flow overhead: lookup of {n:,} probes (identify, top-5, gallery of {look['gallery']:,} people)", "",
             f"Probes: the {look['distinct']:,} LFW images not in the gallery, repeated up to {n:,} rows. "
             f"Chunks of {args.chunk} ({-(-n // args.chunk)} tasks).", "",
             "| path | median | runs (s) | probes/s |", "|---|---|---|---|",
             f"| library: `run_chunked(identify_chunk)` + Parquet write | {fmt(look['library'])} | "
             f"{runs(look['library'])} | {n / lib:,.0f} |",
             f"| `lookup_flow`, `max_in_flight=1` (chunks one after another, like the library) | {fmt(look['flow_sequential'])} | "
             f"{runs(look['flow_sequential'])} | {n / seq:,.0f} |",
             f"| `lookup_flow`, `max_in_flight=4` (default: chunks overlap in threads) | {fmt(look['flow'])} | "
             f"{runs(look['flow'])} | {n / fl:,.0f} |", "",
             f"Flow overhead at equal concurrency (sequential flow vs library): {seq - lib:+.2f} s "
             f"({(seq / lib - 1) * 100:+.1f} %); the default flow vs the library: {fl - lib:+.2f} s "
             f"({(fl / lib - 1) * 100:+.1f} %). All three wrote the same {look['rows']:,} result rows (checked equal).",
             "", *memory_lines(mem), "",
             f"### Scale-out: embedding {m:,} images (enrol into a fresh store, {args.embed_chunk}-image chunks)", "",
             "| path | median | runs (s) | images/s |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt(xs)} | {runs(xs)} | {m / statistics.median(xs):,.0f} |" for name, xs in rows]
    ratio = statistics.median(emb["flow_1_process"]) / statistics.median(emb["flow_dask_2_workers"])
    lines += ["", f"Dask 2 workers vs 1 process (enroll flow, both `max_in_flight=4`): {ratio:.2f}x the throughput. "
              f"Not included above: starting the local cluster ({emb['cluster_start_s']:.1f} s) and the "
              f"first Dask run, which imports torch and loads the model in each worker ({emb['dask_first_run_s']:.1f} s "
              f"for {args.embed_chunk} images). Every process runs torch with {info['threads']} intra-op thread(s) "
              "(`OMP_NUM_THREADS`), so the 1-process flow gets its parallelism from chunks in flight (threads) "
              "and the Dask run from its 2 worker processes."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="LFW folder (ROOT/<identity>/<image>); required")
    p.add_argument("--probes", type=int, default=10_000)
    p.add_argument("--gallery", type=int, default=1_000)
    p.add_argument("--embed", type=int, default=5_000)
    p.add_argument("--chunk", type=int, default=2048, help="lookup chunk size")
    p.add_argument("--embed-chunk", type=int, default=512, help="enrol chunk size (10 chunks for 5k images)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-probes", type=int, default=100_000)
    p.add_argument("--out", type=Path)
    p.add_argument("--memory-child", choices=["flow", "library"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--top-k", type=int, default=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.work, args.chunk, args.top_k)
        return 0
    if args.data is None:
        p.error("--data is required")
    info = machine()
    images = read_images(args.data, require_identities=True)
    work = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    try:
        model_dir = make_model(images, work)
        with prefect_server(work) as url:
            look = bench_lookup(args, images, model_dir, work)
            mem = bench_memory(args, model_dir, work, url)
            emb = bench_embedding(args, images, model_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = render(args, info, look, emb, mem, machine()["uptime"])
    print(section)
    if args.out:
        write_section(args.out, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
