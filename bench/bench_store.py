"""Benchmark of the gallery store (`indexes.GalleryStore`) against plain numpy brute force.

    python bench/bench_store.py --sizes 10000,100000,1000000 --dim 512 --out docs/benchmarks.md

For each gallery size N (seeded synthetic L2-normalised float32 vectors, one identity per row):
- identify / search of 1 query and of a batch of queries, timed against numpy brute force run in
  the same process on the same data (S = Q @ X.T, argpartition, sort of the top k); the store's top-k
  must equal numpy's (same row ids; scores within 1e-5);
- enrol of 1 identity into the N-row store (durable: returns after fsync + manifest commit);
- delete of 1 identity from the N-row store (durable);
- open of the N-row store (warm page cache) and the first query after it;
- resident memory of a fresh process that opens the store and runs a query, vs the raw vectors' size.
Also measures the machine's memory read bandwidth (2 GB array) to give the floor of a 1M x 512 scan.
Reports medians; `--out` replaces the "## Gallery store" section of a markdown file (others kept).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from docsection import write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402,F401  (runtime tuning: OMP_WAIT_POLICY=PASSIVE before faiss loads OpenMP)
from indexes import GalleryStore  # noqa: E402

MODEL = "bench-model"
SECTION = "## Gallery store"


def unit_rows(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - a), dim), dtype=np.float32)
        out[a: a + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def numpy_topk(queries: np.ndarray, base: np.ndarray, k: int, max_scores: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain brute force: full score matrix (in query chunks of at most max_scores scores), argpartition, sort."""
    n = base.shape[0]
    step = max(1, max_scores // n)
    out_s, out_i = [], []
    for a in range(0, queries.shape[0], step):
        s = queries[a: a + step] @ base.T
        part = np.argpartition(s, n - k, axis=1)[:, n - k:]
        top = np.take_along_axis(s, part, 1)
        order = np.argsort(-top, axis=1)
        out_s.append(np.take_along_axis(top, order, 1))
        out_i.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out_s), np.concatenate(out_i)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bandwidth_gbs(size_bytes: int = 2 << 30) -> dict[str, float]:
    """Read bandwidth: numpy sum over a 2 GB float32 array, 1 thread and 2 threads (halves)."""
    x = np.ones(size_bytes // 4, np.float32)
    x.sum()
    one = min(timed(lambda: x.sum(), 1)[0] for _ in range(3))
    halves = [x[: x.size // 2], x[x.size // 2:]]

    def two_threads() -> None:
        threads = [threading.Thread(target=h.sum) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    two = min(timed(two_threads, 1)[0] for _ in range(3))
    del x
    return {"one_thread": size_bytes / one / 1e9, "two_threads": size_bytes / two / 1e9}


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "ram": f"{mem_kb / 2**20:.1f} GiB",
            "python": platform.python_version(), "numpy": np.__version__,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


_RSS_PROBE = """
import json, sys, tempfile, numpy as np
def rss():
    fields = dict(l.split(':', 1) for l in open('/proc/self/status') if l.startswith(('VmRSS', 'RssAnon', 'RssFile')))
    return {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
sys.path.insert(0, sys.argv[2])
from indexes import GalleryStore
q = np.ones((1, int(sys.argv[3])), np.float32); q /= np.linalg.norm(q)
# warm up the libraries (BLAS buffers, faiss/OpenMP, Parquet reader) on a tiny store, so the delta is the store's
tiny = GalleryStore.create(tempfile.mkdtemp() + '/t', model_version=sys.argv[4], embedding_dim=q.shape[1])
tiny.enroll(q, ['x'], ['x'], ['0' * 64], model_version=sys.argv[4])
tiny = GalleryStore.open(tiny.path)
tiny.search(q, 10, model_version=sys.argv[4]); tiny.identify(q, model_version=sys.argv[4], threshold=0.5)
import time
before = rss()
t0 = time.perf_counter()
store = GalleryStore.open(sys.argv[1])
t1 = time.perf_counter()
store.search(q, 10, model_version=sys.argv[4])
t2 = time.perf_counter()
store.identify(q, model_version=sys.argv[4], threshold=0.5)
after = rss()
out = {k: after[k] - before[k] for k in after}
out.update(open_s=t1 - t0, first_query_s=t2 - t1)
print(json.dumps(out))
"""


def bench_size(n: int, dim: int, k: int, batch: int, repeats: int, query_repeats: int, workdir: Path, seed: int
               ) -> dict:
    rng = np.random.default_rng(seed + n)
    base = unit_rows(rng, n, dim)
    names = [f"id{i:07d}" for i in range(n)]
    shas = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    path = workdir / f"store-{n}"
    t0 = time.perf_counter()
    store = GalleryStore.create(path, model_version=MODEL, embedding_dim=dim, threshold=0.5)
    store.enroll(base, names, [f"{name}/0.jpg" for name in names], shas, model_version=MODEL)
    build_s = time.perf_counter() - t0
    picks = rng.choice(n, size=batch, replace=False)
    queries = base[picks] + 0.02 * rng.standard_normal((batch, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    single = queries[:1]
    max_scores = 250 * 1_000_000  # numpy baseline: score matrix chunks of at most 1 GB
    out: dict = {"n": n, "build_s": build_s, "segments": store.info()["segments"]}

    for label, q, reps in (("1 query", single, query_repeats), (f"{batch} queries", queries, repeats)):
        numpy_topk(q, base, k, max_scores)  # warm-up (page in, BLAS threads)
        store.search(q, k, model_version=MODEL)
        calls = {"numpy": lambda: numpy_topk(q, base, k, max_scores),
                 "search": lambda: store.search(q, k, model_version=MODEL),
                 "identify": lambda: store.identify(q, model_version=MODEL, top_k=k, threshold=0.5)}
        times: dict[str, list[float]] = {name: [] for name in calls}
        results: dict[str, object] = {}
        for _ in range(reps):  # interleaved, so that load changes hit all three alike
            for name, call in calls.items():
                t0 = time.perf_counter()
                results[name] = call()
                times[name].append(time.perf_counter() - t0)
        t_np, t_search, t_ident = (statistics.median(times[name]) for name in calls)
        (ref_s, ref_i), (s_s, s_i), frame = results["numpy"], results["search"], results["identify"]
        ident_names = frame["identity"].to_numpy().reshape(q.shape[0], k)
        out[label] = {
            "numpy_s": t_np, "search_s": t_search, "identify_s": t_ident, "queries": q.shape[0],
            "search_equal": float(np.mean(np.all(s_i == ref_i, axis=1))),
            "identify_equal": float(np.mean(np.all(ident_names == np.asarray(names, object)[ref_i], axis=1))),
            "max_score_diff": float(np.abs(s_s - ref_s).max()),
        }

    enrol_times = []
    for r in range(repeats):
        emb = unit_rows(rng, 1, dim)
        digest = hashlib.sha256(f"new-{n}-{r}".encode()).hexdigest()
        t0 = time.perf_counter()
        store.enroll(emb, [f"new{r}"], [f"new{r}.jpg"], [digest], model_version=MODEL)
        enrol_times.append(time.perf_counter() - t0)
    delete_times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        removed = store.remove_identity(names[(r * 7919 + 13) % n])
        delete_times.append(time.perf_counter() - t0)
        if removed != 1:
            raise RuntimeError(f"expected to remove 1 row, removed {removed}")
    del store
    gc.collect()
    # open in a fresh process (as a CLI call would), warm page cache; the last run also gives the RSS
    probes = []
    for _ in range(repeats):
        probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), str(REPO), str(dim), MODEL],
                               capture_output=True, text=True, check=True)
        probes.append(json.loads(probe.stdout))
    out["enrol_first_s"], out["enrol_median_s"] = enrol_times[0], statistics.median(enrol_times[1:] or enrol_times)
    out["delete_first_s"], out["delete_median_s"] = delete_times[0], statistics.median(delete_times)
    out["open_s"] = statistics.median(p["open_s"] for p in probes)
    out["first_query_s"] = statistics.median(p["first_query_s"] for p in probes)
    out["rss"] = probes[-1]
    out["raw_bytes"] = n * dim * 4
    out["disk_bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    del base
    shutil.rmtree(path)
    return out


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(results: list[dict], info: dict, bw: dict, args: argparse.Namespace, command: str, load_after: str) -> str:
    lines = [SECTION, "",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}` "
             f"(`bench/bench_store.py`).", "",
             f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, Python {info['python']}, "
             f"numpy {info['numpy']}. Load before: `{info['uptime']}`; after: `{load_after}`.", "",
             f"Data: N seeded random L2-normalised float32 vectors of dimension {args.dim}, one identity each; "
             f"queries are gallery rows plus noise; k = {args.k}. Medians of {args.query_repeats} runs for 1 query "
             f"and of {args.repeats} runs ({args.repeats_large} at 1M and above) for batches, enrol, delete and "
             "open (enrol and delete also show their first run, which builds lookup caches). The numpy baseline "
             "(`S = Q @ X.T`, `argpartition`, sort of the top k) runs in the same process on the same data; "
             "at 1M it materialises the score matrix in chunks of 250 queries (1 GB) to cap memory, which does "
             "not change its arithmetic. `identify` adds the identity ranking and the result DataFrame to `search`.",
             "",
             "| N | query | numpy | store search | store identify | search vs numpy | identify vs numpy "
             "| store queries/s | top-k equal to numpy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for label in [key for key in r if "quer" in key and isinstance(r[key], dict)]:
            m = r[label]
            lines.append(
                f"| {r['n']:,} | {label} | {fmt_s(m['numpy_s'])} | {fmt_s(m['search_s'])} | {fmt_s(m['identify_s'])} "
                f"| {m['numpy_s'] / m['search_s']:.2f}x | {m['numpy_s'] / m['identify_s']:.2f}x "
                f"| {m['queries'] / m['search_s']:,.0f} | search {m['search_equal']:.0%}, identify "
                f"{m['identify_equal']:.0%} (max score diff {m['max_score_diff']:.1e}) |")
    lines += ["", "| N | segments | enrol 1 identity (first / median) | delete 1 identity (first / median) "
              "| open (fresh process) | its first query | RSS delta / raw vectors | disk / raw |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rss = r["rss"]
        lines.append(
            f"| {r['n']:,} | {r['segments']} | {fmt_s(r['enrol_first_s'])} / {fmt_s(r['enrol_median_s'])} "
            f"| {fmt_s(r['delete_first_s'])} / {fmt_s(r['delete_median_s'])} | {fmt_s(r['open_s'])} "
            f"| {fmt_s(r['first_query_s'])} | {rss['VmRSS'] / r['raw_bytes']:.2f} "
            f"({rss['VmRSS'] / 2**20:,.0f} MiB: anon {rss['RssAnon'] / 2**20:,.0f}, "
            f"file {rss['RssFile'] / 2**20:,.0f}) "
            f"| {r['disk_bytes'] / r['raw_bytes']:.2f} |")
    scan = 1_000_000 * args.dim * 4
    best = max(bw.values())
    lines += ["", f"Memory read bandwidth (numpy sum over a 2 GB float32 array): {bw['one_thread']:.1f} GB/s with 1 "
              f"thread, {bw['two_threads']:.1f} GB/s with 2 threads. Floor for one exact 1M x {args.dim} query "
              f"(reading {scan / 1e9:.2f} GB once): {scan / (best * 1e9) * 1e3:.0f} ms at {best:.1f} GB/s."]
    for r in results:
        if r["n"] == 1_000_000:
            lines.append(f"Measured single query at 1M: store search {fmt_s(r['1 query']['search_s'])}, numpy "
                         f"{fmt_s(r['1 query']['numpy_s'])}.")
    lines += ["", f"Bulk build (enrol of all N rows in one call, durable): "
              + ", ".join(f"{r['n']:,}: {fmt_s(r['build_s'])}" for r in results) + ".", "",
              "How to read this:",
              "- Search is exact at every size (`IndexConfig(kind=\"flat\")`, the default): all segments' vectors sit "
              "in one in-memory matrix, so a single query is one BLAS gemv plus a sampled-threshold top-k, and a "
              "batch is sgemm over 64 MiB blocks with a running per-query threshold (the Q x N score matrix is "
              "never materialised).",
              "- The machine is shared: when the load average exceeds the 2 cores (see above), multi-threaded BLAS "
              "calls wait for descheduled threads, which dominates millisecond-scale timings (1 query at 10k-100k) "
              "for numpy and the store alike; the ratios come from the same process, interleaved.",
              "- Enrol writes one small segment (its first call also builds the duplicate and identity lookup "
              "tables of every segment); delete rewrites only the 65,536-row segment holding the identity and "
              "fsyncs before returning; both include the manifest commit.",
              "- Open is timed in a fresh process: it reads the metadata and memory-maps the vector files, so "
              "enrol, remove and info never read the vectors. The first search reads every vector into the "
              "in-memory matrix (2 GB at 1M); its time is the next column and depends on whether the files are in "
              "the page cache (this VM reclaims page cache aggressively; from disk it is bounded by read speed). "
              "The RSS delta is measured in that process after opening the store and running a query, with the "
              "libraries warmed up first on a tiny store; `anon`/`file` split it into heap and file-backed pages.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated gallery sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000, help="queries in the batch case")
    parser.add_argument("--repeats", type=int, default=5, help="runs of batch, enrol, delete, open (N < 1M)")
    parser.add_argument("--repeats-large", type=int, default=3, help="the same for N >= 1M")
    parser.add_argument("--query-repeats", type=int, default=30, help="runs of the single-query case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where stores are built (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file whose Gallery store section is replaced")
    args = parser.parse_args(argv)
    command = "python bench/bench_store.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine()
    bw = bandwidth_gbs()
    workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench-store-"))
    try:
        results = []
        for n in [int(s) for s in args.sizes.split(",")]:
            repeats = args.repeats if n < 1_000_000 else args.repeats_large
            results.append(bench_size(n, args.dim, args.k, args.batch, repeats, args.query_repeats, workdir, args.seed))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    section = render(results, info, bw, args, command, load_after)
    print(section)
    if args.out is not None:
        write_section(args.out, SECTION, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
