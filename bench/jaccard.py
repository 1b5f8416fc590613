"""Benchmark the sparse k-reciprocal Jaccard distance: seconds and peak memory per N.

Each case runs in a fresh subprocess; peak memory is that process's ``ru_maxrss`` (whole
process: Python, torch, numpy, scipy, the features themselves), which tracemalloc cannot see.
``baseline_rss_mb`` is the peak after the imports (torch alone maps ~0.5 GB) and before any
data exists; ``peak_rss_mb - baseline_rss_mb`` is what the computation adds. ``cpu_seconds_*``
are the process's user+system CPU seconds (robust to other load on the machine; with 2 threads
they can exceed wall time). Prints one JSON line per case. Random unit vectors (seeded): in high dimension they are nearly
equidistant, so neighbourhoods are unstructured and the encodings of most pairs overlap; that
makes the full (no ``max_distance``) output nearly dense, which the cases with
``max_distance=0.6`` (DBSCAN's eps) avoid. ``clustered`` data (the 5th case field) instead draws
N / 20 unit centres ("identities" of about 20 images) and adds Gaussian noise of norm about
``CLUSTER_NOISE`` to each sample: the structure re-ID features have, and the case where
approximate k-NN backends (faiss IVF / HNSW, pynndescent) can reach a high recall.

Every record carries the CPU model (``reid_core.device.cpu_model``), the threads and the 1-minute
load average at start and end (timings taken while other jobs run are slower than on an idle
machine; ``cpu_seconds_*`` are less sensitive to that). Approximate backends also record
``recall_at_k1`` against exact k-NN on ``recall_rows`` sampled rows
(:func:`reid_core.cluster.knn.sampled_recall`, the check the clustering stage runs).

    python bench/jaccard.py                      # default cases (N = 2,000 and 12,936)
    python bench/jaccard.py --large              # also N = 100,000 (256-d exact and pynndescent)
    python bench/jaccard.py --backends           # k-NN backends (exact, faiss, IVF, HNSW) on random + clustered data
    python bench/jaccard.py --case 12936 2048 exact 0.6
    python bench/jaccard.py --case 100000 2048 faiss-ivf 0.6 clustered
    python bench/jaccard.py --vs-reference                 # ours vs the Cluster-Contrast algorithm, random data
    python bench/jaccard.py --vs-reference --vs-both-data  # ... on random and on clustered data
    python bench/jaccard.py --vs-reference --n 2000 --repeat 3

``--vs-reference`` times, side by side in one run, :func:`reid_core.cluster.jaccard.compute_jaccard_distance`
(default options: exact k-NN, bf16 pre-filter where the CPU has it, eps cut-off ``--max-distance``)
against ``bench/jaccard_reference.py`` (the reference algorithm with its dense matrices and faiss
``IndexFlatL2``). Each timing runs in a fresh process and is that process's *first* call: imports
of torch / numpy / scipy / faiss are done before the clock starts, but loading numba and its
cached kernels is on the clock. Records (one JSON line each, ``"vs": "ours" | "reference"``, then
one ``"vs": "speedup"`` line per data kind): wall and CPU seconds, peak RSS and RSS after imports,
CPU model, threads, load average; ``speedup_wall`` / ``speedup_cpu`` are reference / ours.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/jaccard_reference.py

DEFAULT_CASES = [
    (2000, 2048, "exact", None),
    (12936, 2048, "exact", None),
    (12936, 2048, "exact", 0.6),
]
LARGE_CASES = [
    (100000, 256, "exact", 0.6),
    (100000, 256, "pynndescent", 0.6),
]
#: --backends: every k-NN backend on random and clustered unit vectors (5th field: the data)
BACKEND_CASES = [(n, dim, knn, 0.6, data) for data in ("random", "clustered") for n, dim in ((12936, 2048),)
                 for knn in ("exact", "faiss", "faiss-ivf", "faiss-hnsw")]
#: --backends --large: the issue-13 scale cases on clustered data (measured in docs/RUNNING_ON_A_CLUSTER.md):
#: 100,000 x 2048 with exact (bf16 pre-filter), faiss flat and faiss IVF (default nprobe, then nprobe 25%),
#: and 1,000,000 x 256 with IVF at nprobe 32 (memory is the goal there). About 30 minutes on 2 idle cores.
BACKEND_LARGE_CASES = [(100000, 2048, knn, 0.6, "clustered", opts) for knn, opts in (
    ("exact", None), ("faiss", None), ("faiss-ivf", None), ("faiss-ivf", {"nprobe": 316, "train_niter": 10}))] + \
    [(1000000, 256, "faiss-ivf", 0.6, "clustered", {"nprobe": 32, "train_points_per_list": 64})]
DATA_KINDS = ("random", "clustered")
CLUSTER_SIZE = 20
CLUSTER_NOISE = 0.6


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def unit_vectors(n: int, dim: int, data: str = "random", seed: int = 0):
    """(n, dim) float32 L2-normalised rows: ``random`` (Gaussian directions) or ``clustered``
    (n / CLUSTER_SIZE random centres + noise of norm ~CLUSTER_NOISE), generated in blocks."""
    import numpy as np

    from reid_core.cluster.knn import normalize_features

    if data not in DATA_KINDS:
        raise ValueError(f"data must be one of {DATA_KINDS}, got {data!r}")
    rng = np.random.default_rng(seed)
    if data == "random":
        return normalize_features(rng.standard_normal((n, dim), dtype=np.float32))
    centres = normalize_features(rng.standard_normal((max(1, n // CLUSTER_SIZE), dim), dtype=np.float32))
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        owner = rng.integers(0, len(centres), e - s)
        x[s:e] = centres[owner] + rng.standard_normal((e - s, dim), dtype=np.float32) * (CLUSTER_NOISE / np.sqrt(dim))
    return normalize_features(x)


def run_case(n: int, dim: int, knn: str, max_distance: float | None, k1: int = 30, k2: int = 6,
             recall_rows: int = 2000, data: str = "random", knn_options: dict | None = None) -> dict:
    import numpy as np
    import torch

    from reid_core.device import cpu_model

    from reid_core.cluster.jaccard import _numba_kernel, jaccard_from_encoding, k_reciprocal_encoding
    from reid_core.cluster.knn import knn_search

    import scipy.sparse as sp

    # compile (or load from numba's on-disk cache) the kernel outside the timing
    tc = time.perf_counter()
    if _numba_kernel() is not None:
        jaccard_from_encoding(sp.random(20, 20, density=0.2, format="csr", random_state=0))
    warmup = time.perf_counter() - tc
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tg = time.perf_counter()
    x = unit_vectors(n, dim, data)
    rec: dict = {"n": n, "dim": dim, "knn": knn, "data": data, "k1": k1, "k2": k2, "max_distance": max_distance,
                 "cpu_model": cpu_model(), "threads": torch.get_num_threads(),
                 "loadavg_1min_start": os.getloadavg()[0], "seconds_make_data": round(time.perf_counter() - tg, 2),
                 "kernel_warmup_seconds": round(warmup, 2), "baseline_rss_mb": round(baseline, 1)}
    m1, m2 = min(k1, n), min(int(np.around(k1 / 2)) + 1, k1)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    opts = dict(knn_options or {})
    if knn == "pynndescent":
        opts.setdefault("n_jobs", 2)
    res = knn_search(x, max(m1, m2, k2), knn, search_option=opts or None)
    t1, c1 = time.perf_counter(), _cpu_seconds()
    v = k_reciprocal_encoding(res, x, m1, m2, k2)
    t2, c2 = time.perf_counter(), _cpu_seconds()
    dist = jaccard_from_encoding(v, max_distance=max_distance)
    t3, c3 = time.perf_counter(), _cpu_seconds()
    rec.update({
        "seconds_total": round(t3 - t0, 2), "seconds_knn": round(t1 - t0, 2),
        "seconds_encoding": round(t2 - t1, 2), "seconds_jaccard": round(t3 - t2, 2),
        "cpu_seconds_total": round(c3 - c0, 2), "cpu_seconds_knn": round(c1 - c0, 2),
        "cpu_seconds_encoding": round(c2 - c1, 2), "cpu_seconds_jaccard": round(c3 - c2, 2),
        "encoding_nnz_per_row": round(v.nnz / n, 1), "output_nnz_per_row": round(dist.nnz / n, 1),
        "output_mb": round((dist.data.nbytes + dist.indices.nbytes + dist.indptr.nbytes) / 2**20, 1),
    })
    if knn != "exact":
        # recall@k1 against exact neighbours of a random subset of rows (exact search for those rows only)
        from reid_core.cluster.knn import faiss_index_options, sampled_recall

        tr = time.perf_counter()
        r = sampled_recall(x, res, m1, n_sample=recall_rows, seed=1)
        rec["recall_at_k1"] = round(r["recall"], 4)
        rec["recall_rows"] = r["n_sample"]
        rec["seconds_recall_check"] = round(time.perf_counter() - tr, 2)
        if knn.startswith("faiss"):
            rec["knn_options"] = faiss_index_options(knn, n, max(m1, m2, k2), dict(knn_options or {}))
    rec["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    rec["loadavg_1min_end"] = os.getloadavg()[0]
    return rec


def run_vs(impl: str, n: int, dim: int, data: str, k1: int = 30, k2: int = 6, max_distance: float = 0.6) -> dict:
    """One timing of ``--vs-reference`` in this (fresh) process: ``impl`` "ours" or "reference"."""
    import scipy.sparse
    import torch

    from reid_core.device import cpu_model

    if impl == "reference":
        try:
            import faiss
            knn = f"faiss IndexFlatL2 ({faiss.__version__})"
        except ImportError:
            knn = "torch fp32"
        from jaccard_reference import reference_jaccard
    elif impl == "ours":
        knn = "exact"
        from reid_core.cluster.jaccard import compute_jaccard_distance
    else:
        raise ValueError(f"impl must be 'ours' or 'reference', got {impl!r}")
    x = unit_vectors(n, dim, data)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec = {"vs": impl, "n": n, "dim": dim, "data": data, "k1": k1, "k2": k2, "knn": knn,
           "max_distance": max_distance if impl == "ours" else None, "cpu_model": cpu_model(),
           "threads": torch.get_num_threads(), "loadavg_1min_start": os.getloadavg()[0],
           "baseline_rss_mb": round(baseline, 1)}
    t0, c0 = time.perf_counter(), _cpu_seconds()
    if impl == "ours":
        dist = compute_jaccard_distance(x, k1=k1, k2=k2, max_distance=max_distance)
        within = int(dist.nnz)
    else:
        dist = reference_jaccard(x, k1=k1, k2=k2)
        within = int((dist <= max_distance).sum())
    t1, c1 = time.perf_counter(), _cpu_seconds()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec.update({"seconds": round(t1 - t0, 3), "cpu_seconds": round(c1 - c0, 3), "peak_rss_mb": round(peak, 1),
                "added_rss_mb": round(peak - baseline, 1), "pairs_within_cutoff": within,
                "loadavg_1min_end": os.getloadavg()[0]})
    rec["preloaded"] = [m.__name__ for m in (scipy.sparse, torch)]  # imported before the clock started
    return rec


def vs_reference(n: int, dim: int, datas: list[str], repeat: int, timeout: float, max_distance: float) -> int:
    """``--vs-reference``: each implementation in fresh processes, interleaved, JSON lines out."""
    status = 0
    for data in datas:
        got: dict[str, list[dict]] = {"ours": [], "reference": []}
        for _ in range(repeat):
            for impl in ("ours", "reference"):
                cmd = [sys.executable, __file__, "--vs-one", impl, "--n", str(n), "--dim", str(dim), "--data", data,
                       "--max-distance", str(max_distance)]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                except subprocess.TimeoutExpired:
                    print(json.dumps({"vs": impl, "n": n, "data": data, "error": f"timeout {timeout}s"}), flush=True)
                    status = 1
                    continue
                if out.returncode != 0:
                    print(json.dumps({"vs": impl, "n": n, "data": data,
                                      "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
                    status = 1
                    continue
                line = out.stdout.strip().splitlines()[-1]
                print(line, flush=True)
                got[impl].append(json.loads(line))
        if got["ours"] and got["reference"]:
            best = {k: min(v, key=lambda r: r["seconds"]) for k, v in got.items()}
            print(json.dumps({
                "vs": "speedup", "n": n, "dim": dim, "data": data, "cpu_model": best["ours"]["cpu_model"],
                "runs": repeat, "ours_seconds": best["ours"]["seconds"], "reference_seconds": best["reference"]["seconds"],
                "ours_cpu_seconds": best["ours"]["cpu_seconds"],
                "reference_cpu_seconds": best["reference"]["cpu_seconds"],
                "speedup_wall": round(best["reference"]["seconds"] / best["ours"]["seconds"], 2),
                "speedup_cpu": round(best["reference"]["cpu_seconds"] / best["ours"]["cpu_seconds"], 2),
                "ours_added_rss_mb": best["ours"]["added_rss_mb"],
                "reference_added_rss_mb": best["reference"]["added_rss_mb"]}), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", metavar="FIELD",
                    help="N DIM KNN MAX_DISTANCE [DATA]: run one case in this process (MAX_DISTANCE 'none' keeps "
                         "every overlap; DATA random (default) or clustered)")
    ap.add_argument("--knn-options", type=json.loads, default=None, metavar="JSON",
                    help='with --case: the k-NN backend\'s options, e.g. \'{"nprobe": 64, "train_points_per_list": 64}\'')
    ap.add_argument("--large", action="store_true", help="add the large cases")
    ap.add_argument("--backends", action="store_true",
                    help="k-NN backends (exact, faiss, faiss-ivf, faiss-hnsw) on random and clustered data")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    ap.add_argument("--vs-reference", action="store_true",
                    help="time ours against the reference algorithm (bench/jaccard_reference.py), fresh processes")
    ap.add_argument("--vs-both-data", action="store_true", help="with --vs-reference: random and clustered data")
    ap.add_argument("--vs-one", choices=("ours", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=12936, help="rows for --vs-reference (default 12,936)")
    ap.add_argument("--dim", type=int, default=2048, help="dimension for --vs-reference (default 2048)")
    ap.add_argument("--data", choices=DATA_KINDS, default="random", help="data of --vs-reference without --vs-both-data")
    ap.add_argument("--max-distance", type=float, default=0.6, help="our cut-off for --vs-reference (DBSCAN eps)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh-process runs per implementation (--vs-reference)")
    args = ap.parse_args(argv)
    if args.vs_one:
        print(json.dumps(run_vs(args.vs_one, args.n, args.dim, args.data, max_distance=args.max_distance)), flush=True)
        return 0
    if args.vs_reference:
        datas = list(DATA_KINDS) if args.vs_both_data else [args.data]
        return vs_reference(args.n, args.dim, datas, args.repeat, args.timeout, args.max_distance)
    if args.case:
        if len(args.case) not in (4, 5):
            ap.error("--case takes N DIM KNN MAX_DISTANCE [DATA]")
        n, dim, knn, md = args.case[:4]
        data = args.case[4] if len(args.case) == 5 else "random"
        rec = run_case(int(n), int(dim), knn, None if md.lower() == "none" else float(md), data=data,
                       knn_options=args.knn_options)
        print(json.dumps(rec), flush=True)
        return 0
    if args.backends:
        cases = [c + (None,) for c in BACKEND_CASES] + (BACKEND_LARGE_CASES if args.large else [])
    else:
        cases = [c + ("random", None) for c in DEFAULT_CASES + (LARGE_CASES if args.large else [])]
    status = 0
    for n, dim, knn, md, data, opts in cases:
        cmd = [sys.executable, __file__, "--case", str(n), str(dim), knn, "none" if md is None else str(md), data]
        if opts:
            cmd += ["--knn-options", json.dumps(opts)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(json.dumps({"n": n, "dim": dim, "knn": knn, "data": data, "max_distance": md,
                              "error": f"timeout {args.timeout}s"}), flush=True)
            status = 1
            continue
        if out.returncode != 0:
            print(json.dumps({"n": n, "dim": dim, "knn": knn, "data": data, "max_distance": md,
                              "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
            status = 1
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
