"""Shared helpers for the Prefect task wrappers (kept tiny on purpose).

Design choices that hold for every task in this package:

* ``cache_policy=NONE`` and ``persist_result=False``: each ``reid_core.pipeline.stages`` function
  already skips itself when its outputs exist and its sidecar digest (input-file *contents* +
  parameters) matches. A Prefect result cache keyed on the task inputs would instead return the
  *paths* of a previous run even after those files were deleted or their inputs changed, so
  Prefect's cache is switched off and the stage digest is the single source of truth.
* Retries only on tasks whose first job is to open the dataset itself (``index_images``,
  ``evaluate``), and only for ``OSError`` (a flaky network mount, a file briefly locked). A bad input
  (``ValueError`` naming the file) or a compute failure is deterministic: retrying would only repeat
  minutes of work. Any failed run is resumed by running the flow again: finished stages are skipped.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable
from uuid import UUID

from prefect.logging import get_run_logger

from reid_core.pipeline.config import RunConfig

#: retry settings for I/O tasks
IO_RETRIES = 2
IO_RETRY_DELAYS = [2, 10]


def retry_on_os_error(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` for I/O tasks: retry transient file-system errors only.

    ``FileNotFoundError`` is an ``OSError`` too, but a missing file does not appear by waiting, so
    it is not retried; neither is any other exception type.
    """
    try:
        state.result()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


def as_config(cfg: RunConfig | dict[str, Any]) -> RunConfig:
    """Accept either a ``RunConfig`` or its ``to_dict()`` form (plain JSON values)."""
    if isinstance(cfg, RunConfig):
        return cfg
    return RunConfig.from_dict(dict(cfg))


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a Prefect run; a module logger when called as ``task.fn`` alone."""
    try:
        return get_run_logger()
    except Exception:  # MissingContextError outside a run
        return logging.getLogger("tasks")


def opt_path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def progress_callback(
    artifact_id: str | None, start: float, end: float, min_interval_s: float = 2.0
) -> Callable[[float], None] | None:
    """A ``fraction -> None`` callback that moves a Prefect progress artifact from ``start`` to
    ``end`` percent, at most once every ``min_interval_s`` seconds (plus the final 100 %).

    Returns ``None`` when there is no artifact (e.g. a task called as ``task.fn`` in a unit test).
    A failed update is logged and ignored: progress display must never kill a training run.
    """
    if artifact_id is None:
        return None
    from prefect.artifacts import update_progress_artifact

    last = [float("-inf")]

    def on_progress(fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - last[0] < min_interval_s:
            return
        last[0] = now
        value = start + (end - start) * min(max(float(fraction), 0.0), 1.0)
        try:
            update_progress_artifact(artifact_id=UUID(str(artifact_id)), progress=value)
        except Exception as exc:  # pragma: no cover - network hiccup
            logger().warning("could not update progress artifact: %s", exc)

    return on_progress


def call_stage(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a stage function; re-emit the warnings it raised (``UserWarning`` subclasses such as
    ``AllOutliersWarning``) on the run logger so they show in the Prefect UI, then return the
    stage's result unchanged. Other categories (``ResourceWarning`` from libraries, deprecations)
    go to the debug log only."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = fn(*args, **kwargs)
    log = logger()
    for w in caught:
        level = logging.WARNING if issubclass(w.category, UserWarning) and not issubclass(
            w.category, DeprecationWarning) else logging.DEBUG
        log.log(level, "%s: %s", w.category.__name__, w.message)
    return result
