"""flows.serve marks deployment flow runs left Running by a dead process as Crashed at start, which
frees the deployment's concurrency slot for the rerun; runs whose process lives are left alone."""
from __future__ import annotations

import json
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


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.fixture()
def deployment(prefect_harness):
    """A deployment with ``concurrency_limit=1`` (as in prefect.yaml) and a sync client."""
    import uuid

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("cluster-contrast")
        dep_id = client.create_deployment(flow_id, name=f"dead-{uuid.uuid4().hex[:8]}", concurrency_limit=1,
                                          entrypoint="flows/cluster_contrast.py:cluster_contrast")
        yield client, dep_id


def _start(client, dep_id, runs: Path, name: str):
    """A flow run moved to Running through the orchestration rules (it takes the concurrency slot)."""
    from prefect.states import Pending, Running

    run = client.create_flow_run_from_deployment(dep_id, parameters={"name": name, "runs_dir": str(runs)})
    client.set_flow_run_state(run.id, Pending())
    result = client.set_flow_run_state(run.id, Running())
    return run, result.state


def test_running_run_with_a_dead_lock_holder_is_marked_crashed(deployment, tmp_path):
    from prefect.client.schemas.objects import StateType

    from flows.serve import mark_dead_flow_runs

    client, dep_id = deployment
    runs = tmp_path / "runs"
    dead, state = _start(client, dep_id, runs, "dead")
    assert state.type == StateType.RUNNING
    # its process was SIGKILLed holding the run folder: the lock file names it and a dead pid
    (runs / "dead").mkdir(parents=True)
    (runs / "dead" / ".run.lock").write_text(json.dumps({
        "pid": _dead_pid(), "host": socket.gethostname(), "started": "x", "command": "c", "flow_run_id": str(dead.id)}))
    # the deployment's slot is taken: a second run cannot start
    blocked, state = _start(client, dep_id, runs, "next")
    assert state.type != StateType.RUNNING, state

    marked = mark_dead_flow_runs(client, host_processes={})
    assert [m["id"] for m in marked] == [str(dead.id)]
    assert "pid" in marked[0]["reason"] and marked[0]["state"] == "Running"
    after = client.read_flow_run(dead.id)
    assert after.state.type == StateType.CRASHED and "flows.serve" in after.state.message
    # the slot is free again: the blocked run now starts
    from prefect.states import Completed, Pending, Running

    client.set_flow_run_state(blocked.id, Pending(), force=True)
    assert client.set_flow_run_state(blocked.id, Running()).state.type == StateType.RUNNING
    # and a second pass has nothing left to mark while that run's process lives
    assert mark_dead_flow_runs(client, host_processes={str(blocked.id): [os.getpid()]}) == []
    client.set_flow_run_state(blocked.id, Completed(), force=True)


def test_runs_with_a_live_process_are_left_alone(deployment, tmp_path):
    from prefect.client.schemas.objects import StateType
    from prefect.states import Running

    from flows.serve import live_flow_run_processes, mark_dead_flow_runs, why_dead

    client, dep_id = deployment
    runs = tmp_path / "runs"
    mk = lambda name: client.create_flow_run_from_deployment(dep_id, parameters={"name": name, "runs_dir": str(runs)})
    held, by_env, orphan = mk("held"), mk("by-env"), mk("orphan")
    for run in (held, by_env, orphan):
        client.set_flow_run_state(run.id, Running(), force=True)
    # "held": a live process holds its run folder's lock and names it; "by-env": a live process carries
    # its PREFECT__FLOW_RUN_ID (as Prefect's runner starts it) but has not taken the lock yet
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(runs / "held")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**env, "PREFECT__FLOW_RUN_ID": str(held.id)})
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.readline()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**env, "PREFECT__FLOW_RUN_ID": str(by_env.id)})
    try:
        assert holder.stdout.readline().strip() == "locked" and sleeper.stdout.readline().strip() == "up"
        live = live_flow_run_processes()
        assert live[str(by_env.id)] == [sleeper.pid] and holder.pid in live[str(held.id)]
        marked = mark_dead_flow_runs(client)
        assert [m["id"] for m in marked if m["id"] in {str(held.id), str(by_env.id), str(orphan.id)}] == [str(orphan.id)]
        assert client.read_flow_run(held.id).state.type == StateType.RUNNING
        assert client.read_flow_run(by_env.id).state.type == StateType.RUNNING
        assert client.read_flow_run(orphan.id).state.type == StateType.CRASHED
        # the lock alone (no process found by the environment scan) also keeps "held" alive
        params = {"name": "held", "runs_dir": str(runs)}
        assert why_dead(str(held.id), params, {}) is None
        assert why_dead(str(orphan.id), {"name": "orphan", "runs_dir": str(runs)}, {}) is not None
    finally:
        for proc in (holder, sleeper):
            proc.stdin.close()
            proc.wait(timeout=30)
    # both processes are gone now: the next pass marks them
    marked = {m["id"] for m in mark_dead_flow_runs(client)}
    assert {str(held.id), str(by_env.id)} <= marked
