"""The plain-Python loop over rounds (no Prefect): the reference the flow is measured against."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..io.atomic import atomic_path, write_parquet
from . import stages
from .config import RunConfig

log = logging.getLogger(__name__)


def round_paths(cfg: RunConfig, round_idx: int) -> dict[str, Path]:
    d = cfg.round_dir(round_idx)
    return {
        "features": d / "features.parquet",
        "pseudo_labels": d / "pseudo_labels.parquet",
        "ise_plan": d / "ise_plan.parquet",
        "checkpoint": d / "checkpoint.pt",
        "train_log": d / "train_log.parquet",
        "metrics": d / "metrics.parquet",
        "profile": d / "profile.parquet",
        "timing": d / "timing.json",
    }


def write_config(cfg: RunConfig) -> Path:
    path = cfg.run_dir / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(cfg.to_json())
    return path


def collect_metrics(cfg: RunConfig, rounds: int | None = None) -> pd.DataFrame:
    """Concatenate the per-round metrics files into ``<run>/metrics.parquet``."""
    from .fork import read_fork

    rounds = cfg.rounds if rounds is None else rounds
    fork = read_fork(cfg.run_dir)
    frames = []
    for r in range(rounds + 1):
        if round_paths(cfg, r)["metrics"].exists():
            frames.append(_round_metrics(cfg, r, fork))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(df):
        for key, value in run_provenance(cfg).items():
            df[key] = value
        write_parquet(df, cfg.run_dir / "metrics.parquet")
    return df


def run_provenance(cfg: RunConfig) -> dict[str, Any]:
    """Configuration and library versions recorded with every result row."""
    import platform

    import sklearn
    import torch

    from ..device import cpu_model

    return {
        "config_json": cfg.to_json(),
        "torch_version": torch.__version__,
        "sklearn_version": sklearn.__version__,
        "python_version": platform.python_version(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "cpu_model": cpu_model(),
        "batch_per_device": cfg.p * cfg.k,
    }


def _round_metrics(cfg: RunConfig, round_idx: int, fork: dict[str, Any] | None) -> pd.DataFrame:
    """Round ``round_idx``'s metrics row with its timing (when recorded) and fork marks."""
    paths = round_paths(cfg, round_idx)
    frame = _inherited_marks(pd.read_parquet(paths["metrics"]), fork)
    if paths["timing"].exists():
        frame = frame.assign(**json.loads(paths["timing"].read_text()))
    return frame


def _inherited_marks(metrics: pd.DataFrame, fork: dict[str, Any] | None) -> pd.DataFrame:
    """A forked run's metric rows say so: ``fork_parent`` / ``fork_round`` on every row and
    ``inherited`` on the rounds taken from the parent."""
    if not fork:
        return metrics
    return metrics.assign(fork_parent=str(fork["parent"]), fork_round=int(fork["round"]),
                          inherited=metrics["round"].astype(int) <= int(fork["round"]))


def write_profile(cfg: RunConfig, round_idx: int, paths: dict[str, Path]) -> Path:
    names = {"extract": paths["features"], "cluster": paths["pseudo_labels"], "ise": paths["ise_plan"],
             "train": paths["checkpoint"], "evaluate": paths["metrics"]}
    df = stages.stage_profile({k: v for k, v in names.items() if v.exists()})
    meta = stages.cache.read_meta(paths["pseudo_labels"])
    if "jaccard_seconds" in meta:
        df = pd.concat([df, pd.DataFrame([{"stage": "cluster.jaccard", "seconds": meta["jaccard_seconds"],
                                           "peak_rss_mb": None}])], ignore_index=True)
    df.insert(0, "round", round_idx)
    return write_parquet(df, paths["profile"])


