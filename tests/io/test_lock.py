"""One writer per run folder, checked with two real processes."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reid_core import cli
from reid_core.errors import RunFolderLocked
from reid_core.io.lock import lock_path, read_holder, run_folder_lock
from reid_core.pipeline import RunConfig, run_pipeline

REPO = Path(__file__).resolve().parents[2]

HOLD = """
import sys
from reid_core.io.lock import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'runs' / 'r'`` until the test ends."""
    run_dir = tmp_path / "runs" / "r"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    yield run_dir, proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_second_run_is_refused_naming_folder_pid_and_host(holder, tmp_path, capsys):
    run_dir, proc = holder
    with pytest.raises(RunFolderLocked) as err:
        with run_folder_lock(run_dir):
            pass
    msg = str(err.value)
    assert str(run_dir) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
    # the plain loop refuses before writing anything
    cfg = RunConfig(name="r", runs_dir=str(tmp_path / "runs"), dataset="market1501", data_root=str(tmp_path / "no"))
    with pytest.raises(RunFolderLocked):
        run_pipeline(cfg, progress=False)
    assert not (run_dir / "config.json").exists()
    # the command line: one line, exit status 2
    assert cli.main(["run", "--name", "r", "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith(f"error: {run_dir}: run folder is in use by pid {proc.pid}") and "Traceback" not in err_text
    # the holder ends: the folder is free again and the lock file is gone
    proc.stdin.close()
    proc.wait(timeout=30)
    assert not lock_path(run_dir).exists()
    with run_folder_lock(run_dir):
        assert read_holder(run_dir)["pid"] == os.getpid()
    assert not lock_path(run_dir).exists()


def test_stale_lock_of_a_killed_holder_is_taken_over(tmp_path, caplog):
    run_dir = tmp_path / "r"
    code = HOLD.replace('sys.stdin.readline()', 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)')
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    stale = read_holder(run_dir)
    assert stale["pid"] != os.getpid() and lock_path(run_dir).exists()
    with caplog.at_level(logging.WARNING, logger="reid_core.io.lock"):
        with run_folder_lock(run_dir):
            assert read_holder(run_dir)["pid"] == os.getpid()
    assert any("stale lock" in r.message and str(stale["pid"]) in r.message for r in caplog.records)


def test_lock_of_another_host_is_refused_and_reentrant_in_one_process(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    lock_path(run_dir).write_text(json.dumps({"pid": 1234, "host": "elsewhere", "started": "x", "command": "c"}))
    with pytest.raises(RunFolderLocked, match="host elsewhere.*remove"):
        with run_folder_lock(run_dir):
            pass
    lock_path(run_dir).unlink()
    with run_folder_lock(run_dir):
        with run_folder_lock(run_dir):  # the same process: re-entrant
            pass
        assert lock_path(run_dir).exists()
    assert not lock_path(run_dir).exists()


def test_without_flock_the_pid_record_decides(tmp_path, monkeypatch):
    """On a file system without flock (some network mounts) a live holder's record still refuses."""
    from reid_core.io import lock

    monkeypatch.setattr(lock, "_try_flock", lambda fd: "unsupported")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    record = {"host": socket.gethostname(), "started": "x", "command": "c"}
    lock_path(run_dir).write_text(json.dumps({**record, "pid": os.getppid()}))  # alive
    with pytest.raises(RunFolderLocked, match=f"pid {os.getppid()}"):
        with run_folder_lock(run_dir):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(run_dir).write_text(json.dumps({**record, "pid": int(dead.stdout)}))
    with run_folder_lock(run_dir):
        assert read_holder(run_dir)["pid"] == os.getpid()


def test_lock_records_the_flow_run_and_a_dead_holder_is_remembered(tmp_path, caplog, monkeypatch):
    """A deployment's flow-run process has PREFECT__FLOW_RUN_ID: the lock records it, so the run that
    died holding the folder can be matched to its flow run; the next holder remembers the dead one."""
    from reid_core.io.lock import stale_holder

    run_dir = tmp_path / "r"
    code = HOLD.replace('sys.stdin.readline()', 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)')
    dead_id = "11111111-2222-3333-4444-555555555555"
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT__FLOW_RUN_ID": dead_id})
    assert proc.returncode == -signal.SIGKILL
    stale = read_holder(run_dir)
    assert stale["flow_run_id"] == dead_id and not (stale["pid"] == os.getpid())
    assert stale_holder(run_dir) is None  # nothing taken over yet

    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    with caplog.at_level(logging.WARNING, logger="reid_core.io.lock"):
        with run_folder_lock(run_dir, info={"flow_run_id": "new-run", "flow_run_name": None}):
            mine = read_holder(run_dir)
            assert mine["pid"] == os.getpid() and mine["flow_run_id"] == "new-run" and "flow_run_name" not in mine
            assert mine["took_over"]["pid"] == stale["pid"] and mine["took_over"]["flow_run_id"] == dead_id
            assert stale_holder(run_dir)["flow_run_id"] == dead_id
    assert any(f"flow run {dead_id}" in r.message for r in caplog.records)
    assert stale_holder(run_dir)["pid"] == stale["pid"]  # remembered after release
    # the next acquisition found the lock free: nothing stale to report any more
    with run_folder_lock(run_dir):
        assert "took_over" not in read_holder(run_dir) and "flow_run_id" not in read_holder(run_dir)
        assert stale_holder(run_dir) is None


def test_live_holder_names_its_flow_run(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT__FLOW_RUN_ID": "live-flow-run"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLocked, match=f"pid {proc.pid} .*Prefect flow run live-flow-run"):
            with run_folder_lock(run_dir):
                pass
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
