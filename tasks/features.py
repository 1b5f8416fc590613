"""Task: extract L2-normalised features with the round's starting checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import stages
from reid_core.pipeline.config import RunConfig

from ._common import as_config, call_stage, logger, opt_path


@task(name="extract-features", task_run_name="extract-features-r{round_idx}", cache_policy=NONE, persist_result=False)
def extract_features(
    images_path: str | Path,
    checkpoint_path: str | Path | None,
    cfg: RunConfig | dict[str, Any],
    round_idx: int,
    out_path: str | Path,
    splits: Sequence[str] = ("train",),
    progress: bool = False,
) -> Path:
    """Features of ``splits`` with ``checkpoint_path`` (``None`` = starting model) -> ``features.parquet``."""
    out = call_stage(
        stages.extract_features_stage, Path(images_path), opt_path(checkpoint_path), as_config(cfg), round_idx,
        Path(out_path), splits=tuple(splits), progress=progress,
    )
    logger().info("round %d features: %s", round_idx, out)
    return out


@task(name="extract-features-shard", task_run_name="extract-features-r{round_idx}-shard{shard}of{n_shards}",
      cache_policy=NONE, persist_result=False)
def extract_features_shard(
    images_path: str | Path,
    checkpoint_path: str | Path | None,
    cfg: RunConfig | dict[str, Any],
    round_idx: int,
    shard: int,
    n_shards: int,
    out_path: str | Path,
    splits: Sequence[str] = ("train",),
) -> Path:
    """Shard ``shard`` of ``n_shards`` of the extraction -> its own part file (resumed on its own).
    Runs on whichever worker the task runner picks: the run folder must be on shared storage."""
    return call_stage(
        stages.extract_features_stage, Path(images_path), opt_path(checkpoint_path), as_config(cfg), round_idx,
        Path(out_path), splits=tuple(splits), progress=False, shard=(int(shard), int(n_shards)),
    )


@task(name="merge-features", task_run_name="merge-features-r{round_idx}", cache_policy=NONE, persist_result=False)
def merge_features(part_paths: Sequence[str | Path], round_idx: int, out_path: str | Path) -> Path:
    """Join the shards' parts, in shard order, into ``features.parquet``."""
    out = call_stage(stages.merge_feature_parts, [Path(p) for p in part_paths], round_idx, Path(out_path))
    logger().info("round %d features (%d parts): %s", round_idx, len(part_paths), out)
    return out
