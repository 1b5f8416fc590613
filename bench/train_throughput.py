"""Training-step throughput (images/s): backbone x input size x precision, one JSON line each.

The step is the real one of the unsupervised loop: forward in train mode (BN neck output),
cluster-memory InfoNCE, backward, Adam step, on a P x K batch of random tensors (decoding is
measured separately by bench/extract.py). bf16 means autocast + channels_last.

  python bench/train_throughput.py --backbones mobilenet_v2,resnet50 --height 256 --width 128 --batch 64
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_core.device import autocast, cpu_supports_bf16, pick_device  # noqa: E402
from reid_core.losses.cluster_memory import ClusterMemory  # noqa: E402
from reid_core.models import build_model  # noqa: E402


def measure(backbone: str, height: int, width: int, batch: int, bf16: bool, steps: int, warmup: int) -> dict:
    device = pick_device("auto")
    torch.manual_seed(0)
    try:
        model = build_model(backbone, pretrained=True)
    except RuntimeError:  # offline ResNet-50: same speed with random weights
        model = build_model(backbone, pretrained=False)
    model.to(device).train()
    if bf16:
        model.to(memory_format=torch.channels_last)
    memory = ClusterMemory(model.feat_dim, 32, temp=0.05, momentum=0.1).to(device)
    memory.init_centroids(torch.randn(64, model.feat_dim), torch.arange(64) % 32)
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    x = torch.randn(batch, 3, height, width, device=device)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 32
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast(device, bf16):
            feats = model(x)
        loss = memory(feats.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    return {"backbone": backbone, "height": height, "width": width, "batch": batch,
            "precision": "bf16+channels_last" if bf16 else "fp32", "seconds_per_step": round(sec, 3),
            "images_per_s": round(batch / sec, 2), "device": device.type, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="mobilenet_v2,resnet50")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    for backbone in args.backbones.split(","):
        for prec in args.precisions.split(","):
            bf16 = prec == "bf16"
            if bf16 and not cpu_supports_bf16() and not torch.cuda.is_available():
                continue
            print(json.dumps(measure(backbone, args.height, args.width, args.batch, bf16, args.steps, args.warmup)),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
