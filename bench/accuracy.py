"""Accuracy at a fixed wall-clock budget on Market-1501 (issue: prove it on real data).

For each method x seed it runs the plain loop (the same stages the Prefect flow runs) until the
budget is spent, appending one Parquet row per finished round as it goes (a cut-off run keeps its
rows), then draws mAP against wall-clock seconds and prints a markdown table.

Methods:
  imagenet     the ImageNet MobileNetV2 features, no training (round 0 only)
  cc           Cluster-Contrast (pseudo-labels, cluster memory, no ISE)
  cc_ise       Cluster-Contrast + ISE (interpolation + label-preserving loss), the paper's regime
  cc_cam       Cluster-Contrast + the label-free camera levers (CAM_LEVERS: camera-mean removal before
               clustering, splitting oversized clusters, camera-aware proxy losses), with the learning
               rate stepped after round 25 (WINNER_SCHEDULE); the winner without ISE
  cc_cam_ise   the camera levers + ISE in its new regime (ISE_REGIME: memory updated by real samples
               only, the LP loss's positive = the sample's own support samples, lambda horizon 1,500
               iterations) from the first iteration, learning rate stepped after round 20
  cc_cam_ise_late
               cc_cam + ISE_REGIME switched on at iteration 1,000 (ISE_LATE), when the features have
               matured, with cc_cam's schedule: the issue-11 winner (its first 1,000 iterations are
               cc_cam's, bit for bit)
  supervised   same backbone, budget and schedule as the winner (WINNER_SCHEDULE), ground-truth labels,
               ID + batch-hard triplet

The README's Results command (about 100 minutes of the 2 cores; run nothing else meanwhile, the
budget is wall clock):
  python bench/accuracy.py --methods imagenet,cc,cc_ise,supervised --budget-minutes 10 --seeds 0,1,2 \
      --out docs/results/accuracy.parquet
Ablations go through --set (any RunConfig field), e.g. --set ise_lp=false, and --rounds fixes the
planned length (the ISE lambda schedule spans it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid_core.device import cpu_model  # noqa: E402
from reid_core.io.atomic import append_parquet  # noqa: E402
from reid_core.pipeline import RunConfig, run_pipeline  # noqa: E402
from reid_core.pipeline.fork import fork_run, parse_fork_spec as parse_fork, read_fork  # noqa: E402

METHODS = ("imagenet", "cc", "cc_ise", "cc_cam", "cc_cam_ise", "cc_cam_ise_late", "supervised")
# the clustering + training levers of issue 11 (README "Defaults, and why")
CAM_LEVERS = dict(camera_norm=True, split_factor=4.0, cam_intra_weight=1.0, cam_inter_weight=0.5)
# the winner's learning-rate schedule (README "Results": step after round 25 of 30, not 20); the
# supervised reference and cc_cam_ise_late train with the same one. cc / cc_ise / cc_cam_ise keep RunConfig's step 20,
# the schedule their rows were measured with.
WINNER_SCHEDULE = dict(step_size=25)
ISE_REGIME = dict(ise_update_with_support=False, lp_positive="own", ise_horizon=1500)
# the winner's ISE start (README "Results", late ISE): plain training until iteration 1,000 of 1,500,
# support samples from there on (lambda 0.38 -> 0.5 of the 1,500-iteration schedule)
ISE_LATE = dict(ise_start=1000)
# every setting of the issue-11 winner beyond RunConfig's defaults (method cc_cam_ise_late; the
# market1501 deployment and bench/fewshot.py's 'winner' variant use the same)
WINNER = dict(use_ise=True, **CAM_LEVERS, **ISE_REGIME, **ISE_LATE, **WINNER_SCHEDULE)
DEFAULT_MARKET = REPO.parent / "shared" / "data" / "market1501"


def market_config(method: str, seed: int, args: argparse.Namespace) -> RunConfig:
    """The Market-1501 defaults (chosen from these measurements; see README 'Results')."""
    base = dict(
        name=f"{method}{'-' + args.tag if args.tag else ''}-s{seed}", runs_dir=str(args.runs_dir), dataset="market1501", data_root=str(args.data_root),
        backbone=args.backbone, height=args.height, width=args.width, seed=seed, rounds=planned_rounds(args),
        iters=args.iters, p=args.p, k=args.k, eps=args.eps, bf16=args.bf16, num_workers=args.num_workers,
        extract_batch_size=256,
    )
    if method == "imagenet":
        base.update(rounds=0)
    elif method == "cc":
        base.update(use_ise=False)
    elif method == "cc_ise":
        base.update(use_ise=True)
    elif method == "cc_cam":
        base.update(use_ise=False, **CAM_LEVERS, **WINNER_SCHEDULE)
    elif method == "cc_cam_ise":
        base.update(use_ise=True, **CAM_LEVERS, **ISE_REGIME)
    elif method == "cc_cam_ise_late":
        base.update(WINNER)
    elif method == "supervised":
        base.update(mode="supervised", supervised_loss="id+triplet", use_ise=False, **WINNER_SCHEDULE)
    else:
        raise ValueError(f"--methods: unknown method {method!r} (choose from {METHODS})")
    for item in args.set:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set {item!r}: expected field=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if method == "imagenet" and key == "rounds":
            continue
        base[key] = value
    return RunConfig(**base)


def planned_rounds(args: argparse.Namespace) -> int:
    """The run's planned length in rounds (``RunConfig.rounds``): the ISE lambda schedule and the LR
    steps span it, so it must match what the budget allows. Default: one round per budget minute (a
    50-iteration round at 128x64 takes ~60 s here). The budget still stops a run that is slower."""
    if args.rounds is not None:
        return args.rounds
    return max(1, int(round(args.budget_minutes)))


def fork_progress(cfg: RunConfig, fork: dict | None) -> tuple[Callable[[int], tuple[int, int]], float]:
    """``(iterations_and_images_at(r), parent_seconds)`` of a run that may be a fork: inherited
    rounds count the parent's iterations and batch, later ones the child's; ``parent_seconds`` is
    the parent's wall clock at the fork round (0 for a run that is not a fork)."""
    n = int(fork["round"]) if fork else 0
    parent = fork["parent_config"] if fork else {}
    p_iters = int(parent.get("iters", cfg.iters))
    p_batch = int(parent.get("p", cfg.p)) * int(parent.get("k", cfg.k))

    def at(r: int) -> tuple[int, int]:
        a, b = min(r, n), max(r - n, 0)
        return a * p_iters + b * cfg.iters, a * p_iters * p_batch + b * cfg.iters * cfg.p * cfg.k

    seconds = 0.0
    if fork:
        timing = cfg.round_dir(n) / "timing.json"
        seconds = float(json.loads(timing.read_text()).get("elapsed_seconds", 0.0)) if timing.exists() else 0.0
    return at, seconds