def run_round(cfg: RunConfig, images: Path, round_idx: int, prev_checkpoint: Path | None,
              progress: bool = True, on_progress: Callable[[float], None] | None = None) -> Path:
    """Run round ``round_idx`` >= 1; returns the new checkpoint."""
    p = round_paths(cfg, round_idx)
    p["features"].parent.mkdir(parents=True, exist_ok=True)
    features: Path | None = None
    if cfg.mode == "supervised":
        stages.ground_truth_labels(images, p["pseudo_labels"], round_idx)
    else:
        features = stages.extract_features_stage(images, prev_checkpoint, cfg, round_idx, p["features"],
                                                 progress=progress)
        stages.build_pseudo_labels(p["features"], cfg, round_idx, p["pseudo_labels"], progress=progress,
                                   images_path=images,
                                   previous_labels_path=round_paths(cfg, round_idx - 1)["pseudo_labels"])
        if cfg.use_ise:
            stages.plan_ise(p["features"], p["pseudo_labels"], cfg, round_idx, p["ise_plan"])
    ckpt, _ = stages.train_epoch_stage(images, p["pseudo_labels"], features, prev_checkpoint, cfg, round_idx,
                                       p["checkpoint"], p["train_log"], on_progress=on_progress, progress=progress)
    stages.evaluate_stage(images, ckpt, cfg, round_idx, p["metrics"], pseudo_labels_path=p["pseudo_labels"],
                          progress=progress)
    write_profile(cfg, round_idx, p)
    return ckpt


def run_pipeline(cfg: RunConfig, progress: bool = True, budget_seconds: float | None = None,
                 on_round: Callable[[int, pd.DataFrame], None] | None = None) -> pd.DataFrame:
    """Index, evaluate the starting model (round 0), then up to ``cfg.rounds`` rounds.

    ``budget_seconds``: stop before a round that would not finish inside the wall-clock budget
    (estimated from the slowest round so far); ``on_round(r, metrics_row)`` is called after each
    round (benchmarks append it to their Parquet so a cut-off run keeps its finished rows).
    Returns the metrics of all finished rounds (also written to ``<run>/metrics.parquet``).
    """
    from ..io.lock import run_folder_lock

    # one writer per run folder: a second run on it fails at once, naming this process
    with run_folder_lock(cfg.run_dir):
        return _run_rounds(cfg, progress, budget_seconds, on_round)


def _run_rounds(cfg: RunConfig, progress: bool, budget_seconds: float | None,
                on_round: Callable[[int, pd.DataFrame], None] | None) -> pd.DataFrame:
    import time

    from .fork import read_fork

    start = time.perf_counter()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg)
    fork = read_fork(cfg.run_dir)
    inherited = fork["round"] if fork else 0
    images = stages.index_images(cfg.dataset, cfg.data_root, cfg.run_dir / "images.parquet")
    p0 = round_paths(cfg, 0)
    p0["metrics"].parent.mkdir(parents=True, exist_ok=True)
    if not fork:
        stages.evaluate_stage(images, None, cfg, 0, p0["metrics"], progress=progress)
    ckpt: Path | None = None
    slowest = 0.0
    done = 0
    # a fork's rounds 0..N are the parent's, taken as they are (see reid_core.pipeline.fork)
    for r in range(0, inherited + 1):
        if r:
            ckpt, done = round_paths(cfg, r)["checkpoint"], r
        if on_round is not None:
            on_round(r, _round_metrics(cfg, r, fork))
    if fork:
        log.info("fork of %s: rounds 0..%d inherited, training from round %d", fork["parent"], inherited, inherited + 1)
    for r in range(inherited + 1, cfg.rounds + 1):
        t_round = time.perf_counter()
        elapsed = t_round - start
        if budget_seconds is not None and r > 1 and elapsed + slowest > budget_seconds:
            log.info("budget of %.0f s reached after %d rounds (%.0f s elapsed)", budget_seconds, r - 1, elapsed)
            if cfg.use_ise and r - 1 < 0.8 * cfg.rounds:
                log.warning("the budget stopped the run at round %d of the %d planned: ISE's lambda schedule spans "
                            "the planned rounds, so it never reached its end value; plan fewer rounds", r - 1, cfg.rounds)
            break
        ckpt = run_round(cfg, images, r, ckpt, progress=progress)
        slowest = max(slowest, time.perf_counter() - t_round)
        done = r
        timing = {"elapsed_seconds": time.perf_counter() - start, "round_seconds": time.perf_counter() - t_round}
        with atomic_path(round_paths(cfg, r)["timing"]) as tmp:
            tmp.write_text(json.dumps(timing))
        m = _round_metrics(cfg, r, fork)
        log.info("round %d: %s", r, json.dumps({k: m.iloc[0].get(k) for k in ("mAP", "rank1", "ari", "n_clusters")},
                                               default=str))
        if on_round is not None:
            on_round(r, m)
    return collect_metrics(cfg, rounds=done)
