"""Expected errors and how a command line shows them.

The library reports bad input the same way everywhere: an exception whose message starts with the
file or field at fault, then the problem (``"<file or field>: <problem>"``). A command line shows
such an *expected* error as one line (``error: <file or field>: <problem>``) without a traceback;
anything else is a bug and keeps its traceback.

Expected are:

* :class:`ReidError` and its subclasses (raised where the library detects a damaged run folder,
  a run folder in use, a non-finite loss, ...);
* ``ValueError`` / ``OSError`` whose message follows the convention above (the prefix is a path,
  or a field name without spaces such as ``RunConfig.eps``);
* ``OSError`` carrying a ``filename`` (``open()`` of a missing file, a full disk, a denied path).
"""
from __future__ import annotations

import errno
import os
import re

__all__ = ["ReidError", "RunFolderDamaged", "RunFolderLocked", "NonFiniteLossError", "expected_error_message"]


class ReidError(Exception):
    """An expected failure; the message reads ``<file or field>: <problem>``."""


class RunFolderDamaged(ReidError, ValueError):
    """A file of a run folder is unreadable or does not match what its stage recorded."""


class RunFolderLocked(ReidError, RuntimeError):
    """Another live process holds the run folder's lock."""


class NonFiniteLossError(ReidError, FloatingPointError):
    """Training met a NaN or infinite loss; the round is stopped before anything is written.

    ``iteration`` (within the epoch) and ``value`` tell where; the training stage adds the round
    and the checkpoint that stays the latest to the message."""

    def __init__(self, message: str, iteration: int = -1, value: float = float("nan")) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.value = value


_WORKER_WRAPPED = "in DataLoader worker process"
_PREFIX = re.compile(r"^(?P<where>[^\n]+?): (?P<problem>.+)$", re.S)


def _looks_like_where(where: str) -> bool:
    if not where or where != where.strip():
        return False
    if " " not in where:  # a field (RunConfig.eps, split) or a path without spaces
        return True
    return where.startswith((os.sep, ".", "~")) or os.path.exists(where)  # a path with spaces


def expected_error_message(exc: BaseException) -> str | None:
    """``"<file or field>: <problem>"`` for an expected error, ``None`` for a bug (keep the traceback)."""
    if isinstance(exc, ReidError):
        return str(exc)
    if isinstance(exc, OSError) and getattr(exc, "filename", None) is not None:
        problem = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
        if exc.errno == errno.ENOSPC:
            problem += " (free some space and run the command again: finished stages are kept)"
        return f"{os.fsdecode(exc.filename)}: {problem}"
    if isinstance(exc, (ValueError, OSError)):
        text = str(exc).strip()
        if _WORKER_WRAPPED in text:
            # torch re-raises a DataLoader worker's error with the worker's traceback as the message;
            # its last line is "<Type>: <the original message>"
            text = text.splitlines()[-1].split(": ", 1)[-1].strip()
        m = _PREFIX.match(text)
        if m and _looks_like_where(m.group("where")):
            return re.sub(r"\s*\n\s*", " ", text)
    return None
