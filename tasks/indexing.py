"""Task: index the dataset into ``images.parquet``."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from reid_core.pipeline import stages

from ._common import IO_RETRIES, IO_RETRY_DELAYS, call_stage, logger, retry_on_os_error


@task(
    name="index-images",
    task_run_name="index-images",
    cache_policy=NONE,
    persist_result=False,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_os_error,
)
def index_images(dataset: str, data_root: str | Path, out_path: str | Path) -> Path:
    """List the dataset's images (train/query/gallery) into ``out_path`` (``images.parquet``)."""
    out = call_stage(stages.index_images, dataset, Path(data_root), Path(out_path))
    logger().info("images table: %s", out)
    return out