def run_method(method: str, seed: int, args: argparse.Namespace) -> None:
    cfg = market_config(method, seed, args)
    fork = None
    if args.fork_from:
        pattern, fork_round = parse_fork(args.fork_from)
        fork_run(pattern.format(seed=seed, method=method), fork_round, cfg)
        fork = read_fork(cfg.run_dir)
    progress_at, parent_seconds = fork_progress(cfg, fork)
    t0 = time.perf_counter()

    def on_round(r: int, row: pd.DataFrame) -> None:
        row = row.copy()
        inherited = bool(fork) and r <= fork["round"]
        row["method"] = f"{method}:{args.tag}" if args.tag else method
        row["seed"] = seed
        if inherited:
            row["seconds"] = float(row["elapsed_seconds"].iloc[0]) if r > 0 and "elapsed_seconds" in row else 0.0
        else:
            row["seconds"] = parent_seconds + time.perf_counter() - t0 if r > 0 else 0.0
        row["budget_seconds"] = args.budget_minutes * 60
        row["config_json"] = cfg.to_json()
        row["cpu_model"] = cpu_model()
        row["iterations"], row["images_seen"] = progress_at(r)
        row["versions"] = json.dumps(versions())
        append_parquet(row, args.out)
        print(json.dumps({"method": row["method"].iloc[0], "seed": seed, "round": r, "mAP": round(float(row["mAP"].iloc[0]), 4),
                          "rank1": round(float(row["rank1"].iloc[0]), 4), "seconds": round(float(row["seconds"].iloc[0]), 1)}),
              flush=True)

    run_pipeline(cfg, progress=not args.quiet, budget_seconds=args.budget_minutes * 60, on_round=on_round)


