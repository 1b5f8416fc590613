"""Training throughput (images/s) of the plain path against the fast path, side by side in one run.

Both paths run the real training iteration of the unsupervised loop (``reid_core.train.train_epoch``):
P x K batch of real image files, augmentation, forward in train mode (bf16 autocast +
channels_last where the CPU supports it), cluster-memory InfoNCE, backward, Adam step, memory update.

* ``old`` (the plain path): ``train_data="loader"`` (DataLoader with ``--workers`` spawned worker
  process(es), JPEG decode + torchvision transforms per image and iteration), torch's for-loop
  Adam, every conv in bf16;
* ``new`` (the default now): ``train_data="memory"`` (decoded once into a uint8 store, batched
  augmentation in the main process), fused Adam, fp32 stride-2 depthwise convs.

The two paths alternate in blocks of ``--steps`` iterations (``--repeats`` blocks each, two models
with the same initial weights), so load from other processes hits both alike; the first iteration
of every block (worker start-up, first decode of the store) is left out of ``images_per_s`` and
kept in ``images_per_s_wall`` (the whole block). One JSON line per (backbone, path), then a
``ratio`` line. The CPU model and the 1-minute load average say where and how busy.
``fraction_of_bf16_matmul_peak`` = images/s x training GFLOP per image (3 x the counted forward)
/ the GFLOP/s of a 4096^3 bf16 matmul measured in the same run.

  python bench/train_throughput.py --backbones mobilenet_v2 --height 128 --width 64 --p 16 --k 8
  python bench/train_throughput.py --backbones resnet50 --height 256 --width 128 --p 16 --k 4 --steps 3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_core.device import cpu_model, pick_device, resolve_bf16  # noqa: E402
from reid_core.models import build_model  # noqa: E402
from reid_core.train import TrainConfig, build_ise, build_memory, build_optimizer, train_epoch  # noqa: E402

PATHS = {
    "old": dict(train_data="loader", fused_adam=False, fp32_strided_dw=False),
    "new": dict(train_data="memory", fused_adam=True, fp32_strided_dw=True),
}


def _images(root: Path, tmp: Path) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Market training images (labels = the file's pid, only to drive the P x K sampler), or
    generated JPEGs when the folder is missing."""
    folder = root / "bounding_box_train"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if files:
        pids = np.array([int(f.name.split("_")[0]) for f in files])
        cams = np.array([int(f.name.split("_")[1][1]) - 1 for f in files])
        _, labels = np.unique(pids, return_inverse=True)
        return [str(f) for f in files], labels, cams, str(folder)
    from PIL import Image

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(1600):
        p = tmp / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
        labels.append(i // 8)
    return paths, np.array(labels), np.array(labels) % 6, "generated"


def train_gflop_per_image(backbone: str, height: int, width: int) -> float:
    """3 x the forward FLOPs of one image (forward + input gradient + weight gradient), counted by
    ``torch.utils.flop_counter`` on the forward (its backward formulas miscount grouped convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(backbone, pretrained=False).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 3, height, width))
    return 3 * counter.get_total_flops() / 2 / 1e9


def bf16_matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Best bf16 GFLOP/s of an n x n x n matmul on this machine (the reachable peak the training
    throughput is compared with)."""
    a = torch.randn(n, n).bfloat16()
    b = torch.randn(n, n).bfloat16()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(backbone: str, args, paths, labels, cams, source: str) -> list[dict]:
    device = pick_device(args.device)
    bf16 = resolve_bf16(args.bf16, device)
    n_clusters = int(labels.max()) + 1
    setups = {}
    for name in args.paths.split(","):
        cfg = TrainConfig(height=args.height, width=args.width, p=args.p, k=args.k, iters=args.steps,
                          epochs=args.repeats + 1, device=args.device, bf16=bf16, seed=0, use_ise=False,
                          num_workers=args.workers, **PATHS[name])
        torch.manual_seed(0)
        try:
            model = build_model(backbone, pretrained=True)
        except RuntimeError:  # offline ResNet-50: same speed with random weights
            model = build_model(backbone, pretrained=False)
        feats = np.random.default_rng(0).standard_normal((len(paths), model.feat_dim)).astype(np.float32)
        memory = build_memory(feats, labels, cfg, device=device)
        setups[name] = (cfg, model, memory, build_ise(memory, cfg), build_optimizer(model, cfg))
    per_iter = {n: [] for n in setups}
    walls = {n: [] for n in setups}
    for rep in range(args.repeats):
        for name, (cfg, model, memory, ise, opt) in setups.items():
            t0 = time.perf_counter()
            log = train_epoch(model, paths, labels, cams, memory, cfg, opt, rep, cfg.epochs, ise=ise, progress=False)
            walls[name].append(time.perf_counter() - t0)
            per_iter[name] += log["seconds"].iloc[1:].tolist()
    batch = args.p * args.k
    gflop = train_gflop_per_image(backbone, args.height, args.width)
    peak = bf16_matmul_gflops() if bf16 else math.nan
    rows = []
    for name in setups:
        sec = statistics.median(per_iter[name])
        rows.append({
            "bench": "train_throughput", "backbone": backbone, "path": name, **PATHS[name],
            "height": args.height, "width": args.width, "batch": batch, "p": args.p, "k": args.k,
            "bf16": bool(bf16), "workers_old_path": args.workers, "steps_timed": len(per_iter[name]),
            "seconds_per_step_median": round(sec, 3), "images_per_s": round(batch / sec, 2),
            "images_per_s_wall": round(batch * args.steps * args.repeats / sum(walls[name]), 2),
            "train_gflop_per_image": round(gflop, 3), "bf16_matmul_gflops": round(peak, 1),
            "fraction_of_bf16_matmul_peak": round(batch / sec * gflop / peak, 4),
            "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2), "images": source, "torch": torch.__version__,
        })
    if "old" in setups and "new" in setups:
        old, new = rows[0], rows[1]
        rows.append({"bench": "train_throughput", "backbone": backbone, "path": "ratio new/old",
                     "images_per_s": round(new["images_per_s"] / old["images_per_s"], 3),
                     "images_per_s_wall": round(new["images_per_s_wall"] / old["images_per_s_wall"], 3),
                     "cpu": cpu_model()})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="mobilenet_v2")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="iterations per block (the first is not timed)")
    ap.add_argument("--repeats", type=int, default=3, help="blocks per path, alternating")
    ap.add_argument("--paths", default="old,new")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the old path (its default: 1)")
    ap.add_argument("--bf16", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"))
    args = ap.parse_args(argv)
    unknown = [p for p in args.paths.split(",") if p not in PATHS]
    if unknown:
        ap.error(f"--paths: unknown {unknown}; choose from {sorted(PATHS)}")
    if args.steps < 2 or args.repeats < 1:
        ap.error("--steps must be >= 2 (the first iteration of a block is not timed) and --repeats >= 1")
    if args.bf16 != "auto":
        args.bf16 = args.bf16.lower() in ("1", "true", "yes", "on")
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels, cams, source = _images(Path(args.data_root), Path(tmp))
        for backbone in args.backbones.split(","):
            for row in run(backbone, args, paths, labels, cams, source):
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
