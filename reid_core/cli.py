"""``reid`` command line: evaluate a backbone or checkpoint, run the plain loop, make synthetic data,
sweep DBSCAN eps; use a trained model: query a gallery, export to ONNX, report a run as HTML.
(The Prefect flows live in ``flows/``; this CLI needs no Prefect.)"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

DEFAULT_MARKET = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    from .pipeline.config import RunConfig

    for f in dataclasses.fields(RunConfig):
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=_bool, default=None, metavar="BOOL")
        elif f.name == "extra_losses":
            parser.add_argument(flag, dest=f.name, nargs="*", default=None)
        elif f.name == "knn_options":
            parser.add_argument(flag, dest=f.name, type=json.loads, default=None, metavar="JSON")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=type(default), default=None)
        else:
            parser.add_argument(flag, dest=f.name, default=None)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def config_from_args(args: argparse.Namespace, **defaults):
    from .pipeline.config import RunConfig

    values = dict(defaults)
    if getattr(args, "config", None):
        try:
            loaded = json.loads(Path(args.config).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{args.config}: not a JSON file of RunConfig fields ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a JSON object of RunConfig fields, got {type(loaded).__name__}")
        values.update(loaded)
    for f in dataclasses.fields(RunConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if values.get("bf16") in ("true", "false", "True", "False"):
        values["bf16"] = values["bf16"].lower() == "true"
    return RunConfig.from_dict(values)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a backbone (no training) or a checkpoint on query/gallery; print + write Parquet."""
    from .pipeline import stages

    defaults = dict(name="evaluate", dataset="market1501", data_root=DEFAULT_MARKET, rounds=0)
    if args.checkpoint and args.backbone is None:  # the checkpoint says which backbone it holds
        from .query import resolve_model

        defaults["backbone"] = resolve_model(args.checkpoint).backbone
    cfg = config_from_args(args, **defaults)
    out = Path(args.out) if args.out else cfg.run_dir / "evaluate.parquet"
    # it writes images.parquet and the metrics file into out's folder: hold that folder's lock, as a
    # training run does, so two commands never interleave their files (the run folder by default; a
    # folder of the user's own choosing keeps its temporary-looking files)
    from .io.lock import run_folder_lock

    in_run_dir = out.parent.resolve() == cfg.run_dir.resolve()
    with run_folder_lock(out.parent, remove_temporaries=in_run_dir):
        return _evaluate_into(args, cfg, stages, out)


