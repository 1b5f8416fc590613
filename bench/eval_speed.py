"""Time ``evaluate_features`` on Market-1501-sized random data and print one JSON line.

Default: 3,368 queries x 19,732 gallery images, 2048-d float32 L2-normalised features, 751 random
identities, 6 cameras, ~14% junk (pid -1) and ~19% distractors (pid 0) in the gallery, as in the real
test split. Reports wall-clock seconds (and, for reference, the time of the bare chunked matmul
and the machine's load average, since the numbers depend on what else runs), process peak RSS (``ru_maxrss``) and the peak RSS growth
during the evaluation above the peak reached before it (inputs and warm-up included), i.e. the
working memory the chunking bounds (a lower bound when the earlier peak was higher).

    python bench/eval_speed.py [--n-query 3368] [--n-gallery 19732] [--dim 2048] [--chunk-size 512]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from reid_core.evaluation import evaluate_features  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-query", type=int, default=3368)
    ap.add_argument("--n-gallery", type=int, default=19732)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    q = rng.standard_normal((args.n_query, args.dim), dtype=np.float32)
    g = rng.standard_normal((args.n_gallery, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q_pids = rng.integers(1, 752, args.n_query)
    g_pids = rng.integers(1, 752, args.n_gallery)
    u = rng.random(args.n_gallery)
    g_pids[u < 0.14] = -1
    g_pids[(u >= 0.14) & (u < 0.33)] = 0
    q_cams = rng.integers(0, 6, args.n_query)
    g_cams = rng.integers(0, 6, args.n_gallery)

    # warm-up on a small slice (thread pools, lazy imports)
    evaluate_features(q[:8], g[:64], q_pids[:8], g_pids[:64], q_cams[:8], g_cams[:64], device="cpu")
    base_rss, base_peak = _rss_mb(), _peak_mb()
    t0 = time.perf_counter()
    res = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=args.metric,
                            chunk_size=args.chunk_size, device="cpu")
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    # floor: the chunked matmul alone (what any exact float32 evaluation has to pay)
    tq, tg = torch.from_numpy(q), torch.from_numpy(g)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, args.n_query, args.chunk_size):
            tq[s : s + args.chunk_size] @ tg.T
    matmul_seconds = time.perf_counter() - t0
    print(json.dumps({
        "bench": "eval_speed",
        "n_query": args.n_query, "n_gallery": args.n_gallery, "dim": args.dim,
        "chunk_size": args.chunk_size, "metric": args.metric,
        "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 3),
        "matmul_only_seconds": round(matmul_seconds, 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(base_rss, 1),
        "peak_growth_mb": round(max(peak - base_peak, 0.0), 1),
        "inputs_mb": round((q.nbytes + g.nbytes) / 2**20, 1),
        "mAP": res["mAP"], "rank1": res["rank1"], "n_valid": res["n_valid"], "n_skipped": res["n_skipped"],
    }))


if __name__ == "__main__":
    main()
