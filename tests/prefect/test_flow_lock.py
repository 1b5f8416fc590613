"""The flows hold the run-folder lock and name their flow run in it; the evaluate flow refuses a
run folder in use, writing nothing."""
from __future__ import annotations

import os
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


def test_flow_lock_record_names_the_flow_run(prefect_harness, tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    from flows._common import hold_run_folder
    from reid_core.io.lock import read_holder

    @flow(name="lock-probe", persist_result=False)
    def probe(run_dir: str) -> tuple[dict, str]:
        with hold_run_folder(run_dir):
            return read_holder(run_dir), str(flow_run.id)

    record, run_id = probe(str(tmp_path / "r"))
    assert record["pid"] == os.getpid() and record["flow_run_id"] == run_id
    assert record["flow_run_name"]
    assert not (tmp_path / "r" / ".run.lock").exists()


def test_evaluate_flow_refuses_a_run_folder_in_use(prefect_harness, tiny_flow_params, tmp_path):
    from flows.evaluate import evaluate_checkpoint
    from reid_core.errors import RunFolderLocked

    run_dir = tmp_path / "runs" / "busy"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLocked, match=f"{run_dir}: run folder is in use by pid {proc.pid}"):
            evaluate_checkpoint(name="busy", dataset="market1501", data_root=tiny_flow_params["data_root"],
                                runs_dir=str(run_dir.parent), overrides=dict(tiny_flow_params["overrides"]))
        assert sorted(p.name for p in run_dir.iterdir()) == [".run.lock"]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
