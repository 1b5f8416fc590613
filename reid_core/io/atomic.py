"""Atomic writes: every output is written to a temporary name beside its target and renamed
into place only when complete, so a crash never leaves a half-written file under the real name."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On an exception the temporary file is removed and any existing ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600; the output should get the mode a plain open() would give it
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fault_point(target, tmp_path, "before_rename")
        os.replace(tmp_path, target)
        _fault_point(target, None, "after_rename")
    except OSError as exc:
        if _is_disk_full(exc) and exc.filename != str(target):
            # writers (pyarrow, torch) often drop the file name: give it back, as the one-line error needs it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_umask_guard = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where possible.

    ``os.umask`` can only be read by setting it, which briefly changes it for every thread; Linux
    shows it in ``/proc/self/status`` (``Umask:`` line, since 4.7), so that is tried first. The
    set-and-restore fallback holds a lock so two of our own threads never interleave it.
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_guard:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_parquet(df: pd.DataFrame | pa.Table, path: str | os.PathLike, schema: pa.Schema | None = None) -> Path:
    """Write ``df`` to ``path`` atomically (optionally cast to ``schema``)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if schema is not None:
        table = table.select([f.name for f in schema]).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def append_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Append rows to a Parquet file (read, concatenate, rewrite atomically).

    Used for small logs (metrics, benchmark rows) where a cut-off run must keep finished rows.
    The read-modify-write holds an advisory lock (``<name>.lock`` beside the file), so two processes
    appending to one results file (e.g. two benchmark queues) never lose each other's rows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            old = pd.read_parquet(path)
            df = pd.concat([old, df], ignore_index=True)
        return write_parquet(df, path)


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``lock_path`` (POSIX); elsewhere a no-op."""
    try:
        import fcntl
    except ImportError:  # Windows: single-writer use only
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_parquet(path: str | os.PathLike, required: Iterable[str] = ()) -> pd.DataFrame:
    """Read a Parquet file, failing with a message that names the file and missing columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file does not exist")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        from ..errors import RunFolderDamaged

        raise RunFolderDamaged(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files (``.<name>.*.tmp``) a killed writer left under ``folder``; returns
    how many. Call it only while holding the folder's run lock (no live writer owns them then)."""
    n = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                n += 1
    return n


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or "No space left on device" in str(exc)


#: fault injection for bench/faults.py (off unless the variable is set): ``REID_FAULT_KILL_AT_WRITE=N``
#: SIGKILLs this process at its N-th atomic write; ``REID_FAULT_MODE`` says where: ``mid_write``
#: (the temporary file cut to half its size, as if killed while writing), ``before_rename`` (the
#: temporary file complete) or ``after_rename`` (the file in place, its stage record not yet written).
#: ``stall`` (= ``stall:before_rename``) or ``stall:<where>`` stops there instead of dying, so that an
#: external killer can SIGKILL the whole process tree, or only its parent: the stalled process writes
#: its pid to ``REID_FAULT_STALL_FILE`` (when set), sleeps, and SIGKILLs itself once its parent is
#: gone (a flow run dies with the serve process / worker that started it).
_FAULT_ENV = "REID_FAULT_KILL_AT_WRITE"
_FAULT_MODE_ENV = "REID_FAULT_MODE"
_FAULT_STALL_FILE_ENV = "REID_FAULT_STALL_FILE"
_writes = [0]


def _fault_point(target: Path, tmp: Path | None = None, phase: str = "before_rename") -> None:
    at = os.environ.get(_FAULT_ENV)
    if not at:
        return
    mode = os.environ.get(_FAULT_MODE_ENV, "before_rename")
    stall = mode == "stall" or mode.startswith("stall:")
    where = (mode.partition(":")[2] or "before_rename") if stall else mode
    if where != phase and not (where == "mid_write" and phase == "before_rename"):
        return
    _writes[0] += 1
    if _writes[0] != int(at):
        return
    import signal
    import sys

    if where == "mid_write" and tmp is not None and tmp.exists():
        with open(tmp, "r+b") as fh:
            fh.truncate(tmp.stat().st_size // 2)
    if stall:
        _stall(f"atomic write {_writes[0]} ({where}, {target})")
    print(f"fault: SIGKILL at atomic write {_writes[0]} ({mode}, {target})", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _stall(what: str) -> None:
    """Stop here until killed; die (SIGKILL) as soon as the parent process is gone."""
    import signal
    import sys
    import time

    parent = os.getppid()
    marker = os.environ.get(_FAULT_STALL_FILE_ENV)
    print(f"fault: STALL at {what}, pid {os.getpid()}", file=sys.stderr, flush=True)
    if marker:
        tmp = f"{marker}.{os.getpid()}.part"
        with open(tmp, "w") as fh:
            fh.write(f"{os.getpid()} {parent}\n{what}\n")
        os.replace(tmp, marker)
    while os.getppid() == parent:
        time.sleep(0.1)
    print(f"fault: parent {parent} gone while stalled; SIGKILL", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
