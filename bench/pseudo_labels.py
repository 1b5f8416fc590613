"""Pseudo-label quality of the clustering levers on one round's features (no training).

Each lever is label-free: it reads features, camera ids and distances. Ground truth is read here
only to *score* the labels (ARI, NMI, pair precision / recall), the way `metrics.parquet` does.

  python bench/pseudo_labels.py --run runs/ablate/cc-s0 --rounds 1,5,10 \
      --variants base,cam,split,cam+split,rho,cam+rho --out bench/results/pseudo_labels.parquet

Variants (combined with '+'):
  base     k-reciprocal Jaccard (k1, k2) + DBSCAN at --eps (today's default)
  cam      camera-mean removal before the k-NN (reid_core.cluster.camera.camera_normalize)
  split    clusters above --split-factor x the median cluster size re-clustered with a tighter eps
  rho      eps from the distance distribution (reid_core.cluster.pseudo_labels.eps_from_density, --rho)
  k1auto   k1 from the data: round(--k1-per-cluster x median size of the base clustering), 10..30
Prints one JSON line per (round, variant); rows are appended to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid_core.device import cpu_model  # noqa: E402
from reid_core.io.atomic import append_parquet  # noqa: E402
from reid_core.io.features_io import read_features  # noqa: E402
from reid_core.pipeline import RunConfig  # noqa: E402
from reid_core.pipeline.stages import compute_pseudo_labels  # noqa: E402


def score(labels: np.ndarray, gt: np.ndarray) -> dict:
    from reid_core.cluster.pseudo_labels import cluster_stats
    from reid_core.evaluation.pseudo_quality import pseudo_label_quality

    q = pseudo_label_quality(labels, gt)
    st = cluster_stats(labels)
    return {"n_clusters": st["n_clusters"], "n_outliers": st["n_outliers"], "largest": st["largest_cluster"],
            **{k: float(q[k]) for k in ("ari", "nmi", "pair_precision", "pair_recall")}}


def config_for(variant: str, args: argparse.Namespace) -> RunConfig:
    parts = set(variant.split("+"))
    unknown = parts - {"base", "cam", "split", "rho", "k1auto"}
    if unknown:
        raise ValueError(f"--variants: unknown lever(s) {sorted(unknown)}")
    return RunConfig(eps=args.eps, k1=args.k1, k2=args.k2, min_samples=args.min_samples,
                     camera_norm="cam" in parts,
                     split_factor=args.split_factor if "split" in parts else 0.0,
                     eps_rho=args.rho if "rho" in parts else 0.0,
                     k1_per_cluster=args.k1_per_cluster if "k1auto" in parts else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run folder with images.parquet and round_NNN/features.parquet")
    ap.add_argument("--rounds", default="1")
    ap.add_argument("--variants", default="base,cam,split,cam+split")
    ap.add_argument("--eps", type=float, default=0.6)
    ap.add_argument("--k1", type=int, default=30)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--min-samples", type=int, default=4)
    ap.add_argument("--split-factor", type=float, default=4.0)
    ap.add_argument("--rho", type=float, default=1.6e-3)
    ap.add_argument("--k1-per-cluster", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pseudo_labels.parquet")
    args = ap.parse_args(argv)
    images = pd.read_parquet(args.run / "images.parquet").set_index("image_id")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for r in [int(x) for x in args.rounds.split(",") if x.strip()]:
        feats_path = args.run / f"round_{r:03d}" / "features.parquet"
        ids, feats = read_features(feats_path)
        gt = images.loc[ids, "pid"].to_numpy()
        cams = images.loc[ids, "camid"].to_numpy()
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            cfg = config_for(variant, args)
            t0 = time.perf_counter()
            labels, info = compute_pseudo_labels(feats, cams, cfg)
            row = {"run": str(args.run), "round": r, "variant": variant, "seconds": time.perf_counter() - t0,
                   **{k: v for k, v in info.items() if np.isscalar(v)}, **score(labels, gt),
                   "cpu_model": cpu_model()}
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            append_parquet(pd.DataFrame([row]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
