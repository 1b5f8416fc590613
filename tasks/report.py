"""Task: the run's self-contained HTML report (``reid_core.report.build_report``)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from reid_core.report import build_report

from ._common import logger


@task(name="write-report", task_run_name="write-report", cache_policy=NONE, persist_result=False)
def write_report(run_dir: str | Path, progress: bool = False) -> Path:
    """``<run_dir>/report.html``: metrics, clusters, ISE plan, embedding, ranked lists, config."""
    out = build_report(run_dir, progress=progress)
    logger().info("run report: %s", out)
    return out
