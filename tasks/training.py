"""Task: one training epoch (round) against the cluster memory (+ ISE when enabled)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import stages
from reid_core.pipeline.config import RunConfig

from ._common import as_config, call_stage, logger, opt_path, progress_callback


@task(name="train-epoch", task_run_name="train-epoch-r{round_idx}", cache_policy=NONE, persist_result=False)
def train_epoch(
    images_path: str | Path,
    pseudo_labels_path: str | Path,
    features_path: str | Path | None,
    checkpoint_in: str | Path | None,
    cfg: RunConfig | dict[str, Any],
    round_idx: int,
    out_checkpoint: str | Path,
    out_log: str | Path,
    progress_artifact_id: str | None = None,
    progress_span: tuple[float, float] = (0.0, 100.0),
    progress: bool = False,
) -> tuple[Path, Path]:
    """Train from ``checkpoint_in`` on the pseudo labels -> (``checkpoint.pt``, ``train_log.parquet``).

    ``features_path`` is ``None`` in supervised mode (labels from :func:`ground_truth_labels`).

    ``progress_artifact_id`` (optional): a Prefect progress artifact moved across ``progress_span``
    (percent) while the epoch runs, through the stage's ``on_progress`` callback.
    """
    ckpt, log = call_stage(
        stages.train_epoch_stage, Path(images_path), Path(pseudo_labels_path), opt_path(features_path),
        opt_path(checkpoint_in), as_config(cfg), round_idx, Path(out_checkpoint), Path(out_log),
        on_progress=progress_callback(progress_artifact_id, *progress_span), progress=progress,
    )
    logger().info("round %d checkpoint: %s, log: %s", round_idx, ckpt, log)
    return ckpt, log
