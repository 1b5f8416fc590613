"""One writer per run folder: a lock file ``<run>/.run.lock`` that names its holder.

Two runs writing one folder would interleave files of different configurations (and the content-hash
skip would then trust them), so every run (plain loop, CLI, Prefect flow) holds the folder's lock
from start to end:

* the lock file holds ``{"pid", "host", "started", "command"}`` of the holder, plus
  ``flow_run_id`` when the run is a Prefect flow run (passed by the flow, or read from Prefect's
  ``PREFECT__FLOW_RUN_ID`` variable of a deployment run's process; no Prefect import here), so a
  dead holder can be matched to the flow run that still shows as Running;
* the lock itself is an exclusive ``flock`` on that file, which the kernel drops when the holder
  dies (even by SIGKILL), so a dead holder never blocks the next run;
* a second run while the holder lives fails with :class:`~reid_core.errors.RunFolderLocked`
  naming the folder, the holder's pid and host;
* a lock file left behind by a dead holder (its ``flock`` is free; on this host its pid is gone) is
  taken over with a warning. A lock file written on another host whose holder cannot be checked
  from here is refused, with the command to remove it. The dead holder's record is remembered:
  :func:`stale_holder` returns it for the rest of the process, and the new lock record keeps it
  under ``took_over``.

Locks are re-entrant inside one process (a flow that calls the plain loop does not lock itself out).
Taking the lock also deletes the temporary files (``.<name>.*.tmp``) that a killed writer left in
the folder: with the lock held, no live writer owns them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import RunFolderLocked

log = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"

_held: dict[str, list[Any]] = {}  # resolved run dir -> [fd, depth]
_held_guard = threading.Lock()
_stale: dict[str, dict[str, Any]] = {}  # resolved run dir -> record of the dead holder we replaced

#: set by Prefect in the process of a deployment's flow run
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK_NAME


def read_holder(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The holder recorded in the lock file (``{}`` when there is none or it is unreadable)."""
    try:
        return json.loads(lock_path(run_dir).read_text())
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the dead holder whose lock this process took over on ``run_dir`` when it last
    acquired it (``None`` when the lock was free then)."""
    return _stale.get(str(Path(run_dir).resolve()))


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its name yet"
    flow_run = f", Prefect flow run {holder['flow_run_id']}" if holder.get("flow_run_id") else ""
    return (f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')}, "
            f"command: {holder.get('command')}{flow_run})")


def _try_flock(fd: int) -> str:
    """``"locked"``, ``"busy"`` (another open file holds it) or ``"unsupported"`` (no flock here)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): rely on the pid record alone
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "locked"
    except BlockingIOError:
        return "busy"
    except OSError:  # ENOLCK / EOPNOTSUPP: a network file system without locks
        return "unsupported"


def _acquire(run_dir: Path, info: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | None]:
    path = lock_path(run_dir)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": " ".join(sys.argv)[:300]}
    if os.environ.get(FLOW_RUN_ENV):
        me["flow_run_id"] = os.environ[FLOW_RUN_ENV]
    me.update({k: v for k, v in (info or {}).items() if v is not None})
    stale = None
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        state = _try_flock(fd)
        holder = read_holder(run_dir) if state != "locked" else {}
        if state == "unsupported" and holder and holder.get("pid") != os.getpid() and (
                holder.get("host") != me["host"] or pid_alive(int(holder.get("pid", -1)))):
            log.warning("%s: this file system has no flock; trusting the pid record of the lock file", run_dir)
            state = "busy"
        if state == "busy":
            os.close(fd)
            raise RunFolderLocked(f"{run_dir}: run folder is in use by {_describe(holder)}; wait for it to end "
                                  f"or use another run name")
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our flock: retry
            os.close(fd)
            continue
        holder = read_holder(run_dir)
        if holder and holder.get("pid") != os.getpid():
            if holder.get("host") == me["host"] and not pid_alive(int(holder.get("pid", -1))):
                log.warning("%s: taking over a stale lock of %s (that process is gone)", run_dir, _describe(holder))
                stale = holder
            elif holder.get("host") == me["host"]:
                # alive but not holding the flock: its pid was reused by an unrelated process
                log.warning("%s: taking over a lock of %s that no process holds", run_dir, _describe(holder))
                stale = holder
            else:
                os.close(fd)
                raise RunFolderLocked(f"{run_dir}: lock file names {_describe(holder)}, which cannot be checked "
                                      f"from host {me['host']}; if that run has ended, remove {path}")
        if stale is not None:
            me["took_over"] = {k: v for k, v in stale.items() if k != "took_over"}
        data = json.dumps(me).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return fd, stale
    raise RunFolderLocked(f"{run_dir}: could not take the run-folder lock {path} (it keeps changing)")


@contextlib.contextmanager
def run_folder_lock(run_dir: str | os.PathLike, info: dict[str, Any] | None = None,
                    remove_temporaries: bool = True) -> Iterator[Path]:
    """Hold the run folder's lock for the ``with`` block (see the module docstring).

    ``info`` adds fields to the holder's record (the Prefect flows pass ``flow_run_id`` and
    ``flow_run_name``). ``remove_temporaries=False`` leaves ``.<name>.*.tmp`` files alone, for a
    folder that is not a run folder (``reid evaluate --out`` somewhere else), where such files may
    belong to other programs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            fd, stale = _acquire(run_dir, info)
            _held[key] = [fd, 1]
            _stale.pop(key, None)  # remembered from this acquisition on, not from an earlier one
            if stale is not None:
                _stale[key] = stale
            if remove_temporaries:
                from .atomic import remove_stale_temporaries

                removed = remove_stale_temporaries(run_dir)  # ours now: what a killed writer left is garbage
                if removed:
                    log.warning("%s: removed %d temporary file(s) left by an interrupted run", run_dir, removed)
    try:
        yield lock_path(run_dir)
    finally:
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path(run_dir))  # unlink while still holding the flock
                os.close(entry[0])
