"""Few images per person: do the clustering defaults hold, or collapse?

A user's set of ~500 unlabelled people with 4 images each over 2 cameras made the Market defaults
(eps 0.6, min_samples 4, k1 30) collapse: clusters 50 -> 23 over 5 rounds, ARI 0, mAP below the
ImageNet start, and nothing warned. This benchmark renders a synthetic set of that shape
(reid_core.data.synthetic: 2 cameras x 2 images per identity, half the identities for training)
and runs the plain loop for each variant, appending one row per round (mAP, ARI, clusters,
the degenerate-clustering warnings the stage raised) to --out.

  python bench/fewshot.py --ids 400 --rounds 5 --variants defaults,levers --out bench/results/fewshot.parquet

Variants: 'defaults' (RunConfig's clustering, i.e. plain Cluster-Contrast), 'levers' (camera
normalisation, splitting and k1 scaled to the cluster size: LEVERS below), 'winner' (exactly the
issue-11 winner's settings, ``WINNER`` read from bench/accuracy.py, which the ``market1501``
deployment also uses: camera levers, learning-rate step, ISE from iteration 1,000), or any
'name:field=value;field=value'.

  python bench/fewshot.py --ids 400 --rounds 5 --variants defaults,winner --out docs/results/fewshot.parquet
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid_core.device import cpu_model  # noqa: E402
from reid_core.io.atomic import append_parquet  # noqa: E402
from reid_core.pipeline import RunConfig, run_pipeline  # noqa: E402
from reid_core.pipeline import cache  # noqa: E402
from reid_core.pipeline.loop import round_paths  # noqa: E402

# label-free clustering levers tried for few images per person (k1 follows the median cluster size)
LEVERS = dict(camera_norm=True, split_factor=4.0, k1_per_cluster=1.5)


def winner_levers() -> dict:
    """The issue-11 winner's settings, from bench/accuracy.py (one source of truth)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_accuracy_levers", REPO / "bench" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.WINNER)


def parse_variant(spec: str) -> tuple[str, dict]:
    if spec == "defaults":
        return spec, {}
    if spec == "levers":
        return spec, dict(LEVERS)
    if spec == "winner":
        return spec, winner_levers()
    name, sep, body = spec.partition(":")
    if not sep:
        raise ValueError(f"--variants: {spec!r} is neither 'defaults', 'levers', 'winner' nor 'name:field=value;...'")
    values = {}
    for item in body.split(";"):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"--variants {spec!r}: expected field=value, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return name, values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", type=int, default=400, help="identities (half for training)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="defaults,levers")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "synthetic_fewshot")
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "fewshot")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fewshot.parquet")
    args = ap.parse_args(argv)
    from reid_core.data.synthetic import generate_synthetic

    data = generate_synthetic(args.data, n_ids=args.ids, n_cams=2, images_per_id_cam=2, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for spec in [v.strip() for v in args.variants.split(",") if v.strip()]:
        name, values = parse_variant(spec)
        cfg = RunConfig(name=f"{name}-s{args.seed}", runs_dir=str(args.runs_dir), dataset="market1501",
                        data_root=str(data), rounds=args.rounds, iters=args.iters, p=args.p, k=args.k, seed=args.seed,
                        use_ise=False, **values)
        t0 = time.perf_counter()

        def on_round(r: int, row: pd.DataFrame, cfg=cfg, name=name) -> None:
            meta = cache.read_meta(round_paths(cfg, r)["pseudo_labels"]) if r > 0 else {}
            out = row.copy()
            out["variant"] = name
            out["seconds"] = time.perf_counter() - t0
            out["n_warnings"] = len(meta.get("health_warnings", []))
            out["warnings"] = " | ".join(meta.get("health_warnings", []))
            out["eps_used"] = meta.get("eps_used")
            out["k1_used"] = meta.get("k1_used")
            out["config_json"] = cfg.to_json()
            out["cpu_model"] = cpu_model()
            append_parquet(out, args.out)
            keys = ("round", "mAP", "rank1", "ari", "n_clusters", "n_outliers")
            print(json.dumps({"variant": name, **{k: (round(float(out[k].iloc[0]), 4) if k in out else None) for k in keys},
                              "warnings": int(out["n_warnings"].iloc[0])}), flush=True)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_pipeline(cfg, progress=False, on_round=on_round)
    return 0


if __name__ == "__main__":
    sys.exit(main())
