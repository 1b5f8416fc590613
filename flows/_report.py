"""The run report as a Prefect artifact: a link to ``<run>/report.html`` with the headline numbers."""
from __future__ import annotations

from pathlib import Path

from reid_core.pipeline.config import RunConfig


def publish_report(cfg: RunConfig, key: str) -> Path | None:
    """Write the report (task ``write-report``) and publish a link artifact ``<key>-report``.

    A report that fails to build is logged as a warning and publishes nothing: the run's own
    outputs are complete by then, and ``reid report <run_dir>`` rebuilds the page at any time.
    """
    from prefect.artifacts import create_link_artifact
    from prefect.logging import get_run_logger

    from reid_core.report import report_summary
    from tasks.report import write_report

    try:
        path = Path(write_report(str(cfg.run_dir)))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        get_run_logger().warning("run report not written (%s: %s); rebuild it with `reid report %s`",
                                 type(exc).__name__, exc, cfg.run_dir)
        return None
    s = report_summary(cfg.run_dir)
    headline = ", ".join(f"{label} {100 * s[k]:.1f}%" for k, label in (("mAP", "mAP"), ("rank1", "rank-1")) if k in s)
    create_link_artifact(link=path.resolve().as_uri(), link_text=f"HTML report of {cfg.name}", key=f"{key}-report",
                         description=f"{cfg.name}: {headline} after {s.get('rounds', 0)} round(s); open {path}")
    return path
