"""One self-contained HTML page per run (``reid report runs/<name>``); see :mod:`reid_core.report.html`."""
from .html import build_report, report_summary

__all__ = ["build_report", "report_summary"]
