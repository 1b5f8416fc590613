"""Benchmark the sparse k-reciprocal Jaccard distance: seconds and peak memory per N.

Each case runs in a fresh subprocess; peak memory is that process's ``ru_maxrss`` (whole
process: Python, torch, numpy, scipy, the features themselves), which tracemalloc cannot see.
``baseline_rss_mb`` is the peak after the imports (torch alone maps ~0.5 GB) and before any
data exists; ``peak_rss_mb - baseline_rss_mb`` is what the computation adds. ``cpu_seconds_*``
are the process's user+system CPU seconds (robust to other load on the machine; with 2 threads
they can exceed wall time). Prints one JSON line per case. Random unit vectors (seeded): in high dimension they are nearly
equidistant, so neighbourhoods are unstructured and the encodings of most pairs overlap; that
makes the full (no ``max_distance``) output nearly dense, which the cases with
``max_distance=0.6`` (DBSCAN's eps) avoid.

    python bench/jaccard.py                      # default cases (N = 2,000 and 12,936)
    python bench/jaccard.py --large              # also N = 100,000 (256-d exact and pynndescent)
    python bench/jaccard.py --case 12936 2048 exact 0.6
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

DEFAULT_CASES = [
    (2000, 2048, "exact", None),
    (12936, 2048, "exact", None),
    (12936, 2048, "exact", 0.6),
]
LARGE_CASES = [
    (100000, 256, "exact", 0.6),
    (100000, 256, "pynndescent", 0.6),
]


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_case(n: int, dim: int, knn: str, max_distance: float | None, k1: int = 30, k2: int = 6,
             recall_rows: int = 2000) -> dict:
    import numpy as np
    import torch

    from reid_core.cluster.jaccard import _numba_kernel, jaccard_from_encoding, k_reciprocal_encoding
    from reid_core.cluster.knn import knn_search, normalize_features

    import scipy.sparse as sp

    # compile (or load from numba's on-disk cache) the kernel outside the timing
    tc = time.perf_counter()
    if _numba_kernel() is not None:
        jaccard_from_encoding(sp.random(20, 20, density=0.2, format="csr", random_state=0))
    warmup = time.perf_counter() - tc
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    x = normalize_features(rng.standard_normal((n, dim), dtype=np.float32))
    rec: dict = {"n": n, "dim": dim, "knn": knn, "k1": k1, "k2": k2, "max_distance": max_distance,
                 "threads": torch.get_num_threads(), "loadavg_1min_start": os.getloadavg()[0],
                 "kernel_warmup_seconds": round(warmup, 2), "baseline_rss_mb": round(baseline, 1)}
    m1, m2 = min(k1, n), min(int(np.around(k1 / 2)) + 1, k1)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    res = knn_search(x, max(m1, m2, k2), knn, search_option={"n_jobs": 2} if knn == "pynndescent" else None)
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
        rows = rng.choice(n, size=min(recall_rows, n), replace=False)
        xt = torch.from_numpy(x)
        sims = xt[torch.from_numpy(rows)] @ xt.T
        sims[torch.arange(len(rows)), torch.from_numpy(rows)] = float("inf")
        exact = torch.topk(sims, m1, dim=1).indices.numpy()
        approx = res.indices[rows, :m1]
        hits = [len(set(exact[r, 1:]) & set(approx[r, 1:])) for r in range(len(rows))]
        rec["recall_at_k1"] = round(float(np.sum(hits) / (len(rows) * (m1 - 1))), 4)
        rec["recall_rows"] = len(rows)
    rec["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    rec["loadavg_1min_end"] = os.getloadavg()[0]
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs=4, metavar=("N", "DIM", "KNN", "MAX_DISTANCE"),
                    help="run one case in this process (MAX_DISTANCE 'none' keeps every overlap)")
    ap.add_argument("--large", action="store_true", help="add the N = 100,000 cases")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    args = ap.parse_args(argv)
    if args.case:
        n, dim, knn, md = args.case
        print(json.dumps(run_case(int(n), int(dim), knn, None if md.lower() == "none" else float(md))), flush=True)
        return 0
    cases = DEFAULT_CASES + (LARGE_CASES if args.large else [])
    status = 0
    for n, dim, knn, md in cases:
        cmd = [sys.executable, __file__, "--case", str(n), str(dim), knn, "none" if md is None else str(md)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(json.dumps({"n": n, "dim": dim, "knn": knn, "max_distance": md, "error": f"timeout {args.timeout}s"}), flush=True)
            status = 1
            continue
        if out.returncode != 0:
            print(json.dumps({"n": n, "dim": dim, "knn": knn, "max_distance": md,
                              "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
            status = 1
            continue
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
