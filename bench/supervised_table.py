"""The metric-learning methods side by side on Market-1501 at the same backbone and budget.

Each variant trains with the supervised stage (ground-truth labels, P x K batches) for the same
wall-clock budget, then is evaluated with the global feature, and where relevant also with
AlignedReID's global + local distance and with k-reciprocal re-ranking. One Parquet row per
variant x evaluation, appended as they finish; a markdown table at the end.

  python bench/supervised_table.py --budget-minutes 4 --out bench/results/supervised_table.parquet
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid_core.device import pick_device  # noqa: E402
from reid_core.evaluation import evaluate_features, evaluate_rank  # noqa: E402
from reid_core.features import extract_features  # noqa: E402
from reid_core.io.atomic import append_parquet  # noqa: E402
from reid_core.losses.aligned_reid import local_distance_matrix  # noqa: E402
from reid_core.models import model_from_checkpoint  # noqa: E402
from reid_core.pipeline import RunConfig, round_paths, run_pipeline  # noqa: E402

VARIANTS = {
    "id": "id",
    "triplet": "triplet",
    "id+triplet": "id+triplet",
    "softtriple": "softtriple",
    "aligned": "id+aligned",
}
DEFAULT_MARKET = REPO.parent / "shared" / "data" / "market1501"


@torch.inference_mode()
def local_features(model, paths, height, width, batch=128) -> torch.Tensor:
    """AlignedReID stripe features (N, H, 128) of the images (eval mode, fp32)."""
    from reid_core.data.dataset import read_image
    from reid_core.data.transforms import build_eval_transform

    tf = build_eval_transform(height, width)
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(paths), batch):
        x = torch.stack([tf(read_image(p)) for p in paths[s:s + batch]]).to(device)
        out.append(model(x, return_dict=True)["local"].float().cpu())
    return torch.cat(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-minutes", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=None,
                    help="fixed number of rounds (epochs of --iters) instead of the wall-clock budget")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_MARKET)
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench_supervised")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "supervised_table.parquet")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.data_root / "bounding_box_train").is_dir():
        ap.error(f"--data-root {args.data_root}: no Market-1501 layout there")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        spec = VARIANTS[variant]
        cfg = RunConfig(name=f"sup-{variant}-s{args.seed}", runs_dir=str(args.runs_dir), dataset="market1501",
                        data_root=str(args.data_root), mode="supervised", supervised_loss=spec, use_ise=False,
                        rounds=args.rounds or 200, iters=args.iters, p=args.p, k=args.k, height=args.height, width=args.width,
                        seed=args.seed, extract_batch_size=256)
        t0 = time.perf_counter()
        budget = None if args.rounds else args.budget_minutes * 60
        metrics = run_pipeline(cfg, progress=False, budget_seconds=budget)
        train_seconds = time.perf_counter() - t0
        last = int(metrics["round"].max())
        base = {"variant": variant, "loss": spec, "rounds": last, "iterations": last * args.iters,
                "seconds": train_seconds, "config_json": cfg.to_json(), "torch": torch.__version__}
        rows = [{**base, "eval": "global", **{k: float(metrics.iloc[-1][k]) for k in ("mAP", "rank1", "mINP")}}]
        # re-ranking and (AlignedReID) local distance on the final checkpoint
        ckpt = round_paths(cfg, last)["checkpoint"]
        images = pd.read_parquet(cfg.run_dir / "images.parquet")
        q, g = images[images.split == "query"], images[images.split == "gallery"]
        model = model_from_checkpoint(ckpt, pick_device("auto"))
        feats = extract_features(model, q["path"].tolist() + g["path"].tolist(), height=args.height,
                                 width=args.width, batch_size=256, progress=False)
        qf, gf = feats[:len(q)], feats[len(q):]
        args_eval = (q["pid"].to_numpy(), g["pid"].to_numpy(), q["camid"].to_numpy(), g["camid"].to_numpy())
        rr = evaluate_features(qf, gf, *args_eval, rerank=True)
        rows.append({**base, "eval": "global+rerank", **{k: float(rr[k]) for k in ("mAP", "rank1", "mINP")}})
        if "aligned" in spec:
            ql = local_features(model, q["path"].tolist(), args.height, args.width)
            gl = local_features(model, g["path"].tolist(), args.height, args.width)
            d_local = local_distance_matrix(ql.numpy(), gl.numpy())
            d_global = np.sqrt(np.maximum(2 - 2 * qf @ gf.T, 0))  # Euclidean on unit vectors
            both = evaluate_rank(d_global + d_local, *args_eval)
            rows.append({**base, "eval": "global+local", **{k: float(both[k]) for k in ("mAP", "rank1", "mINP")}})
        df = pd.DataFrame(rows)
        append_parquet(df, args.out)
        for r in rows:
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "config_json"}),
                  flush=True)
    df = pd.read_parquet(args.out)
    print("\n| variant | loss | eval | rounds x iters | mAP % | rank-1 % | mINP % |\n|---|---|---|---|---|---|---|")
    for _, r in df.iterrows():
        print(f"| {r['variant']} | {r['loss']} | {r['eval']} | {r['rounds']} x {int(r['iterations'] / max(r['rounds'], 1))} | "
              f"{100 * r['mAP']:.1f} | {100 * r['rank1']:.1f} | {100 * r['mINP']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
