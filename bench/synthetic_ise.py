"""Seeded comparison on the synthetic set: Cluster-Contrast vs + ISE (and the ISE ablation).

Same seed, same rounds, same batches; one Parquet row per method x round with pseudo-label ARI /
NMI, clusters and retrieval mAP / rank-1, then a markdown table.

  python bench/synthetic_ise.py --rounds 3 --iters 40 --methods baseline,full
  python bench/synthetic_ise.py --methods baseline,interp,lp,full      # the paper's ablation
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid_core.io.atomic import append_parquet  # noqa: E402
from reid_core.pipeline import RunConfig, run_pipeline  # noqa: E402

#: the ablation of the ISE paper as RunConfig switches
ABLATION = {
    "baseline": dict(use_ise=False),
    "interp": dict(use_ise=True, ise_interp=True, ise_lp=False),
    "lp": dict(use_ise=True, ise_interp=False, ise_lp=True),
    "full": dict(use_ise=True, ise_interp=True, ise_lp=True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="baseline,full")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=str(REPO / "data" / "synthetic"))
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "bench_synthetic"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "synthetic_ise.parquet")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for method in args.methods.split(","):
        cfg = RunConfig(name=f"{method}-s{args.seed}", runs_dir=args.runs_dir, dataset="synthetic",
                        data_root=args.data_root, rounds=args.rounds, iters=args.iters, seed=args.seed,
                        **ABLATION[method])

        def on_round(r: int, row: pd.DataFrame, method: str = method) -> None:
            append_parquet(row.assign(ablation=method), args.out)

        run_pipeline(cfg, progress=False, on_round=on_round)
    df = pd.read_parquet(args.out)
    cols = ["ablation", "seed", "round", "mAP", "rank1", "ari", "nmi", "n_clusters", "n_outliers"]
    df = df[[c for c in cols if c in df.columns]]
    print("| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns))
    for _, r in df.iterrows():
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
