"""Task: evaluate a checkpoint on query/gallery -> one-row ``metrics.parquet``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import stages
from reid_core.pipeline.config import RunConfig

from ._common import IO_RETRIES, IO_RETRY_DELAYS, as_config, call_stage, logger, opt_path, retry_on_os_error


@task(
    name="evaluate",
    task_run_name="evaluate-r{round_idx}",
    cache_policy=NONE,
    persist_result=False,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_os_error,
)
def evaluate(
    images_path: str | Path,
    checkpoint_path: str | Path | None,
    cfg: RunConfig | dict[str, Any],
    round_idx: int,
    out_path: str | Path,
    pseudo_labels_path: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """mAP / CMC / mINP of ``checkpoint_path`` (``None`` = starting model); pseudo-label quality
    (NMI, ARI, pair precision/recall) when ``pseudo_labels_path`` is given; ``extra`` columns."""
    out = call_stage(
        stages.evaluate_stage, Path(images_path), opt_path(checkpoint_path), as_config(cfg), round_idx,
        Path(out_path), pseudo_labels_path=opt_path(pseudo_labels_path), extra=dict(extra or {}), progress=progress,
    )
    logger().info("round %d metrics: %s", round_idx, out)
    return out
