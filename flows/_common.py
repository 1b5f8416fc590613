"""Helpers shared by the flows: building the RunConfig from flow parameters and the artifact
contents (presentation only; all computing happens in ``reid_core.pipeline.stages``)."""
from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from reid_core.pipeline.config import RunConfig

#: RunConfig's own defaults, used as the flows' parameter defaults so both stay in step
DEFAULTS = RunConfig()

#: provenance columns of ``metrics.parquet`` left out of the table artifact (long / constant)
_HIDDEN_COLUMNS = ("config_json", "torch_version", "sklearn_version", "python_version", "machine")


def build_config(named: dict[str, Any], overrides: dict[str, Any] | None) -> RunConfig:
    """``RunConfig`` from the flow's named parameters plus ``overrides`` (any other RunConfig field).

    A field may be given once: as a named parameter or in ``overrides``, not both. ``runs_dir`` and
    ``data_root`` are made absolute so the run folder printed in artifacts is unambiguous.
    """
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(named))
    if clash:
        raise ValueError(f"overrides: {clash} are flow parameters; pass them as parameters, not in overrides")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"overrides: unknown RunConfig field(s) {unknown}; known: {sorted(known)}")
    values = {**named, **overrides}
    for key in ("runs_dir", "data_root"):
        if values.get(key) is not None:
            values[key] = str(Path(values[key]).expanduser().resolve())
    return RunConfig.from_dict(values)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "-".join(parts).lower()
    key = re.sub(r"[^a-z0-9-]+", "-", key)
    return re.sub(r"-{2,}", "-", key).strip("-") or "run"


def metrics_table(metrics: pd.DataFrame, profiles: list[pd.DataFrame] | None = None) -> list[dict[str, Any]]:
    """Rows for the table artifact: one per round, provenance columns dropped, stage seconds added."""
    df = metrics.drop(columns=[c for c in _HIDDEN_COLUMNS if c in metrics.columns])
    frames = [p for p in (profiles or []) if p is not None and len(p)]
    if frames and "round" in df.columns:
        prof = pd.concat(frames, ignore_index=True)
        wide = prof.pivot_table(index="round", columns="stage", values="seconds", aggfunc="sum")
        wide.columns = [f"seconds_{c}" for c in wide.columns]
        df = df.merge(wide.reset_index(), on="round", how="left")
    df = df.astype(object).where(pd.notna(df), None)
    return df.to_dict("records")


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_summary(cfg: RunConfig, records: list[dict[str, Any]], skipped_rounds: list[int],
                     title: str = "Cluster-Contrast run") -> str:
    """A short Markdown report: where the outputs are and the metrics of every round."""
    run_dir = cfg.run_dir
    lines = [
        f"# {title} `{cfg.name}`",
        "",
        f"- dataset: `{cfg.dataset}` at `{cfg.data_root}`",
        f"- backbone: `{cfg.backbone}`, rounds: {cfg.rounds}, clustering: `{cfg.cluster_method}` (eps {cfg.eps}), "
        f"ISE: {cfg.use_ise}, batch P x K = {cfg.p} x {cfg.k}, iters {cfg.iters}, seed {cfg.seed}",
        f"- run folder: `{run_dir}`",
        f"- all-round metrics: `{run_dir / 'metrics.parquet'}`",
        f"- images table: `{run_dir / 'images.parquet'}`; configuration: `{run_dir / 'config.json'}`",
        "- per round: `round_NNN/{features, pseudo_labels, ise_plan, train_log, metrics, profile}.parquet` "
        "and `checkpoint.pt`",
        f"- HTML report: `{run_dir / 'report.html'}` (rebuild: `reid report {run_dir}`)",
        "",
    ]
    if skipped_rounds:
        lines += [f"**Warning:** training skipped in round(s) {skipped_rounds}: clustering found fewer than "
                  "2 clusters (all outliers). Try a larger `eps`.", ""]
    cols = [c for c in ("round", "mAP", "rank1", "rank5", "mINP", "nmi", "ari", "n_clusters", "n_outliers")
            if any(c in r for r in records)]
    if records and cols:
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in records:
            lines.append("| " + " | ".join(fmt_value(r.get(c)) for c in cols) + " |")
    lines += ["", "Open any stage with pandas: "
              f"`pd.read_parquet('{run_dir / 'metrics.parquet'}')`"]
    return "\n".join(lines)


