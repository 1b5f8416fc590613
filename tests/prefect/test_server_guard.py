"""A SIGKILLed flow process must not leave its temporary Prefect server running: the watchdog of
flows/_server_guard.py stops it. A stand-in "server" (a sleeping Python process whose command line
carries the marker) keeps the test fast."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FLOW_PROCESS = """
import subprocess, sys, time
from flows._server_guard import spawn_watchdog
server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "fake-server-marker"])
spawn_watchdog(server.pid, marker="fake-server-marker")
print(server.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers: check /proc where there is one
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_server_is_stopped_when_the_flow_process_is_killed():
    flow = subprocess.Popen([sys.executable, "-c", FLOW_PROCESS], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    server = int(flow.stdout.readline())
    try:
        time.sleep(0.7)  # the watchdog is polling
        assert _alive(server)
        flow.send_signal(signal.SIGKILL)
        flow.wait(timeout=10)
        assert _wait_gone(server, 10), "the temporary server outlived its flow process"
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)


def test_watchdog_leaves_when_the_server_stops_normally():
    from flows._server_guard import spawn_watchdog

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)", "fake-server-marker"])
    watchdog = spawn_watchdog(server.pid, marker="fake-server-marker")
    server.wait(timeout=10)
    assert watchdog.wait(timeout=10) == 0
