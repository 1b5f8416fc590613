"""Benchmark feature extraction: full path (decode + resize + normalise + forward) vs bare forward.

Prints ONE JSON line. Both throughputs come from the same run, same model, same batch size and the
same inference settings (``reid_core.features.inference_runner``); the bare forward runs on
tensors decoded and normalised beforehand, so ``ratio`` = full / bare shows what decoding costs.
The two paths are timed alternately (``--repeats`` times, best kept). ``*_per_cpu_s`` divide by
the CPU time of this process instead of wall time (``cpu_ratio``): on a machine shared with other
jobs that figure is steadier, and on a dedicated machine whose cores torch already fills it is what
the wall-clock ratio tends to. ``load_avg_1min`` says how busy the machine was.

    python bench/extract.py --backbone mobilenet_v2 --height 256 --width 128 --bf16 false
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_core.features import (  # noqa: E402
    decode_batch, extract_features, inference_runner, normalize_uint8_batch,
)
from reid_core.models import build_model  # noqa: E402


def _bool_or_auto(value: str):
    v = value.lower()
    if v == "auto":
        return "auto"
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto/true/false, got {value!r}")


def _image_paths(root: Path, n: int, tmp: Path) -> tuple[list[str], str]:
    folder = root / "bounding_box_train"
    paths = sorted(str(p) for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if paths:
        reps = -(-n // len(paths))
        return (paths * reps)[:n], str(folder)
    # No dataset: random 128x64 JPEGs (decode cost similar to Market crops).
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(min(n, 256)):
        p = tmp / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(str(p))
    reps = -(-n // len(out))
    return (out * reps)[:n], "synthetic"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bf16", type=_bool_or_auto, default="auto")
    ap.add_argument("--n-images", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each path, alternated (best is kept)")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"))
    args = ap.parse_args(argv)

    # Weights do not change the speed; random init avoids a download for resnet50.
    model = build_model(args.backbone, pretrained=False)
    with tempfile.TemporaryDirectory() as tmpdir:
        paths, source = _image_paths(Path(args.data_root), args.n_images, Path(tmpdir))
        kw = dict(height=args.height, width=args.width, batch_size=args.batch_size, device=args.device,
                  bf16=args.bf16, num_workers=args.num_workers, progress=False)
        # Bare path: the same inference runner, on batches decoded and normalised beforehand.
        with inference_runner(model, args.device, args.bf16) as run:
            dev = run.device
            batches = [
                normalize_uint8_batch(decode_batch(paths[s:s + args.batch_size], args.height, args.width), dev)
                for s in range(0, len(paths), args.batch_size)
            ]
            bf16_used, cl = run.bf16, run.channels_last

            def bare() -> tuple[float, float]:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                for x in batches:
                    run(x).cpu()
                return time.perf_counter() - t0, time.process_time() - c0

            def full() -> tuple[float, float]:
                t0, c0 = time.perf_counter(), time.process_time()
                extract_features(model, paths, **kw)
                return time.perf_counter() - t0, time.process_time() - c0

            # Warm-up both (oneDNN primitive creation, page cache), then alternate the two paths so
            # that load from other processes hits both alike; the best of each is kept.
            extract_features(model, paths[: args.batch_size], **kw)
            run(batches[0])
            full_times, bare_times = [], []
            for _ in range(args.repeats):
                full_times.append(full())
                bare_times.append(bare())

    full_ips = len(paths) / min(t for t, _ in full_times)
    bare_ips = len(paths) / min(t for t, _ in bare_times)
    # CPU seconds of this process (all its threads): less sensitive to other processes' load.
    full_cpu = len(paths) / min(c for _, c in full_times)
    bare_cpu = len(paths) / min(c for _, c in bare_times)
    result = {
        "bench": "extract",
        "backbone": args.backbone,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "n_images": len(paths),
        "bf16": bool(bf16_used),
        "channels_last": bool(cl),
        "device": str(dev),
        "num_workers": args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "full_images_per_s": round(full_ips, 1),
        "bare_forward_images_per_s": round(bare_ips, 1),
        "ratio": round(full_ips / bare_ips, 3),
        "full_images_per_cpu_s": round(full_cpu, 1),
        "bare_forward_images_per_cpu_s": round(bare_cpu, 1),
        "cpu_ratio": round(full_cpu / bare_cpu, 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "images": source,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
