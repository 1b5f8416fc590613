"""What AlignedReID's local branch gives the shared trunk: gradients and local-only accuracy.

Issue 16 asks for a measured account when joint learning with the local branch does not beat
ID + triplet. For each checkpoint of an AlignedReID run (``bench/supervised_table.py --variants
aligned``) this probe takes ``--batches`` P x K batches of real training images with their true
identities (fixed seed, no augmentation, train mode as in training, fp32) and splits the objective
into its three terms:

* ``id``: the ID loss (label-smoothed cross-entropy);
* ``global``: the batch-hard triplet term on the global feature;
* ``local``: the triplet term on the shortest-path local distance (hard samples mined on the
  global distance, as in training), on the run's ``aligned_local_scale`` and weight.

For each term it takes the gradient on the **shared trunk** (the backbone's parameters, not the
heads) and prints its norm, the norm of the local term's gradient relative to the global term's,
and the cosines between the terms' gradients (summed over the batches). A local gradient that is
small against the others, or nearly parallel to the global one, adds little the trunk does not
already get. With ``--eval`` it also scores the last checkpoint with the local distance alone on
the query / gallery split (mAP of what the local branch has learnt).

One JSON line per checkpoint (``--out`` appends them to a JSON-lines file too):

    python bench/aligned_probe.py runs/claims/sup-aligned-s0 --batches 8 --eval
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_core.device import cpu_model  # noqa: E402
from reid_core.evaluation import evaluate_rank  # noqa: E402
from reid_core.features import decode_batch, normalize_uint8_batch  # noqa: E402
from reid_core.losses.aligned_reid import AlignedTripletLoss, local_distance_matrix  # noqa: E402
from reid_core.losses.id_loss import IDLoss  # noqa: E402
from reid_core.models import model_from_checkpoint  # noqa: E402

TERMS = ("id", "global", "local")


def pk_batches(pids: np.ndarray, p: int, k: int, n_batches: int, seed: int) -> list[np.ndarray]:
    """``n_batches`` index arrays of ``p`` identities x ``k`` images (identities with >= k images)."""
    rng = np.random.default_rng(seed)
    by_pid = pd.Series(np.arange(len(pids))).groupby(pids).apply(np.asarray)
    eligible = [v for v in by_pid.values if len(v) >= k]
    if len(eligible) < p:
        raise ValueError(f"need {p} identities with >= {k} training images, found {len(eligible)}")
    out = []
    for _ in range(n_batches):
        chosen = rng.choice(len(eligible), size=p, replace=False)
        out.append(np.concatenate([rng.choice(eligible[c], size=k, replace=False) for c in chosen]))
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float("nan")


def trunk_gradients(model, x: torch.Tensor, labels: torch.Tensor, local_scale: str, local_weight: float):
    """Flattened trunk gradient of each term (``TERMS``) on one batch, and the terms' values."""
    trunk = [q for q in model.backbone.parameters() if q.requires_grad]
    out = model(x, return_dict=True)
    glob = AlignedTripletLoss(margin=0.3, global_weight=1.0, local_weight=0.0, local_scale=local_scale)
    loc = AlignedTripletLoss(margin=0.3, global_weight=0.0, local_weight=local_weight, local_scale=local_scale)
    values = {
        "id": IDLoss(epsilon=0.1)(out["logits"].float(), labels),
        "global": glob(out["feat"].float(), out["local"].float(), labels),
        "local": loc(out["feat"].float(), out["local"].float(), labels),
    }
    grads = {}
    for i, term in enumerate(TERMS):
        g = torch.autograd.grad(values[term], trunk, retain_graph=i < len(TERMS) - 1, allow_unused=True)
        grads[term] = torch.cat([(gi if gi is not None else torch.zeros_like(q)).reshape(-1)
                                 for gi, q in zip(g, trunk)])
    return grads, {t: float(v.detach()) for t, v in values.items()}