def _evaluate_into(args: argparse.Namespace, cfg, stages, out: Path) -> int:
    import pandas as pd

    from .pipeline.loop import run_provenance

    images = stages.index_images(cfg.dataset, cfg.data_root, out.parent / "images.parquet")
    n_eval = int(pd.read_parquet(images)["split"].isin(["query", "gallery"]).sum())
    t0 = time.perf_counter()
    stages.evaluate_stage(images, args.checkpoint, cfg, 0, out, progress=not args.quiet)
    row = pd.read_parquet(out)
    seconds = float(row["eval_extract_seconds"].iloc[0])
    row["images_per_s"] = n_eval / max(seconds, 1e-9)
    row["bf16"] = str(cfg.bf16)
    row["backbone"] = cfg.backbone
    row["input_size"] = f"{cfg.height}x{cfg.width}"
    for k, v in run_provenance(cfg).items():
        row[k] = v
    from .io.atomic import write_parquet

    write_parquet(row, out)
    keys = ["backbone", "input_size", "bf16", "mAP", "rank1", "rank5", "rank10", "mINP", "n_queries",
            "n_skipped_queries", "images_per_s"]
    print(json.dumps({k: (row[k].iloc[0].item() if hasattr(row[k].iloc[0], "item") else row[k].iloc[0]) for k in keys}))
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The plain-Python loop (no Prefect) over rounds."""
    from .pipeline.loop import run_pipeline

    cfg = config_from_args(args)
    if args.fork_from:
        from .pipeline.fork import fork_run, parse_fork_spec

        parent, round_idx = parse_fork_spec(args.fork_from)
        fork_run(parent, round_idx, cfg)
    df = run_pipeline(cfg, progress=not args.quiet)
    cols = [c for c in ("round", "mAP", "rank1", "mINP", "ari", "nmi", "n_clusters", "n_outliers") if c in df.columns]
    print(df[cols].to_string(index=False))
    print(f"outputs in {cfg.run_dir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the RunConfig a run with these flags would use: every field, defaults filled in."""
    cfg = config_from_args(args)
    print(cfg.to_json())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_synthetic

    t0 = time.perf_counter()
    out = generate_synthetic(args.out, n_ids=args.ids, n_cams=args.cams, seed=args.seed)
    print(json.dumps({"out": str(out), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


def cmd_eps_sweep(args: argparse.Namespace) -> int:
    """Tabulate eps vs clusters / outliers (and NMI/ARI) for one round's features."""
    import numpy as np
    import pandas as pd

    from .cluster.jaccard import compute_jaccard_distance
    from .cluster.pseudo_labels import eps_sweep
    from .io.atomic import write_parquet
    from .io.features_io import read_features

    ids, feats = read_features(args.features)
    gt = None
    if args.images:
        images = pd.read_parquet(args.images).set_index("image_id")
        gt = images.loc[ids, "pid"].to_numpy()
        if (gt < 0).any():
            gt = None
    dist = compute_jaccard_distance(feats, k1=args.k1, k2=args.k2)
    eps_values = np.round(np.arange(args.eps_min, args.eps_max + 1e-9, args.eps_step), 4)
    table = eps_sweep(dist, eps_values, gt_pids=gt)
    print(table.to_string(index=False))
    if args.out:
        write_parquet(table, args.out)
        try:
            from .evaluation.plots import plot_eps_sweep

            plot_eps_sweep(table, Path(args.out).with_suffix(".png"))
        except ImportError:
            pass
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a run folder's files against their stage records; exit 1 when something is wrong."""
    from .pipeline.verify import verify_run

    report = verify_run(args.run_dir)
    print(json.dumps(report, indent=2))
    for problem in report["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress and show the traceback of an error (errors are one line otherwise)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("evaluate", help="score a backbone (no training) or a checkpoint")
    _add_config_args(p)
    p.add_argument("--checkpoint", default=None, help="checkpoint.pt of a run (default: the backbone as built)")
    p.add_argument("--out", default=None, help="metrics Parquet (default runs/<name>/evaluate.parquet)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="plain-Python loop over rounds (no Prefect)")
    _add_config_args(p)
    p.add_argument("--config", default=None, help="JSON file with RunConfig fields")
    p.add_argument("--fork-from", default="", metavar="RUN_DIR:ROUND",
                   help="branch from a finished run at ROUND: its rounds 0..ROUND are taken as they are and "
                        "training goes on under this command's config (a new --name)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="print every RunConfig knob and its value")
    _add_config_args(p)
    p.add_argument("--config", default=None, help="JSON file with RunConfig fields")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("synth", help="generate the synthetic person dataset")
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--ids", type=int, default=100)
    p.add_argument("--cams", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eps-sweep", help="DBSCAN eps vs clusters/outliers/ARI of a features file")
    p.add_argument("features")
    p.add_argument("--images", default=None, help="images.parquet with ground-truth pids (optional)")
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--eps-min", type=float, default=0.3)
    p.add_argument("--eps-max", type=float, default=0.8)
    p.add_argument("--eps-step", type=float, default=0.05)
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_eps_sweep)

    p = sub.add_parser("verify", help="check a run folder against its stage records")
    p.add_argument("run_dir", help="runs/<name>")
    p.set_defaults(func=cmd_verify)

    from .cli_tools import add_user_commands

    add_user_commands(sub)
    # --verbose is global, but also accepted after the command (reid run --verbose ...)
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log progress and show the traceback of an error")
    return parser


#: exit status of an expected error (bad input file or field, missing file, bad config value, ...)
EXIT_EXPECTED_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    """Run one ``reid`` command. An expected error (see :mod:`reid_core.errors`) prints one line,
    ``error: <file or field>: <problem>``, on stderr and returns 2; ``--verbose`` adds the
    traceback. Any other exception is a bug and propagates with its traceback."""
    from .errors import expected_error_message

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except Exception as exc:
        message = expected_error_message(exc)
        if message is None:
            raise
        if args.verbose:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_EXPECTED_ERROR


if __name__ == "__main__":
    sys.exit(main())
