"""Task: plan Implicit Sample Extension (each cluster's nearest other clusters, lambda range)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import stages
from reid_core.pipeline.config import RunConfig

from ._common import as_config, call_stage, logger


@task(name="plan-ise", task_run_name="plan-ise-r{round_idx}", cache_policy=NONE, persist_result=False)
def plan_ise(
    features_path: str | Path,
    pseudo_labels_path: str | Path,
    cfg: RunConfig | dict[str, Any],
    round_idx: int,
    out_path: str | Path,
) -> Path:
    """ISE inspection table -> ``ise_plan.parquet``."""
    out = call_stage(stages.plan_ise, Path(features_path), Path(pseudo_labels_path), as_config(cfg), round_idx,
                     Path(out_path))
    logger().info("round %d ISE plan: %s", round_idx, out)
    return out