def versions() -> dict[str, str]:
    import platform

    import sklearn
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "python": platform.python_version(),
            "cpu_threads": str(torch.get_num_threads()), "machine": platform.machine()}


def summarize(df: pd.DataFrame, at_iterations: int | None = None) -> pd.DataFrame:
    """Last round of each method x seed (or, with ``at_iterations``, the round that ends at that many
    training iterations; the untrained ImageNet row is kept), then mean / std over seeds."""
    if at_iterations is not None:
        if "iterations" not in df:
            raise ValueError("--at-iterations: these rows have no 'iterations' column")
        df = df[(df["iterations"] == at_iterations) | (df["method"] == "imagenet")]
    last = df.sort_values("round").groupby(["method", "seed"], as_index=False).tail(1)
    extra = {}
    if "iterations" in last:
        extra["iterations"] = ("iterations", "mean")
    if "cpu_model" in last:
        extra["cpu"] = ("cpu_model", lambda c: ", ".join(sorted(set(map(str, c)))))
    agg = last.groupby("method").agg(
        seeds=("seed", "nunique"), rounds=("round", "mean"), mAP=("mAP", "mean"), mAP_std=("mAP", "std"),
        rank1=("rank1", "mean"), mINP=("mINP", "mean"), ari=("ari", "mean") if "ari" in last else ("mAP", "size"),
        n_clusters=("n_clusters", "mean") if "n_clusters" in last else ("mAP", "size"),
        seconds=("seconds", "mean"), **extra)
    order = [m for m in METHODS if m in agg.index] + sorted(m for m in agg.index if m not in METHODS)
    return agg.loc[order].reset_index()


