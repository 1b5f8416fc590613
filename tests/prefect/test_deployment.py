"""The flow as a real deployment, offline: ``python -m flows.serve`` starts a Prefect server on a
free 127.0.0.1 port (own PREFECT_HOME) and serves the deployments; the test triggers
``prefect deployment run 'cluster-contrast/<name>' --watch`` like a user would, reads back
``metrics.parquet``, then stops the launcher with SIGTERM and checks that every process is gone
(and kills leftovers itself if not, so a failure never leaks processes)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

from flows.serve import REPO_ROOT, free_port, prefect_cli, prefect_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.mark.parametrize("mode", ["serve", "worker"])
def test_deployment_run_end_to_end(mode, tiny_market, tiny_flow_params, tmp_path):
    home, runs = tmp_path / "prefect_home", tmp_path / "runs"
    name = "test" if mode == "serve" else "local"  # worker mode: the names written in prefect.yaml
    port = free_port()
    log_path = tmp_path / "launcher.log"
    env = prefect_env(home, port)
    launcher_cmd = [sys.executable, "-m", "flows.serve", "--mode", mode, "--port", str(port), "--home", str(home),
                    "--no-ui", "--deployment-name", name, "--startup-timeout", "150"]
    known: list[psutil.Process] = []
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(launcher_cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        deadline = time.monotonic() + 170
        while b"READY" not in log_path.read_bytes():
            assert launcher.poll() is None, f"launcher exited early:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"launcher not ready:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.5)
        state = json.loads((home / "serve.json").read_text())
        assert state["api_url"] == f"http://127.0.0.1:{port}/api"
        known = _tree(launcher.pid) + [p for pid in state["pids"].values() if pid for p in _tree(pid)]

        params = {"name": "deployed", "runs_dir": str(runs), **tiny_flow_params}
        cmd = prefect_cli() + ["deployment", "run", f"cluster-contrast/{name}", "--watch", "--watch-timeout", "150",
                               "--watch-interval", "2"]
        for key, value in params.items():
            cmd += ["--param", f"{key}={json.dumps(value)}"]
        res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=200)
        assert res.returncode == 0, f"{res.stdout[-4000:]}\n{res.stderr[-2000:]}\n{log_path.read_text()[-4000:]}"
        assert "Completed" in res.stdout

        metrics = pd.read_parquet(runs / "deployed" / "metrics.parquet")
        assert list(metrics["round"]) == [0, 1, 2]
        assert metrics["mAP"].between(0, 1).all()
    finally:
        known += _tree(launcher.pid)  # before the launcher exits: its children are then orphans
        if (home / "serve.json").exists():
            pids = json.loads((home / "serve.json").read_text())["pids"].values()
            known += [p for pid in pids if pid for p in _tree(pid)]
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
        leftovers = [p for p in known if _alive(p)]
        _kill_all(leftovers)
    assert launcher.returncode is not None
    assert not leftovers, f"processes left running after SIGTERM: {[(p.pid, p.name()) for p in leftovers]}"
    text = log_path.read_text()
    # teardown order: the serve process / worker stops before the server
    assert text.index("stopping serve process" if mode == "serve" else "stopping worker") < \
        text.index("stopping Prefect server")
    assert not (home / "serve.json").exists()


def test_market_presets_match_the_benchmark_methods():
    """Every market1501* deployment of prefect.yaml is served, builds a valid RunConfig; the main
    preset carries exactly the levers, schedule and ISE settings of bench/accuracy.py's
    cc_cam_ise_late method (the issue-11 winner) and the baseline preset none of them."""
    import importlib.util

    from flows._common import build_config
    from flows.serve import REPO_ROOT, market_deployment_names, market_parameters

    names = market_deployment_names()
    assert names == ["market1501", "market1501-cc"]
    for name in names:
        params = market_parameters(name=name)
        cfg = build_config({k: v for k, v in params.items() if k != "overrides"}, params.get("overrides"))
        assert cfg.dataset == "market1501" and cfg.p * cfg.k == 128
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO_ROOT / "bench" / "accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cam = market_parameters(name="market1501")["overrides"]
    assert {k: cam[k] for k in bench.CAM_LEVERS} == bench.CAM_LEVERS
    assert {k: cam[k] for k in bench.WINNER_SCHEDULE} == bench.WINNER_SCHEDULE
    params = market_parameters(name="market1501")
    winner = build_config({k: v for k, v in params.items() if k != "overrides"}, params["overrides"])
    baseline = market_parameters(name="market1501-cc")
    plain = build_config({k: v for k, v in baseline.items() if k != "overrides"}, baseline.get("overrides"))
    assert winner.step_size == bench.WINNER_SCHEDULE["step_size"] != plain.step_size
    # every setting of the bench's winner, ISE from iteration 1,000 included; the baseline has no ISE
    assert bench.WINNER["use_ise"] and bench.WINNER["ise_start"] > 0
    for key, value in bench.WINNER.items():
        assert getattr(winner, key) == value, key
    assert plain.use_ise is False
    assert not set(bench.CAM_LEVERS) & set(market_parameters(name="market1501-cc")["overrides"])
    assert market_parameters(name="market1501")["rounds"] * market_parameters(name="market1501")["iters"] == 1500