def probe_checkpoint(ckpt: Path, images: pd.DataFrame, cfg: dict, args) -> dict:
    model = model_from_checkpoint(ckpt, "cpu")
    if model.local is None or model.classifier is None:
        raise ValueError(f"{ckpt}: not an AlignedReID checkpoint (needs the local branch and a classifier)")
    model.train()
    train = images[images.split == "train"].reset_index(drop=True)
    _, labels_all = np.unique(train["pid"].to_numpy(), return_inverse=True)
    h, w = int(cfg["height"]), int(cfg["width"])
    scale, weight = cfg.get("aligned_local_scale", "mean"), float(cfg.get("aligned_local_weight", 1.0))
    sums = {t: None for t in TERMS}
    values = {t: [] for t in TERMS}
    for idx in pk_batches(labels_all, args.p, args.k, args.batches, args.seed):
        x = normalize_uint8_batch(decode_batch(train["path"].iloc[idx].tolist(), h, w), torch.device("cpu"))
        grads, vals = trunk_gradients(model, x, torch.as_tensor(labels_all[idx]), scale, weight)
        for t in TERMS:
            sums[t] = grads[t] if sums[t] is None else sums[t] + grads[t]
            values[t].append(vals[t])
    norms = {t: float(sums[t].norm()) / args.batches for t in TERMS}
    row = {
        "bench": "aligned_probe", "checkpoint": str(ckpt), "round": int(ckpt.parent.name.split("_")[-1]),
        "seed_run": cfg.get("seed"), "aligned_local_scale": scale, "aligned_local_weight": weight,
        "batches": args.batches, "p": args.p, "k": args.k,
        **{f"loss_{t}": float(np.mean(values[t])) for t in TERMS},
        **{f"grad_norm_{t}": norms[t] for t in TERMS},
        "local_over_global_grad_norm": norms["local"] / norms["global"] if norms["global"] else float("nan"),
        "cos_local_global": _cos(sums["local"], sums["global"]),
        "cos_local_id": _cos(sums["local"], sums["id"]),
        "cos_global_id": _cos(sums["global"], sums["id"]),
        "cpu": cpu_model(),
    }
    return row


def local_only_map(ckpt: Path, images: pd.DataFrame, cfg: dict) -> dict:
    """mAP / rank-1 of the local distance alone on the query / gallery split."""
    model = model_from_checkpoint(ckpt, "cpu").eval()
    h, w = int(cfg["height"]), int(cfg["width"])
    q, g = images[images.split == "query"], images[images.split == "gallery"]

    @torch.inference_mode()
    def local(paths):
        out = []
        for s in range(0, len(paths), 128):
            x = normalize_uint8_batch(decode_batch(paths[s:s + 128], h, w), torch.device("cpu"))
            out.append(model(x, return_dict=True)["local"].float())
        return torch.cat(out).numpy()

    d = local_distance_matrix(local(q["path"].tolist()), local(g["path"].tolist()))
    ev = evaluate_rank(d, q["pid"].to_numpy(), g["pid"].to_numpy(), q["camid"].to_numpy(), g["camid"].to_numpy())
    return {"local_only_mAP": float(ev["mAP"]), "local_only_rank1": float(ev["rank1"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders of AlignedReID runs (round_NNN/checkpoint.pt inside)")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="seed of the batch draw (same batches for every checkpoint)")
    ap.add_argument("--eval", action="store_true", help="also score the last checkpoint with the local distance alone")
    ap.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    for run in args.runs:
        run = Path(run)
        cfg_path, images_path = run / "config.json", run / "images.parquet"
        for f in (cfg_path, images_path):
            if not f.is_file():
                raise SystemExit(f"error: {f}: missing (not a run folder)")
        cfg = json.loads(cfg_path.read_text())
        images = pd.read_parquet(images_path)
        ckpts = sorted(run.glob("round_*/checkpoint.pt"))
        if not ckpts:
            raise SystemExit(f"error: {run}: no round_NNN/checkpoint.pt")
        for ckpt in ckpts:
            row = probe_checkpoint(ckpt, images, cfg, args)
            if args.eval and ckpt == ckpts[-1]:
                row.update(local_only_map(ckpt, images, cfg))
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
