"""``reid evaluate`` holds the run-folder lock like a training run: a second command on a folder in
use stops at once with one line and exit status 2, writing nothing (the traceback only with
``--verbose``); once the holder ends, the same command works."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HOLD = """
import sys
from reid_core.io.lock import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _reid(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reid_core.cli", *argv], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture()
def held(tmp_path):
    run_dir = tmp_path / "runs" / "ev"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run_dir, proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


def test_evaluate_on_a_folder_in_use_is_one_line_then_works(held, tools_market, tmp_path, capsys):
    from reid_core import cli

    run_dir, proc = held
    argv = ["evaluate", "--name", "ev", "--runs-dir", str(run_dir.parent), "--dataset", "market1501",
            "--data-root", str(tools_market), "--pretrained", "false", "--height", "64", "--width", "32",
            "--device", "cpu", "--bf16", "false", "--num-workers", "0", "--quiet"]
    res = _reid(*argv)  # the user's view: a separate command
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {run_dir}: run folder is in use by pid {proc.pid} on host "
                               f"{socket.gethostname()}"), res.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".run.lock"]  # nothing written beside the lock
    # --verbose keeps the traceback (and the same last line)
    assert cli.main(["--verbose", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "RunFolderLocked" in err
    assert err.rstrip().splitlines()[-1].startswith(f"error: {run_dir}: run folder is in use by pid {proc.pid}")
    # an --out in another folder locks that folder instead, and leaves its temporary-looking files alone
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / ".notes.abc.tmp").write_text("someone else's")
    assert cli.main([*argv, "--out", str(other / "m.parquet")]) == 0
    assert (other / "m.parquet").is_file() and (other / ".notes.abc.tmp").exists()
    assert not (other / ".run.lock").exists()
    # the holder ends: the run folder is free again
    proc.stdin.close()
    proc.wait(timeout=30)
    assert cli.main(argv) == 0
    assert (run_dir / "evaluate.parquet").is_file() and not (run_dir / ".run.lock").exists()


def test_evaluate_takes_the_lock_of_the_folder_it_writes(tools_market, tmp_path, monkeypatch):
    """In process: while ``evaluate`` runs, the lock file names this process; the stage sees it."""
    from reid_core import cli
    from reid_core.io.lock import read_holder
    from reid_core.pipeline import stages

    seen = {}
    real = stages.index_images

    def spy(dataset, data_root, out):
        seen.update(read_holder(Path(out).parent))
        return real(dataset, data_root, out)

    monkeypatch.setattr(stages, "index_images", spy)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "00000000-0000-0000-0000-00000000abcd")
    runs = tmp_path / "runs"
    rc = cli.main(["evaluate", "--name", "ev2", "--runs-dir", str(runs), "--dataset", "market1501", "--data-root",
                   str(tools_market), "--pretrained", "false", "--height", "64", "--width", "32", "--device", "cpu",
                   "--bf16", "false", "--num-workers", "0", "--quiet"])
    assert rc == 0
    assert seen["pid"] == os.getpid() and seen["flow_run_id"].endswith("abcd")
    assert not (runs / "ev2" / ".run.lock").exists()
