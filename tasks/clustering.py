"""Task: cluster features into pseudo labels (k-reciprocal Jaccard + DBSCAN/HDBSCAN)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import stages
from reid_core.pipeline.config import RunConfig

from ._common import as_config, call_stage, logger


@task(name="build-pseudo-labels", task_run_name="pseudo-labels-r{round_idx}", cache_policy=NONE, persist_result=False)
def build_pseudo_labels(
    features_path: str | Path,
    cfg: RunConfig | dict[str, Any],
    round_idx: int,
    out_path: str | Path,
    progress: bool = False,
    images_path: str | Path | None = None,
    previous_labels_path: str | Path | None = None,
) -> Path:
    """Pseudo labels (-1 = outlier) -> ``pseudo_labels.parquet``; cluster counts go to its sidecar.
    ``images_path`` gives the camera ids when ``camera_norm`` is on; ``previous_labels_path`` (last
    round's labels) lets the stage warn when the clustering collapses between rounds.

    A round where every sample is an outlier is not an error: the stage warns
    (``AllOutliersWarning``, re-logged here) and the training stage then skips the round.
    """
    out = call_stage(stages.build_pseudo_labels, Path(features_path), as_config(cfg), round_idx, Path(out_path),
                     progress=progress, images_path=Path(images_path) if images_path is not None else None,
                     previous_labels_path=Path(previous_labels_path) if previous_labels_path is not None else None)
    logger().info("round %d pseudo labels: %s", round_idx, out)
    return out


@task(name="ground-truth-labels", task_run_name="ground-truth-labels-r{round_idx}", cache_policy=NONE,
      persist_result=False)
def ground_truth_labels(images_path: str | Path, out_path: str | Path, round_idx: int = 0) -> Path:
    """Supervised mode only (the upper bound): labels from the ground-truth pids of the train split."""
    out = call_stage(stages.ground_truth_labels, Path(images_path), Path(out_path), round_idx)
    logger().info("round %d ground-truth labels: %s", round_idx, out)
    return out