def markdown_table(summary: pd.DataFrame) -> str:
    base = summary.set_index("method")
    imagenet = base["mAP"].get("imagenet", np.nan)
    sup = base["mAP"].get("supervised", np.nan)
    has_iters = "iterations" in summary
    lines = ["| method | seeds | rounds |" + (" iterations |" if has_iters else "")
             + " mAP % | ± | rank-1 % | mINP % | pseudo ARI | clusters | seconds | x ImageNet | % of supervised |"
             + (" CPU |" if "cpu" in summary else ""),
             "|---|---|---|" + ("---|" if has_iters else "") + "---|---|---|---|---|---|---|---|---|"
             + ("---|" if "cpu" in summary else "")]
    for _, r in summary.iterrows():
        std = "" if not np.isfinite(r["mAP_std"]) else f"{100 * r['mAP_std']:.1f}"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['rounds']:.0f} |" + (f" {r['iterations']:.0f} |" if has_iters else "")
            + f" {100 * r['mAP']:.1f} | {std} | {100 * r['rank1']:.1f} | "
            f"{100 * r['mINP']:.1f} | {r['ari']:.3f} | {r['n_clusters']:.0f} | {r['seconds']:.0f} | "
            f"{r['mAP'] / imagenet:.2f} | {100 * r['mAP'] / sup:.0f} |" + (f" {r['cpu']} |" if "cpu" in summary else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--budget-minutes", type=float, default=60.0, help="wall-clock budget per method and seed")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_MARKET)
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "accuracy.parquet")
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50, help="iterations per round")
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--eps", type=float, default=0.6)
    ap.add_argument("--bf16", default="auto")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--rounds", "--max-rounds", dest="rounds", type=int, default=None,
                    help="planned rounds per run; the ISE lambda schedule reaches its end value at the last one, "
                         "so a horizon far beyond the budget leaves ISE's support samples on top of the real "
                         "ones (default: one round per budget minute)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any other RunConfig field, value parsed as JSON when it can be (repeatable), "
                         "e.g. --set memory_mode=momentum --set lr=7e-4")
    ap.add_argument("--tag", default="",
                    help="name of a variant (e.g. an ablation's --set values): its rows get method 'METHOD:TAG' "
                         "and its run folder 'METHOD-TAG-sSEED', so variants never share a run folder")
    ap.add_argument("--summary-only", action="store_true", help="only re-draw the plot and table from --out")
    ap.add_argument("--at-iterations", type=int, default=None,
                    help="summarise the rounds that end at this many iterations (e.g. 500) instead of the last round")
    ap.add_argument("--x", choices=("seconds", "iterations"), default="seconds",
                    help="the plot's x axis (iterations: for runs that shared the machine)")
    ap.add_argument("--compare", action="append", default=[], metavar="PARQUET:METHOD",
                    help="also draw and tabulate METHOD's rows from another rows file (e.g. an ablation's "
                         "baseline: --compare docs/results/accuracy_1500.parquet:cc_cam); repeatable. With --x "
                         "iterations the plot gets a second panel: every method's gain over the first compared "
                         "method, paired by seed")
    ap.add_argument("--fork-from", default="", metavar="RUN_DIR:ROUND",
                    help="branch each run from a finished run at ROUND (reid_core.pipeline.fork): rounds up to "
                         "ROUND are that run's, training goes on from there under this command's config; "
                         "RUN_DIR may hold {seed} and {method}, e.g. runs/bench/cc_cam-s{seed}:20. For levers "
                         "that act late (the learning-rate step), it skips the shared first rounds")
    ap.add_argument("--quiet", action="store_true")
    return ap


def compare_rows(specs: list[str]) -> list[pd.DataFrame]:
    """Rows of ``PARQUET:METHOD`` specs (``--compare``), with a clear error for a bad spec."""
    frames = []
    for spec in specs:
        # a tagged method name has a colon of its own (cc_cam:step25), so split after the file name
        path, sep, method = spec.partition(".parquet:")
        path = path + ".parquet" if sep else ""
        if not sep:
            path, sep, method = spec.rpartition(":")
        if not sep or not path or not method:
            raise SystemExit(f"error: --compare {spec!r}: expected PARQUET:METHOD")
        if not Path(path).is_file():
            raise SystemExit(f"error: --compare {path}: no such rows file")
        rows = pd.read_parquet(path)
        rows = rows[rows["method"] == method]
        if rows.empty:
            raise SystemExit(f"error: --compare {path}: no rows of method {method!r}")
        frames.append(rows)
    return frames


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not (args.data_root / "bounding_box_train").is_dir():
        ap.error(f"--data-root {args.data_root}: no Market-1501 layout there")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
                run_method(method, seed, args)
    compared = compare_rows(args.compare)
    df = pd.concat([pd.read_parquet(args.out), *compared], ignore_index=True)
    from reid_core.evaluation.plots import plot_map_vs_time

    png = args.out.with_suffix(".png")
    # with --compare and --x iterations, a second panel: each method's gain over the first compared
    # method, paired by seed and iteration (wall-clock seconds of two runs never coincide)
    baseline = compared[0]["method"].iloc[0] if compared and args.x == "iterations" else None
    plot_map_vs_time(df, png, x=args.x, y="mAP", hue="method", units="seed", baseline=baseline)
    summary = summarize(df, args.at_iterations)
    print(markdown_table(summary))
    print(f"\nrows: {args.out}\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
