"""Benchmark feature extraction: the old path against the new one, and against the bare forward.

Prints ONE JSON line. All figures come from the same run, model, batch size and images, timed
alternately (``--repeats`` times each, best kept), so load from other processes hits them alike:

* ``old``: ``extract_features(bf16_weights=False)``, the path before issue 12: a background
  thread decodes the next batches while the model runs, and autocast casts every conv weight to
  bf16 at every batch;
* ``new`` (the default): the same, with the bf16 convs' weights stored in bf16 (bit-identical
  features: ``max_abs_feature_diff`` says so);
* ``inline``: ``new`` with ``decode="inline"`` (each batch decoded in the calling thread right
  before its forward, no thread beside torch's intra-op threads);
* ``bare``: the new runner's forward alone on batches decoded and normalised beforehand;
* ``compiled`` (with ``--compile``): the ``bare`` forward through ``torch.compile`` (inductor, no
  freezing, so the weights stay inputs and a later model of the same shape reuses the graph);
  ``compile_seconds`` is its first call, ``compiled_min_cosine`` its agreement with ``bare``.

``speedup`` = new / old images per second; ``ratio`` = new / bare shows what decoding still costs.
``*_per_cpu_s`` divide by this process's CPU time instead of wall time (steadier on a shared
machine). ``load_avg_1min`` says how busy the machine was; ``cpu`` names it.

    python bench/extract.py --backbone mobilenet_v2 --height 128 --width 64 --n-images 2048
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_core.device import cpu_model  # noqa: E402
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
    ap.add_argument("--compile", action="store_true", help="also time the bare forward under torch.compile")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"))
    args = ap.parse_args(argv)

    # Weights do not change the speed; random init avoids a download for resnet50.
    model = build_model(args.backbone, pretrained=False)
    with tempfile.TemporaryDirectory() as tmpdir:
        paths, source = _image_paths(Path(args.data_root), args.n_images, Path(tmpdir))
        kw = dict(height=args.height, width=args.width, batch_size=args.batch_size, device=args.device,
                  bf16=args.bf16, num_workers=args.num_workers, progress=False)
        old_kw = dict(kw, bf16_weights=False)
        inline_kw = dict(kw, decode="inline")
        # Bare path: the new inference runner, on batches decoded and normalised beforehand.
        with contextlib.ExitStack() as stack:
            run = stack.enter_context(inference_runner(model, args.device, args.bf16))
            dev = run.device
            batches = [
                normalize_uint8_batch(decode_batch(paths[s:s + args.batch_size], args.height, args.width), dev)
                for s in range(0, len(paths), args.batch_size)
            ]
            bf16_used, cl = run.bf16, run.channels_last

            def timed(fn) -> tuple[float, float]:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                return time.perf_counter() - t0, time.process_time() - c0

            def bare() -> None:
                for x in batches:
                    run(x).cpu()

            compiled_run = (stack.enter_context(inference_runner(model, args.device, args.bf16, compile=True))
                            if args.compile else None)

            def compiled() -> None:
                for x in batches:
                    compiled_run(x).cpu()

            # Warm-up all (oneDNN primitive creation, page cache), then alternate the paths so
            # that load from other processes hits them alike; the best of each is kept.
            f_old = extract_features(model, paths[: 2 * args.batch_size], **old_kw)
            f_new = extract_features(model, paths[: 2 * args.batch_size], **kw)
            run(batches[0])
            extract_features(model, paths[: 2 * args.batch_size], **inline_kw)
            times = {"old": [], "new": [], "inline": [], "bare": []}
            extra = {}
            if args.compile:
                extra["compile_seconds"] = round(timed(lambda: compiled_run(batches[0]))[0], 1)
                extra["compiled_min_cosine"] = float(torch.nn.functional.cosine_similarity(
                    compiled_run(batches[0]), run(batches[0])).min())
                times["compiled"] = []
            for _ in range(args.repeats):
                times["old"].append(timed(lambda: extract_features(model, paths, **old_kw)))
                times["new"].append(timed(lambda: extract_features(model, paths, **kw)))
                times["inline"].append(timed(lambda: extract_features(model, paths, **inline_kw)))
                times["bare"].append(timed(bare))
                if args.compile:
                    times["compiled"].append(timed(compiled))

    n = len(paths)
    ips = {k: n / min(t for t, _ in v) for k, v in times.items()}
    cps = {k: n / min(c for _, c in v) for k, v in times.items()}
    result = {
        "bench": "extract",
        "backbone": args.backbone,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "n_images": n,
        "bf16": bool(bf16_used),
        "channels_last": bool(cl),
        "device": str(dev),
        "num_workers": args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "old_images_per_s": round(ips["old"], 1),
        "new_images_per_s": round(ips["new"], 1),
        "inline_images_per_s": round(ips["inline"], 1),
        "bare_forward_images_per_s": round(ips["bare"], 1),
        "speedup": round(ips["new"] / ips["old"], 3),
        "inline_speedup": round(ips["inline"] / ips["old"], 3),
        "ratio": round(ips["new"] / ips["bare"], 3),
        "old_images_per_cpu_s": round(cps["old"], 1),
        "new_images_per_cpu_s": round(cps["new"], 1),
        "bare_forward_images_per_cpu_s": round(cps["bare"], 1),
        "cpu_speedup": round(cps["new"] / cps["old"], 3),
        **({"compiled_images_per_s": round(ips["compiled"], 1),
            "compiled_over_bare": round(ips["compiled"] / ips["bare"], 3), **extra} if args.compile else {}),
        "max_abs_feature_diff": float(np.abs(f_new - f_old).max()),
        "repeats": args.repeats,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "images": source,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
