"""One command to run the flows as Prefect deployments on this machine, offline.

    python -m flows.serve                      # server + served deployments; Ctrl-C stops all
    python -m flows.serve --mode worker        # server + process work pool + `prefect deploy` + worker
    python -m flows.serve --run -p rounds=2 -p 'overrides={"pretrained": false}'   # ...and one run

What it does, in order:

1. starts ``prefect server start`` on ``127.0.0.1:<port>`` (embedded SQLite in ``--home``,
   analytics off; the server log goes to ``<home>/server.log``) and waits for ``/api/health``;
2. ``--mode serve`` (default): a child process calls ``prefect.serve`` with the deployments
   ``cluster-contrast/<name>`` and ``evaluate/<name>``; runs execute in subprocesses of it.
   ``--mode worker``: creates the process work pool ``--pool``, runs ``prefect deploy --all`` with
   the repository's ``prefect.yaml`` and starts ``prefect worker start --pool <pool>``;
   Before the runner starts, flow runs of the deployments still shown as Running / Pending whose
   process is gone (a SIGKILLed launcher, worker or flow run never reports its end) are marked
   ``Crashed`` (``python -m flows.serve _mark-dead``): otherwise such a run keeps the deployment's
   concurrency slot (``concurrency_limit: 1``) and the next run waits for its lease to expire;
3. waits until the deployment is registered, prints ``READY ...`` and writes ``<home>/serve.json``
   (API URL, deployment names, process ids);
4. with ``--run``: ``prefect deployment run 'cluster-contrast/<name>' --watch`` with the given
   ``-p key=value`` parameters, then shuts down and exits with that command's status. Without
   ``--run`` it waits until interrupted (Ctrl-C / SIGTERM) or a child dies.

Shutdown always stops the serve process / worker (and their flow-run subprocesses) *before* the
server, so a worker never loses its API mid-run, and it runs on any exit (error, Ctrl-C, SIGTERM).
From another terminal, with ``PREFECT_API_URL=http://127.0.0.1:<port>/api``:

    prefect deployment run 'cluster-contrast/local' -p rounds=2 --watch --watch-timeout 900
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # never listen on other interfaces
REPO_ROOT = Path(__file__).resolve().parents[1]
FLOW_NAMES = ("cluster-contrast", "evaluate", "supervised")


# ----------------------------------------------------------------------------------------------
# helpers (no Prefect import here: the launcher only drives the CLI and the HTTP API)

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((HOST, port)) == 0


def prefect_env(home: Path, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every child: its own PREFECT_HOME, the local API, no analytics, repo on path."""
    env = dict(os.environ if base is None else base)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    })
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def prefect_cli() -> list[str]:
    """The ``prefect`` command of *this* interpreter's environment."""
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def api_get(api_url: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + path, timeout=timeout) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def wait_for(predicate, timeout: float, what: str, procs: list[subprocess.Popen] = (), interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process {p.args[:4]} exited early with status {p.returncode}")
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def stop_process(proc: subprocess.Popen, name: str, grace: float = 20.0) -> None:
    """SIGTERM a child started in its own session, its process group and every descendant;
    SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is not None and not _descendants(proc.pid):
        return
    pids = [proc.pid] + _descendants(proc.pid)
    print(f"[serve] stopping {name} (pid {proc.pid})", flush=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                if pid == proc.pid:
                    os.killpg(pid, sig)  # the child is its session's / group's leader
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            alive = [pid for pid in pids if _alive(pid)]
            if proc.poll() is not None and not alive:
                return
            time.sleep(0.2)
        if sig == signal.SIGTERM:
            print(f"[serve] {name} did not stop within {grace:.0f} s; killing it", flush=True)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _alive(pid: int) -> bool:
    try:
        import psutil

        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def yaml_deployment_names(path: Path = REPO_ROOT / "prefect.yaml") -> set[str]:
    import yaml  # PyYAML ships with Prefect

    with open(path, encoding="utf-8") as fh:
        spec = yaml.safe_load(fh) or {}
    return {d.get("name") for d in spec.get("deployments", []) if d.get("name")}


def market_parameters(path: Path = REPO_ROOT / "prefect.yaml", name: str = "market1501") -> dict | None:
    """Parameters of the deployment ``name`` (``market1501`` by default) in prefect.yaml (one source
    for both modes)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        spec = yaml.safe_load(fh) or {}
    for d in spec.get("deployments", []):
        if d.get("name") == name:
            return dict(d.get("parameters") or {})
    return None


def market_deployment_names(path: Path = REPO_ROOT / "prefect.yaml") -> list[str]:
    """The Market-1501 presets of prefect.yaml: deployments named ``market1501`` or ``market1501-*``."""
    return sorted(n for n in yaml_deployment_names(path) if n == "market1501" or n.startswith("market1501-"))


def deployment_ready(api_url: str, flow_name: str, deployment: str) -> bool:
    quoted = f"/deployments/name/{urllib.parse.quote(flow_name)}/{urllib.parse.quote(deployment)}"
    status, _ = api_get(api_url, quoted)
    return status == 200


# ----------------------------------------------------------------------------------------------
# flow runs left Running by a dead process (runs in a child process: it imports Prefect)

#: set by Prefect's runner and process worker in the environment of a deployment's flow-run process
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"


def live_flow_run_processes() -> dict[str, list[int]]:
    """Flow-run id -> live processes on this host started for it (their ``PREFECT__FLOW_RUN_ID``).
    Processes whose environment cannot be read (other users') are skipped."""
    import psutil

    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            run_id = proc.environ().get(FLOW_RUN_ENV)
        except (psutil.Error, OSError):
            continue
        if run_id:
            found.setdefault(run_id, []).append(proc.pid)
    return found


def _run_folder_of(parameters: dict[str, Any]) -> Path:
    """The run folder a cluster-contrast / supervised / evaluate run writes (relative paths are
    resolved against the repository root, where deployments run)."""
    from reid_core.pipeline.config import RunConfig

    defaults = RunConfig()
    runs_dir = Path(str(parameters.get("runs_dir") or defaults.runs_dir)).expanduser()
    if not runs_dir.is_absolute():
        runs_dir = REPO_ROOT / runs_dir
    return runs_dir / str(parameters.get("name") or defaults.name)


def why_dead(run_id: str, parameters: dict[str, Any], live: dict[str, list[int]]) -> str | None:
    """Why the flow run ``run_id`` has no live process on this host, or ``None`` when it may be alive.

    Alive: a process carries its id (``live``), or the lock of its run folder names it with a holder
    that lives (or on another host, which cannot be checked from here)."""
    import socket

    from reid_core.io.lock import pid_alive, read_holder

    if live.get(run_id):
        return None
    run_dir = _run_folder_of(parameters)
    holder = read_holder(run_dir)
    if holder.get("flow_run_id") == run_id:
        if holder.get("host") != socket.gethostname():
            return None
        if pid_alive(int(holder.get("pid", -1))):
            return None
        return (f"its process (pid {holder.get('pid')}, holder of {run_dir / '.run.lock'}) is gone and no "
                "process on this host runs it")
    return "no process on this host runs it"


def mark_dead_flow_runs(client=None, host_processes: dict[str, list[int]] | None = None) -> list[dict[str, Any]]:
    """Mark ``Crashed`` every deployment flow run in a Running or Pending state whose process is gone
    (see :func:`why_dead`). Returns ``[{"id", "name", "state", "reason"}]`` of the runs marked.

    ``client``: a sync Prefect client (default: ``get_client(sync_client=True)`` of the current
    settings). The server's API listens on 127.0.0.1 only, so every runner of its deployments is on
    this host: a run no process here carries is dead. Crashed is a terminal state, so the run's
    deployment concurrency slot is released."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            return mark_dead_flow_runs(own, host_processes)
    live = live_flow_run_processes() if host_processes is None else host_processes
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])),
        deployment_id=FlowRunFilterDeploymentId(is_null_=False)))
    marked = []
    for run in runs:
        reason = why_dead(str(run.id), dict(run.parameters or {}), live)
        if reason is None:
            continue
        was = run.state.name if run.state else "?"
        client.set_flow_run_state(run.id, Crashed(message=f"marked Crashed by flows.serve at start: {reason} "
                                                          f"(was {was})"), force=True)
        marked.append({"id": str(run.id), "name": run.name, "state": was, "reason": reason})
    return marked


# ----------------------------------------------------------------------------------------------
# child entry point: serve the deployments (this process imports Prefect and the flows)

def serve_deployments(deployment_name: str, limit: int | None) -> None:
    from prefect import serve
    from prefect.deployments.runner import EntrypointType

    from flows.cluster_contrast import cluster_contrast
    from flows.evaluate import evaluate_checkpoint
    from flows.supervised import supervised

    deployments = [
        f.to_deployment(name=deployment_name, entrypoint_type=EntrypointType.MODULE_PATH,
                        tags=["reid", "local"])
        for f in (cluster_contrast, evaluate_checkpoint, supervised)
    ]
    # the Market-1501 presets (bench/accuracy.py) as deployments of their own, as in prefect.yaml
    for name in market_deployment_names():
        deployments.append(cluster_contrast.to_deployment(
            name=name, entrypoint_type=EntrypointType.MODULE_PATH, tags=["reid", "market1501"],
            parameters=market_parameters(name=name)))
    serve(*deployments, limit=limit, print_starting_message=True)


# ----------------------------------------------------------------------------------------------
# launcher

class Launcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(args.home).expanduser().resolve()
        self.port = args.port or free_port()
        self.api_url = f"http://{HOST}:{self.port}/api"
        self.env = prefect_env(self.home, self.port)
        self.server: subprocess.Popen | None = None
        self.runner: subprocess.Popen | None = None  # serve process or worker
        self._logs: list = []

    # -- processes --------------------------------------------------------------------------
    def _spawn(self, cmd: list[str], log_name: str | None) -> subprocess.Popen:
        out = None
        if log_name is not None:
            fh = open(self.home / log_name, "ab")
            self._logs.append(fh)
            out = fh
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)

    def _cli(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = prefect_cli() + list(argv)
        print(f"[serve] $ {' '.join(cmd)}", flush=True)
        res = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, timeout=timeout, text=True, capture_output=True)
        if res.stdout.strip():
            print(res.stdout.rstrip(), flush=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv[:3])}` failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return res

    def start_server(self) -> None:
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} on {HOST} is already in use; choose another with --port")
        cmd = prefect_cli() + ["server", "start", "--host", HOST, "--port", str(self.port), "--analytics-off"]
        if self.args.no_ui:
            cmd.append("--no-ui")
        print(f"[serve] starting Prefect server at http://{HOST}:{self.port} (log: {self.home / 'server.log'})",
              flush=True)
        self.server = self._spawn(cmd, "server.log")
        self._write_state()
        wait_for(lambda: api_get(self.api_url, "/health")[0] == 200, self.args.startup_timeout,
                 "Prefect server", [self.server])

    def mark_dead_runs(self) -> None:
        """Flow runs left Running / Pending by dead processes -> Crashed (before any runner starts,
        so none of them can be one of ours starting up). A failure here is reported, not fatal."""
        cmd = [sys.executable, "-m", "flows.serve", "_mark-dead"]
        try:
            res = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, timeout=180, text=True, capture_output=True)
        except subprocess.TimeoutExpired:
            print("[serve] warning: marking dead flow runs timed out; left as they are", flush=True)
            return
        if res.returncode != 0:
            print(f"[serve] warning: marking dead flow runs failed ({res.returncode}): "
                  f"{(res.stderr.strip().splitlines() or [''])[-1]}", flush=True)
            return
        for line in res.stdout.splitlines():
            if line.startswith("{"):
                run = json.loads(line)
                print(f"[serve] marked flow run {run['name']} ({run['id']}) Crashed: was {run['state']}, "
                      f"{run['reason']}", flush=True)

    def start_runner(self) -> None:
        name = self.args.deployment_name
        if self.args.mode == "serve":
            cmd = [sys.executable, "-m", "flows.serve", "_serve", "--deployment-name", name]
            if self.args.limit:
                cmd += ["--limit", str(self.args.limit)]
            self.runner = self._spawn(cmd, None)
        else:
            pool = self.args.pool
            self._cli("work-pool", "create", pool, "--type", "process", "--overwrite")
            self._cli("deploy", "--all", "--no-prompt", "--prefect-file", str(REPO_ROOT / "prefect.yaml"),
                      timeout=300)
            cmd = prefect_cli() + ["worker", "start", "--pool", pool, "--type", "process",
                                   "--name", f"{pool}-worker", "--install-policy", "never"]
            if self.args.limit:
                cmd += ["--limit", str(self.args.limit)]
            self.runner = self._spawn(cmd, None)
        self._write_state()
        procs = [p for p in (self.server, self.runner) if p is not None]
        for flow_name in FLOW_NAMES:
            wait_for(lambda: deployment_ready(self.api_url, flow_name, name), self.args.startup_timeout,
                     f"deployment {flow_name}/{name}", procs)
        # (a worker that has not polled yet is fine: a run created now waits in the queue for it)

    def _write_state(self) -> None:
        state = {"api_url": self.api_url, "ui_url": f"http://{HOST}:{self.port}", "home": str(self.home),
                 "mode": self.args.mode,
                 "deployments": [f"{f}/{self.args.deployment_name}" for f in FLOW_NAMES],
                 "pids": {"launcher": os.getpid(),
                          "server": self.server.pid if self.server else None,
                          "runner": self.runner.pid if self.runner else None}}
        tmp = self.home / "serve.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.home / "serve.json")

    def run_once(self) -> int:
        cmd = prefect_cli() + ["deployment", "run", f"cluster-contrast/{self.args.deployment_name}", "--watch",
                               "--watch-timeout", str(self.args.watch_timeout)]
        for item in self.args.param:
            cmd += ["--param", item]
        print(f"[serve] $ {' '.join(cmd)}", flush=True)
        return subprocess.run(cmd, cwd=REPO_ROOT, env=self.env).returncode

    def shutdown(self) -> None:
        # order matters: stop whatever executes flow runs first, then the API they report to
        if self.runner is not None:
            stop_process(self.runner, "serve process" if self.args.mode == "serve" else "worker")
        if self.server is not None:
            stop_process(self.server, "Prefect server")
        for fh in self._logs:
            fh.close()
        state = self.home / "serve.json"
        if state.exists():
            state.unlink()

    def main(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.args.mode == "worker":
            names = yaml_deployment_names()
            if self.args.deployment_name not in names:
                raise SystemExit(f"--mode worker deploys {REPO_ROOT / 'prefect.yaml'}, whose deployments are named "
                                 f"{sorted(names)}; pass --deployment-name {sorted(names)[0]}")
        try:
            self.start_server()
            self.mark_dead_runs()
            self.start_runner()
            print(f"READY api={self.api_url} ui=http://{HOST}:{self.port} deployments="
                  f"{','.join(f'{f}/{self.args.deployment_name}' for f in FLOW_NAMES)}", flush=True)
            if self.args.run:
                return self.run_once()
            print(f"[serve] try: PREFECT_API_URL={self.api_url} prefect deployment run "
                  f"'cluster-contrast/{self.args.deployment_name}' -p rounds=2 --watch   (Ctrl-C here stops all)",
                  flush=True)
            while True:
                for proc, what in ((self.server, "Prefect server"), (self.runner, "serve process / worker")):
                    if proc is not None and proc.poll() is not None:
                        print(f"[serve] {what} exited with status {proc.returncode}", flush=True)
                        return 1
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("[serve] interrupted", flush=True)
            return 130
        finally:
            self.shutdown()


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM -> same clean shutdown as Ctrl-C
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=int(os.environ.get("REID_PREFECT_PORT", "4200")),
                    help="server port on 127.0.0.1 (0 = any free port; default $REID_PREFECT_PORT or 4200)")
    ap.add_argument("--home", default=os.environ.get("REID_PREFECT_HOME", str(REPO_ROOT / "prefect_home")),
                    help="PREFECT_HOME for the server, CLI and runs (SQLite database lives here)")
    ap.add_argument("--mode", choices=["serve", "worker"], default="serve",
                    help="serve: flow.serve in a child process; worker: process work pool + prefect deploy + worker")
    ap.add_argument("--deployment-name", default="local")
    ap.add_argument("--pool", default="reid-local", help="process work pool name (--mode worker)")
    ap.add_argument("--limit", type=int, default=1, help="concurrent flow runs (one training at a time by default)")
    ap.add_argument("--no-ui", action="store_true", help="API only, no web UI")
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--run", action="store_true", help="trigger one cluster-contrast run, watch it, then stop all")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=JSON",
                    help="flow parameter for --run (repeatable), e.g. -p rounds=2")
    ap.add_argument("--watch-timeout", type=int, default=3600)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve"]:  # internal: the serve child process
        sub = argparse.ArgumentParser()
        sub.add_argument("--deployment-name", default="local")
        sub.add_argument("--limit", type=int, default=None)
        a = sub.parse_args(argv[1:])
        serve_deployments(a.deployment_name, a.limit)
        return 0
    if argv[:1] == ["_mark-dead"]:  # internal: mark dead flow runs Crashed (a child with the server's env)
        for run in mark_dead_flow_runs():
            print(json.dumps(run), flush=True)
        return 0
    args = build_parser().parse_args(argv)
    if shutil.which("prefect") is None and not Path(sys.executable).with_name("prefect").exists():
        print("[serve] warning: no `prefect` executable next to this Python; using `python -m prefect`", flush=True)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return Launcher(args).main()


if __name__ == "__main__":
    sys.exit(main())