def publish_run_artifacts(cfg: RunConfig, metrics_path: str | Path, skipped_rounds: list[int],
                          progress_id: str | None = None) -> list[dict[str, Any]]:
    """The end of every training flow: metrics table + markdown summary artifacts, progress at 100%."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact, update_progress_artifact

    from reid_core.pipeline import loop

    key = artifact_key(cfg.name)
    metrics = pd.read_parquet(metrics_path)
    profiles = [pd.read_parquet(loop.round_paths(cfg, r)["profile"]) for r in range(1, cfg.rounds + 1)
                if loop.round_paths(cfg, r)["profile"].exists()]
    records = metrics_table(metrics, profiles)
    create_table_artifact(records, key=f"{key}-metrics", description=f"metrics per round of {cfg.name}")
    create_markdown_artifact(markdown_summary(cfg, records, skipped_rounds), key=f"{key}-summary",
                             description=f"where the outputs of {cfg.name} are")
    from flows._report import publish_report

    publish_report(cfg, key)
    if progress_id is not None:
        update_progress_artifact(artifact_id=progress_id, progress=100.0)
    return records


def begin_run(cfg: RunConfig, progress: bool, unit: str = "rounds") -> tuple[dict[str, Any], str, Path]:
    """The start of every training flow: run folder + config.json, a progress artifact, the image
    index and the round-0 evaluation. Returns ``(cfg_dict, progress_artifact_id, images_path)``."""
    from prefect.artifacts import create_progress_artifact
    from prefect.logging import get_run_logger

    from reid_core.pipeline import loop
    from reid_core.pipeline.fork import read_fork
    from tasks import evaluate, index_images

    from flows._server_guard import guard_temporary_server

    guard_temporary_server()  # a SIGKILLed flow must not leave its temporary Prefect server running
    cfg_dict = cfg.to_dict()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    loop.write_config(cfg)
    get_run_logger().info("run folder: %s", cfg.run_dir)
    progress_id = str(create_progress_artifact(progress=0.0, key=f"{artifact_key(cfg.name)}-progress",
                                               description=f"{unit} done of {cfg.name}"))
    images = index_images(cfg.dataset, cfg.data_root, cfg.run_dir / "images.parquet")
    p0 = loop.round_paths(cfg, 0)
    p0["metrics"].parent.mkdir(parents=True, exist_ok=True)
    if read_fork(cfg.run_dir) is None:  # a fork's round 0 is its parent's (reid_core.pipeline.fork)
        evaluate(images, None, cfg_dict, 0, p0["metrics"], progress=progress)
    return cfg_dict, progress_id, images


@contextlib.contextmanager
def hold_run_folder(run_dir: str | Path) -> Iterator[Path]:
    """The run-folder lock of a flow: one writer per folder, and the lock record names this flow
    run (``flow_run_id``, ``flow_run_name``), so a holder that died can be matched to its flow run
    (``flows.serve`` marks such runs Crashed). Taking over a dead holder's lock is logged as a
    Prefect warning naming its flow run."""
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    from reid_core.io.lock import run_folder_lock, stale_holder

    info = {"flow_run_id": flow_run.id, "flow_run_name": flow_run.name}
    with run_folder_lock(run_dir, info=info) as path:
        dead = stale_holder(run_dir)
        if dead is not None:
            get_run_logger().warning(
                "%s: took over the lock of pid %s on %s%s, which is gone; finished stages are kept", run_dir,
                dead.get("pid"), dead.get("host"),
                f" (flow run {dead['flow_run_id']})" if dead.get("flow_run_id") else "")
        yield path
