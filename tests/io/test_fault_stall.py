"""``REID_FAULT_MODE=stall``: the process stops at the chosen atomic write, says so (pid in
``REID_FAULT_STALL_FILE``) and dies once its parent is SIGKILLed, leaving only a temporary file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

WRITER = """
import sys
import pandas as pd
from reid_core.io.atomic import write_parquet
for i in range(3):
    write_parquet(pd.DataFrame({"a": list(range(1000))}), f"{sys.argv[1]}/f{i}.parquet")
"""
PARENT = """
import subprocess, sys
sys.exit(subprocess.call([sys.executable, "-c", sys.argv[1], sys.argv[2]]))
"""


def test_stall_waits_at_the_write_then_dies_with_its_parent(tmp_path):
    marker = tmp_path / "stalled"
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "REID_FAULT_KILL_AT_WRITE": "2", "REID_FAULT_MODE": "stall:mid_write",
           "REID_FAULT_STALL_FILE": str(marker)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WRITER, str(out)], env=env, cwd=REPO,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert parent.poll() is None, parent.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pid, ppid = map(int, marker.read_text().split("\n")[0].split())
        assert ppid == parent.pid and "atomic write 2 (mid_write" in marker.read_text()
        time.sleep(1.0)
        child = psutil.Process(pid)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE  # stalled, not dead
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["f0.parquet"]
        assert len(list(out.glob(".f1.parquet.*.tmp"))) == 1  # the half-written temporary, never renamed
        os.kill(parent.pid, signal.SIGKILL)  # only the parent
        gone, _ = psutil.wait_procs([child], timeout=30)
        assert gone, "the stalled child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(timeout=30)
    assert not (out / "f1.parquet").exists()
