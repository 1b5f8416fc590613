"""``reid query``, ``reid export`` and ``reid report``: using a trained model (wired into ``reid_core.cli``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_user_commands"]


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_query(args: argparse.Namespace) -> int:
    from .query import run_query

    result = run_query(args.queries, args.gallery, args.out, model=args.checkpoint, backbone=args.backbone,
                       top_k=args.top_k, rerank=args.rerank, cache_dir=None if args.no_cache else args.cache_dir,
                       png_path=None if args.png == "none" else args.png, max_png_rows=args.max_png_rows,
                       height=args.height, width=args.width, flip=args.flip, progress=not args.quiet)
    _print({"out": str(result.out_path), "png": str(result.png_path) if result.png_path else None, **result.info})
    return 0


def _check_image_paths(args: argparse.Namespace, src, limit: int) -> list[str]:
    """Real images for the ONNX check: --check-images, else the run's query/gallery, else Market's query."""
    import pandas as pd

    from .cli import DEFAULT_MARKET
    from .query import list_queries

    if args.check_images:
        paths = list_queries([args.check_images])["path"].tolist()
    elif src.run_dir is not None and (src.run_dir / "images.parquet").is_file():
        images = pd.read_parquet(src.run_dir / "images.parquet")
        paths = images[images["split"].isin(["query", "gallery"])]["path"].tolist()
    elif (Path(DEFAULT_MARKET) / "query").is_dir():
        paths = list_queries([Path(DEFAULT_MARKET) / "query"])["path"].tolist()
    else:
        raise ValueError("--check-images: no images to check the ONNX model with; pass --check-images FOLDER")
    if not paths:
        raise ValueError(f"{args.check_images}: --check-images holds no images")
    # spread over the set (Market names sort by identity)
    step = max(1, len(paths) // limit)
    return paths[::step][:limit]


def _onnx_map(session, data_root: str, height: int, width: int) -> dict[str, float]:
    from .data import load_images
    from .evaluation import evaluate_features
    from .export import onnx_features

    images = load_images(data_root)
    q = images[images["split"] == "query"]
    g = images[images["split"] == "gallery"]
    if q.empty or g.empty:
        raise ValueError(f"{data_root}: no query/gallery split for the mAP comparison (--eval-data)")
    t0 = time.perf_counter()
    feats = onnx_features(session, q["path"].tolist() + g["path"].tolist(), height, width)
    res = evaluate_features(feats[:len(q)], feats[len(q):], q["pid"].to_numpy(), g["pid"].to_numpy(),
                            q["camid"].to_numpy(), g["camid"].to_numpy())
    return {"mAP": float(res["mAP"]), "rank1": float(res["rank1"]), "n_queries": len(q), "n_gallery": len(g),
            "seconds": time.perf_counter() - t0}


def cmd_export(args: argparse.Namespace) -> int:
    from .device import cpu_model
    from .export import check_onnx, export_onnx, onnx_session, quantize_int8, time_backends
    from .io.atomic import atomic_path
    from .query import load_model, resolve_model

    if args.format != "onnx":
        raise ValueError(f"--format: {args.format!r} is not supported (onnx)")
    src = resolve_model(args.checkpoint, backbone=args.backbone, height=args.height, width=args.width)
    model = load_model(src)
    out = Path(args.out)
    t0 = time.perf_counter()
    export_onnx(model, out, src.height, src.width, checkpoint=str(src.checkpoint) if src.checkpoint else None)
    report: dict[str, Any] = {"onnx": str(out), "backbone": src.backbone,
                              "checkpoint": str(src.checkpoint) if src.checkpoint else "ImageNet weights",
                              "input": f"uint8 (batch, {src.height}, {src.width}, 3) RGB, resized; normalised inside",
                              "export_seconds": round(time.perf_counter() - t0, 2),
                              "size_mb": round(out.stat().st_size / 1e6, 2)}
    paths = _check_image_paths(args, src, args.check_count)
    check = check_onnx(model, out, paths, src.height, src.width)
    report["check"] = check
    failed = check["min_cosine"] < args.min_cosine or not check["batch_sizes_ok"]
    if args.int8:
        q_out = out.with_name(out.stem + ".int8.onnx")
        quantize_int8(out, q_out, model=model)
        import numpy as np

        from .export import onnx_features

        ref = onnx_features(onnx_session(out), paths, src.height, src.width)
        got = onnx_features(onnx_session(q_out), paths, src.height, src.width)
        cos = np.sum(ref * got, axis=1)
        report["int8"] = {"onnx": str(q_out), "size_mb": round(q_out.stat().st_size / 1e6, 2),
                          "min_cosine_to_fp32": float(cos.min()), "mean_cosine_to_fp32": float(cos.mean())}
    if args.eval_data:
        report["mAP_fp32_onnx"] = _onnx_map(onnx_session(out), args.eval_data, src.height, src.width)
        if args.int8:
            report["mAP_int8_onnx"] = _onnx_map(onnx_session(q_out), args.eval_data, src.height, src.width)
            report["int8"]["mAP_change_points"] = 100 * (report["mAP_int8_onnx"]["mAP"] - report["mAP_fp32_onnx"]["mAP"])
    if args.benchmark:
        bench_paths = _check_image_paths(args, src, args.benchmark_images)
        rows = time_backends(model, [out, q_out] if args.int8 else [out], bench_paths, src.height, src.width,
                             batch_size=args.batch_size, threads=args.threads)
        report["speed"] = {"cpu": cpu_model(), "torch_threads": rows[0]["threads"],
                           "rows": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    if failed:
        print(f"reid export: ONNX check FAILED (min cosine {check['min_cosine']:.6f} < {args.min_cosine}, "
              f"or the batch axis is not dynamic)", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, report_summary

    t0 = time.perf_counter()
    out = build_report(args.run_dir, args.out, max_embed_points=args.max_embed_points,
                       ranked_lists=not args.no_ranked_lists, progress=not args.quiet)
    _print({"report": str(out), "seconds": round(time.perf_counter() - t0, 1), **report_summary(args.run_dir)})
    return 0


def add_user_commands(sub) -> None:
    """Add ``query``, ``export`` and ``report`` to the ``reid`` sub-command parser."""
    p = sub.add_parser("query", help="top-k gallery matches of query images (Parquet + PNG)",
                       description="Search a gallery with query images using a checkpoint, a run folder or "
                                   "ImageNet weights. Gallery features are cached by content hash.")
    p.add_argument("queries", nargs="+", help="query image files or folders (a Market root: its query split)")
    p.add_argument("--gallery", required=True, help="Market-1501 root, manifest (.csv/.parquet) or image folder")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint.pt or run folder (its last round); default: the backbone's ImageNet weights")
    p.add_argument("--backbone", default=None, help="expected backbone (checked against the checkpoint)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    p.add_argument("--out", default="runs/query/topk.parquet", help="Parquet of the top-k (PNG beside it)")
    p.add_argument("--png", default="auto", help="ranked-list PNG path, 'auto' (beside --out) or 'none'")
    p.add_argument("--max-png-rows", type=int, default=20, help="queries drawn in the PNG")
    p.add_argument("--cache-dir", default="data/cache", help="gallery feature cache folder")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--height", type=int, default=None, help="input height (default: the run's, else 128)")
    p.add_argument("--width", type=int, default=None, help="input width (default: the run's, else 64)")
    p.add_argument("--flip", action="store_true", help="average with the flipped image's feature")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("export", help="export a model to ONNX, check it with onnxruntime, time it",
                       description="Export to ONNX (uint8 NHWC RGB input resized to HxW, normalisation inside "
                                   "the graph, L2-normalised output, dynamic batch), then check it against torch "
                                   "on real images.")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--checkpoint", default=None, help="checkpoint.pt or run folder; default: ImageNet weights")
    p.add_argument("--backbone", default=None)
    p.add_argument("--out", default="runs/export/model.onnx")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--check-images", default=None,
                   help="folder of real images for the check (default: the run's query/gallery, else Market's query)")
    p.add_argument("--check-count", type=int, default=64)
    p.add_argument("--min-cosine", type=float, default=0.9999, help="fail below this cosine to torch")
    p.add_argument("--int8", action="store_true", help="also write <out>.int8.onnx (dynamic int8 quantisation)")
    p.add_argument("--eval-data", default=None, help="Market root / manifest: mAP of the ONNX model(s)")
    p.add_argument("--benchmark", action="store_true", help="img/s of onnxruntime vs torch on this CPU")
    p.add_argument("--benchmark-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="threads for both backends (default: torch's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="one self-contained HTML page of a run")
    p.add_argument("run_dir", help="runs/<name>")
    p.add_argument("--out", default=None, help="default: <run_dir>/report.html")
    p.add_argument("--max-embed-points", type=int, default=1500, help="images in the t-SNE plot")
    p.add_argument("--no-ranked-lists", action="store_true", help="skip the feature extraction for ranked lists")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_report)

