"""Stop Prefect's temporary API server when the flow process that started it dies.

Without ``PREFECT_API_URL``, running a flow starts a temporary server (``uvicorn`` in a child
process) and stops it at interpreter exit (``atexit``). A flow process killed with SIGKILL (the OOM
killer, ``kill -9``, a job scheduler's hard limit) never runs ``atexit``, and the server lives on,
orphaned. :func:`guard_temporary_server` starts, once per server, a tiny watchdog process (plain
Python, no imports beyond ``os``/``time``) that polls its parent; when the parent is gone it stops the
server (SIGTERM, then SIGKILL) and exits. When the server stops normally, the watchdog exits too.

A dedicated server (``prefect server start`` or ``python -m flows.serve``, with ``PREFECT_API_URL``
set) is not a child of the flow process and is left alone.
"""
from __future__ import annotations

import os
import subprocess
import sys

_WATCHDOG = r"""
import os, signal, sys, time
parent, server, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

def is_server(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return marker.encode() in fh.read()
    except OSError:
        return alive(pid)  # no /proc: trust the pid

while True:
    if not alive(server) or not is_server(server):
        sys.exit(0)  # stopped normally
    if os.getppid() != parent or not alive(parent):
        break
    time.sleep(0.5)
os.kill(server, signal.SIGTERM)
for _ in range(20):
    time.sleep(0.25)
    if not alive(server) or not is_server(server):
        sys.exit(0)
os.kill(server, signal.SIGKILL)
"""

#: a word of the temporary server's command line (``prefect.server.api.server:create_app``)
SERVER_MARKER = "prefect.server.api.server:create_app"

_guarded: set[int] = set()


def spawn_watchdog(server_pid: int, marker: str = SERVER_MARKER) -> subprocess.Popen:
    """Start the watchdog of ``server_pid`` for this process (see the module docstring)."""
    return subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(server_pid), marker],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def guard_temporary_server() -> list[int]:
    """Watch every temporary Prefect server this process started; returns their pids."""
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # pragma: no cover - another Prefect layout: nothing to guard
        return []
    pids = []
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        proc = getattr(server, "server_process", None)
        if proc is None or proc.poll() is not None:
            continue
        pids.append(proc.pid)
        if proc.pid not in _guarded:
            _guarded.add(proc.pid)
            spawn_watchdog(proc.pid)
    return pids
