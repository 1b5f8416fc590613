"""Tasks: per-round stage profile and the run-level metrics table (bookkeeping, no compute)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import loop
from reid_core.pipeline.config import RunConfig

from ._common import as_config, logger


@task(name="write-profile", task_run_name="write-profile-r{round_idx}", cache_policy=NONE, persist_result=False)
def write_profile(cfg: RunConfig | dict[str, Any], round_idx: int) -> Path:
    """Seconds / peak memory of every stage of the round (from the sidecars) -> ``profile.parquet``."""
    c = as_config(cfg)
    out = loop.write_profile(c, round_idx, loop.round_paths(c, round_idx))
    logger().info("round %d profile: %s", round_idx, out)
    return out


@task(name="collect-metrics", task_run_name="collect-metrics", cache_policy=NONE, persist_result=False)
def collect_metrics(cfg: RunConfig | dict[str, Any]) -> Path:
    """Concatenate the rounds' metrics into ``<run>/metrics.parquet`` (with provenance columns)."""
    c = as_config(cfg)
    loop.collect_metrics(c)
    out = c.run_dir / "metrics.parquet"
    logger().info("run metrics: %s", out)
    return out
