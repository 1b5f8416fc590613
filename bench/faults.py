"""Kill anywhere: SIGKILL a tiny synthetic run at seeded points, rerun it, and demand the metrics of
an uninterrupted run.

One child process runs the plain loop (``reid_core.pipeline.run_pipeline``, 2 rounds on a tiny
synthetic set). Kill points:

* ``write:<mode>:<N>``: the child SIGKILLs itself at its N-th atomic write
  (``REID_FAULT_KILL_AT_WRITE=N``, hook in ``reid_core.io.atomic``), in one of three places:
  ``mid_write`` (temporary file cut to half, as if killed while writing a Parquet file or a
  checkpoint), ``before_rename`` (temporary file complete, not yet in place) or ``after_rename``
  (file in place, its ``.stage.json`` record not yet written);
* ``timer:<seconds>``: the harness SIGKILLs the child after a seeded random delay (anywhere:
  inside training, a decoder, a Parquet writer...).

Kills come in seeded chains (``--chain``, default 3): the run is killed, its rerun is killed at the
next point, and so on; then it is rerun in a fresh child to the end. The kill points of a chain
*survive* when that final rerun exits 0, its metrics (every round: mAP, rank1, rank5, mINP, nmi, ari, clusters, outliers) equal
the uninterrupted run's exactly, every file matches the SHA-256 its stage recorded (no partial
file was kept or read) and no temporary file is left. One JSON line per kill point, then a summary
line:

  python bench/faults.py --points 60 --timer-points 10 --chain 3 --seed 0 --work /tmp/faults
  python bench/faults.py --runner flow --points 6 --timer-points 2 --seed 1 --work /tmp/faults-flow

``--runner flow`` kills the ``cluster-contrast`` Prefect flow instead of the plain loop; the harness
starts one local ``prefect server`` for all children (as a deployment would have).

``--points`` write kill points are spread evenly over the three modes, each at a seeded write
number; a run of the tiny pipeline makes 32 atomic writes (files and their stage records).

``--deployment serve|worker`` kills a *deployment run* instead: for each point it starts
``python -m flows.serve`` (``--mode serve``: served deployments; ``--mode worker``: process work pool,
``prefect deploy``, worker) with a fresh Prefect home, runs ``cluster-contrast/<name>`` on the tiny
set, lets the flow-run process stall at its N-th atomic write (``REID_FAULT_MODE=stall:<where>``),
then SIGKILLs (``--kill``) either the whole tree (launcher, server, serve process / worker, flow
run: nothing gets to clean up) or only the flow run's parent (the serve process / worker; the
stalled flow run then dies too, and the launcher shuts the server down). It then starts the
launcher again on the same Prefect home, which must mark the dead run Crashed (its concurrency slot
would block the rerun), and runs the deployment again: the rerun must complete with the
uninterrupted run's metrics, every file matching its record, and the stages finished before the
kill untouched (same bytes and modification time of output and record). One JSON line per point:

  python bench/faults.py --deployment serve --kill tree --points 4 --seed 0 --work /tmp/faults-deploy
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("mid_write", "before_rename", "after_rename")
METRIC_COLUMNS = ("round", "mAP", "rank1", "rank5", "mINP", "nmi", "ari", "n_clusters", "n_outliers")


def tiny_config(run_dir: Path, data: Path, rounds: int = 2):
    from reid_core.pipeline import RunConfig

    return RunConfig(name=run_dir.name, runs_dir=str(run_dir.parent), dataset="market1501", data_root=str(data),
                     rounds=rounds, iters=2, p=4, k=4, height=64, width=32, extract_batch_size=32, num_workers=0,
                     min_samples=2, k1=6, k2=3, eps=0.7, device="cpu", bf16=False, seed=0)


def child(args: argparse.Namespace) -> int:
    """The run that gets killed: the plain loop, then its metrics as one JSON line on stdout."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from reid_core.io import atomic
    from reid_core.pipeline import run_pipeline

    cfg = tiny_config(Path(args.run_dir), Path(args.data), args.rounds)
    if args.runner == "flow":
        import pandas as pd

        from flows.cluster_contrast import cluster_contrast

        out = cluster_contrast(**flow_parameters(cfg))
        df = pd.read_parquet(out["metrics_path"])
    else:
        df = run_pipeline(cfg, progress=False)
    cols = [c for c in METRIC_COLUMNS if c in df.columns]
    # Python floats in JSON round-trip exactly (repr), so equality below is bit-for-bit
    rows = [{c: (None if v != v else v) for c, v in rec.items()} for rec in df[cols].astype(object).to_dict("records")]
    rows = [{c: (v.item() if hasattr(v, "item") else v) for c, v in rec.items()} for rec in rows]
    print(json.dumps({"metrics": rows, "writes": atomic._writes[0]}), flush=True)
    return 0


#: "plain" (reid_core.pipeline.run_pipeline) or "flow" (the cluster-contrast Prefect flow)
RUNNER = ["plain"]


def _child_cmd(run_dir: Path, data: Path, rounds: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "child", "--run-dir", str(run_dir), "--data", str(data),
            "--rounds", str(rounds), "--runner", RUNNER[0]]


#: environment of the Prefect server the flow children talk to (``--runner flow``)
PREFECT_ENV: dict[str, str] = {}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REID_FAULT_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **PREFECT_ENV, **extra})
    return env


def start_prefect_server(home: Path) -> subprocess.Popen:
    """A dedicated local Prefect server for the flow children: a killed flow then leaves no
    temporary server behind, and each child connects instead of starting its own."""
    from flows.serve import HOST, api_get, free_port, prefect_cli, prefect_env, wait_for

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    PREFECT_ENV.update({k: v for k, v in prefect_env(home, port, base={}).items() if k.startswith("PREFECT_")})
    log = open(home / "server.log", "ab")
    server = subprocess.Popen(prefect_cli() + ["server", "start", "--host", HOST, "--port", str(port), "--no-ui",
                                               "--analytics-off"], env={**os.environ, **PREFECT_ENV}, cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: api_get(PREFECT_ENV["PREFECT_API_URL"], "/health")[0] == 200, 300, "Prefect server", [server])
    return server


def run_child(run_dir: Path, data: Path, rounds: int, env: dict[str, str],
              kill_after: float | None = None) -> tuple[int, dict[str, Any] | None, str]:
    proc = subprocess.Popen(_child_cmd(run_dir, data, rounds), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    result = None
    for line in out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
    return proc.returncode, result, err


def verify_run_folder(run_dir: Path) -> list[str]:
    """Problems of a finished run folder: outputs that differ from their stage records, temporaries."""
    from reid_core.io.hashing import file_digest
    from reid_core.pipeline import cache

    problems = []
    for side in run_dir.rglob("*" + cache.SIDE_SUFFIX):
        meta = json.loads(side.read_text())
        for name, digest in meta.get("output_digests", {}).items():
            f = side.parent / name
            if not f.exists() or file_digest(f) != digest:
                problems.append(f"{f}: differs from its record")
    problems += [f"{t}: temporary file left" for t in run_dir.rglob("*.tmp")]
    from reid_core.pipeline.verify import verify_run  # also: outputs without a record, unreadable files

    problems += [p for p in verify_run(run_dir)["problems"] if p not in problems and "temporary file" not in p]
    if (run_dir / ".run.lock").exists():
        problems.append(f"{run_dir / '.run.lock'}: lock file left after a clean end")
    return problems


def _kill(point: str, run_dir: Path, data: Path, rounds: int) -> tuple[bool, str | None, int, str]:
    kind, *rest = point.split(":")
    if kind == "write":
        mode, n = rest
        rc, _, err = run_child(run_dir, data, rounds, _env(REID_FAULT_KILL_AT_WRITE=n, REID_FAULT_MODE=mode))
        where = next((ln.split("(", 1)[1].rstrip(")") for ln in err.splitlines() if ln.startswith("fault: SIGKILL")),
                     None)
    else:
        rc, _, err = run_child(run_dir, data, rounds, _env(), kill_after=float(rest[0]))
        where = None
    return rc == -signal.SIGKILL, where, rc, err


def kill_chain(points: list[str], work: Path, data: Path, rounds: int,
               reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Kill one run at each of ``points`` in turn (each kill in the rerun of the previous one), then
    rerun it to the end and compare. Returns one JSON record per point."""
    t0 = time.perf_counter()
    run_dir = work / "runs" / points[0].replace(":", "_").replace(".", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    records = []
    for point in points:
        killed, where, rc, err = _kill(point, run_dir, data, rounds)
        records.append({"point": point, "killed": killed, "where": where, "kill_exit": rc,
                        "error": None if killed or rc == 0 else err.strip()[-300:]})
    rc2, result, err2 = run_child(run_dir, data, rounds, _env())
    problems = verify_run_folder(run_dir) if rc2 == 0 else [f"rerun exited {rc2}: {err2.strip()[-500:]}"]
    same = result is not None and result["metrics"] == reference["metrics"]
    if rc2 == 0 and not same:
        problems.append("metrics differ from the uninterrupted run")
    for rec in records:
        ok = rc2 == 0 and same and not problems and rec["kill_exit"] in (0, -signal.SIGKILL)
        rec.update({"chain": points[0], "rerun_exit": rc2, "identical_metrics": same, "survived": ok,
                    "problems": problems})
    records[-1]["chain_seconds"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(run_dir, ignore_errors=True)
    return records


def draw_points(n_writes: int, points: int, timer_points: int, max_seconds: float, seed: int,
                modes: tuple[str, ...] = MODES, chain: int = 1) -> list[list[str]]:
    """Seeded kill points, grouped in chains of ``chain`` kills of one run. A later kill of a chain
    counts writes from its own (resumed) start, which writes fewer files, so its N is drawn from
    the writes still to come."""
    rng = random.Random(seed)
    mode_of = [modes[i % len(modes)] for i in range(points)]
    rng.shuffle(mode_of)
    chains: list[list[str]] = []
    for start in range(0, points, chain):
        left, links = n_writes, []
        for mode in mode_of[start:start + chain]:
            n = rng.randint(1, max(1, left - 2))
            links.append(f"write:{mode}:{n}")
            left = max(3, left - n)
        chains.append(links)
    chains += [[f"timer:{rng.uniform(0.5, max_seconds):.2f}"] for _ in range(timer_points)]
    return chains


# ----------------------------------------------------------------------------------------------
# deployment runs (python -m flows.serve) killed at a stalled write

def flow_parameters(cfg) -> dict[str, Any]:
    """The cluster-contrast flow's parameters for ``cfg`` (named ones + ``overrides``), as ``child`` runs it."""
    named = ("name", "dataset", "data_root", "backbone", "rounds", "cluster_method", "eps", "use_ise", "p", "k",
             "iters", "seed", "runs_dir")
    overrides = {k: v for k, v in cfg.to_dict().items() if k not in named and v != getattr(type(cfg)(), k)}
    return {**{k: getattr(cfg, k) for k in named}, "overrides": overrides}


def finished_stages(run_dir: Path) -> dict[str, tuple]:
    """Stage records whose outputs match them: record and outputs with their digest and mtime."""
    from reid_core.io.hashing import file_digest
    from reid_core.pipeline import cache

    done = {}
    for side in sorted(run_dir.rglob("*" + cache.SIDE_SUFFIX)):
        try:
            outputs = json.loads(side.read_text()).get("output_digests", {})
        except (OSError, ValueError):
            continue
        files = [side.parent / n for n in outputs]
        if outputs and all(f.exists() and file_digest(f) == outputs[f.name] for f in files):
            done[str(side.relative_to(run_dir))] = tuple(
                (f.name, file_digest(f), f.stat().st_mtime_ns) for f in [side, *files])
    return done


def _process_tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


TERMINAL_STATES = ("CRASHED", "FAILED", "CANCELLED")


def killed_run_state(port: int) -> str | None:
    """State type of the oldest flow run on the launcher's server (the run that was killed)."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/flow_runs/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        runs = json.loads(resp.read())
    runs.sort(key=lambda r: r["created"])
    return runs[0]["state_type"] if runs else None


class Deployment:
    """One ``python -m flows.serve`` launcher of the harness (its log in ``<home>/launcher-<i>.log``)."""

    def __init__(self, home: Path, mode: str, env_extra: dict[str, str], index: int) -> None:
        from flows.serve import free_port, prefect_env

        self.home, self.mode = home, mode
        self.name = "bench" if mode == "serve" else "local"  # worker mode: the names of prefect.yaml
        self.port = free_port()
        self.env = {**_env(), **prefect_env(home, self.port, base={}), **env_extra}
        self.env["PYTHONPATH"] = str(REPO)
        self.log = home / f"launcher-{index}.log"
        home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "flows.serve", "--mode", mode, "--port", str(self.port),
                                          "--home", str(home), "--no-ui", "--deployment-name", self.name,
                                          "--startup-timeout", "300"], cwd=REPO, env=self.env, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while b"READY" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"launcher not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def trigger(self, params: dict[str, Any], watch: bool) -> subprocess.CompletedProcess:
        from flows.serve import prefect_cli

        cmd = prefect_cli() + ["deployment", "run", f"cluster-contrast/{self.name}"]
        if watch:
            cmd += ["--watch", "--watch-timeout", "900", "--watch-interval", "2"]
        for key, value in params.items():
            cmd += ["--param", f"{key}={json.dumps(value)}"]
        env = {k: v for k, v in self.env.items() if not k.startswith("REID_FAULT_")}
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1000)

    def processes(self) -> list:
        procs = _process_tree(self.proc.pid)
        state = self.home / "serve.json"
        if state.exists():
            for pid in json.loads(state.read_text())["pids"].values():
                procs += _process_tree(pid) if pid else []
        return list({p.pid: p for p in procs}.values())

    def kill_all(self) -> None:
        import psutil

        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=15)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """SIGTERM (the launcher's clean shutdown), then kill whatever is left."""
        procs = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        import psutil

        left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def deployment_kill_point(point: str, mode: str, kill: str, work: Path, data: Path, rounds: int,
                          reference: dict[str, Any]) -> dict[str, Any]:
    """Run a deployment, SIGKILL it at ``point`` (``write:<where>:<N>``), run it again; one record."""
    import psutil
    import pandas as pd

    t0 = time.perf_counter()
    _, where, n = point.split(":")
    tag = f"{mode}_{kill}_{where}_{n}"
    home, run_dir = work / "deploy" / tag / "prefect_home", work / "deploy" / tag / "runs" / "run"
    shutil.rmtree(home.parent, ignore_errors=True)
    stall_file = home.parent / "stalled"
    params = flow_parameters(tiny_config(run_dir, data, rounds))
    rec: dict[str, Any] = {"point": point, "deployment": mode, "kill": kill, "killed": False, "survived": False}
    first = second = None
    try:
        first = Deployment(home, mode, {"REID_FAULT_KILL_AT_WRITE": n, "REID_FAULT_MODE": f"stall:{where}",
                                        "REID_FAULT_STALL_FILE": str(stall_file)}, 1)
        first.wait_ready()
        res = first.trigger(params, watch=False)
        if res.returncode != 0:
            raise RuntimeError(f"deployment run failed to start: {res.stderr[-1000:]}")
        deadline = time.monotonic() + 600
        while not stall_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the flow run never reached its kill point")
            time.sleep(0.2)
        stalled_pid, parent_pid = map(int, stall_file.read_text().split("\n")[0].split())
        rec["where"] = stall_file.read_text().split("\n")[1]
        before = finished_stages(run_dir)
        if kill == "tree":
            first.kill_all()
        else:
            os.kill(parent_pid, signal.SIGKILL)
            try:
                first.proc.wait(timeout=180)  # the launcher notices its runner died and stops the server
            except subprocess.TimeoutExpired:
                first.kill_all()
        try:
            gone = not psutil.Process(stalled_pid).is_running() or \
                psutil.Process(stalled_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            gone = True
        if not gone:
            psutil.wait_procs([psutil.Process(stalled_pid)], timeout=30)
        rec["killed"] = True
        first.kill_all()  # nothing of the first deployment may survive into the rerun
        second = Deployment(home, mode, {}, 2)
        second.wait_ready()
        log = second.log.read_text()
        rec["marked_crashed"] = sum(1 for ln in log.splitlines() if "marked flow run" in ln and "Crashed" in ln)
        rec["killed_run_state"] = killed_run_state(second.port)
        t_rerun = time.perf_counter()
        res = second.trigger(params, watch=True)
        rec["rerun_seconds"] = round(time.perf_counter() - t_rerun, 1)
        rec["rerun_exit"] = res.returncode
        problems = [] if res.returncode == 0 and "Completed" in res.stdout else \
            [f"rerun did not complete: {res.stdout[-600:]} {res.stderr[-300:]}"]
        if not problems:
            df = pd.read_parquet(run_dir / "metrics.parquet")
            cols = [c for c in METRIC_COLUMNS if c in df.columns]
            rows = [{c: (None if v != v else (v.item() if hasattr(v, "item") else v)) for c, v in r.items()}
                    for r in df[cols].astype(object).to_dict("records")]
            rec["identical_metrics"] = rows == reference["metrics"]
            if not rec["identical_metrics"]:
                problems.append("metrics differ from the uninterrupted run")
            problems += verify_run_folder(run_dir)
            after = finished_stages(run_dir)
            touched = sorted(k for k, v in before.items() if after.get(k) != v)
            rec["finished_before_kill"] = len(before)
            rec["finished_stages_touched"] = touched
            problems += [f"{k}: finished before the kill, rewritten by the rerun" for k in touched]
        # the killed run must be in a terminal state before the rerun (else it keeps the deployment's
        # concurrency slot): marked Crashed by the launcher, or by Prefect itself when the flow-run
        # process outlived its worker long enough to report it (worker mode, --kill parent)
        if rec["killed_run_state"] not in TERMINAL_STATES:
            problems.append(f"the killed flow run is {rec['killed_run_state']} at the rerun, not terminal")
        rec["problems"] = problems
        rec["survived"] = not problems
    except Exception as exc:  # a harness failure is a failed point, with its reason
        rec["problems"] = [f"{type(exc).__name__}: {exc}"[-1500:]]
    finally:
        for d in (first, second):
            if d is not None:
                d.stop()
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    if rec["survived"]:
        shutil.rmtree(home.parent, ignore_errors=True)
    return rec


def _prepare_reference(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any] | None, float]:
    """The work folder, the synthetic data and the uninterrupted reference run of both harnesses
    (``REID_FAULT_KILL_AT_WRITE=0`` counts the writes, kills nothing); prints the reference's JSON
    line, or an error line and ``None`` when it failed. Returns ``(work, data, reference, seconds)``."""
    from reid_core.data.synthetic import generate_synthetic

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "synth"
    if not (data / "bounding_box_train").is_dir():
        generate_synthetic(data, n_ids=12, n_cams=2, images_per_id_cam=3, seed=2)
    ref_dir = work / "runs" / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    t0 = time.perf_counter()
    rc, reference, err = run_child(ref_dir, data, args.rounds, _env(REID_FAULT_KILL_AT_WRITE="0"))
    ref_seconds = time.perf_counter() - t0
    if rc != 0 or reference is None:
        print(json.dumps({"error": f"reference run failed (exit {rc})", "stderr": err[-2000:]}))
        return work, data, None, ref_seconds
    print(json.dumps({"reference": reference["metrics"], "writes": reference["writes"],
                      "seconds": round(ref_seconds, 1)}), flush=True)
    return work, data, reference, ref_seconds


def _deployment_harness(args: argparse.Namespace) -> int:
    work, data, reference, _ = _prepare_reference(args)
    if reference is None:
        return 1
    rng = random.Random(args.seed)
    modes = [m for m in args.modes.split(",") if m]
    points = [f"write:{modes[i % len(modes)]}:{rng.randint(1, max(1, reference['writes'] - 2))}"
              for i in range(args.points)]
    tried = survived = 0
    for point in points:
        rec = deployment_kill_point(point, args.deployment, args.kill, work, data, args.rounds, reference)
        print(json.dumps(rec), flush=True)
        tried += 1
        survived += int(rec["survived"])
    print(json.dumps({"summary": {"deployment": args.deployment, "kill": args.kill, "tried": tried,
                                  "survived": survived}, "seed": args.seed, "writes_per_run": reference["writes"]}),
          flush=True)
    return 0 if survived == tried else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("child")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--runner", default="plain", choices=["plain", "flow"])
    ap.add_argument("--points", type=int, default=60, help="write kill points (drawn from all modes x writes)")
    ap.add_argument("--timer-points", type=int, default=10, help="kills after a random delay")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--chain", type=int, default=3, help="kills of one run before its final rerun")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/faults", help="scratch folder (data + run folders)")
    ap.add_argument("--runner", default="plain", choices=["plain", "flow"],
                    help="kill the plain loop, or the cluster-contrast Prefect flow (a local Prefect server is "
                         "started for the children)")
    ap.add_argument("--deployment", choices=["serve", "worker"], default=None,
                    help="kill a deployment run of `python -m flows.serve --mode <this>` (see above)")
    ap.add_argument("--kill", choices=["tree", "parent"], default="tree",
                    help="--deployment: SIGKILL the whole process tree, or only the flow run's parent")
    args = ap.parse_args(argv)
    if args.cmd == "child":
        return child(args)
    if args.deployment is not None:
        return _deployment_harness(args)
    RUNNER[0] = args.runner
    server = start_prefect_server(Path(args.work).resolve() / "prefect_home") if args.runner == "flow" else None
    try:
        return _harness(args)
    finally:
        if server is not None:
            from flows.serve import stop_process

            stop_process(server, "Prefect server")


def _harness(args: argparse.Namespace) -> int:
    work, data, reference, ref_seconds = _prepare_reference(args)
    if reference is None:
        return 1
    chains = draw_points(reference["writes"], args.points, args.timer_points, ref_seconds, args.seed,
                         tuple(m for m in args.modes.split(",") if m), chain=args.chain)
    summary: dict[str, dict[str, int]] = {}
    for links in chains:
        for rec in kill_chain(links, work, data, args.rounds, reference):
            print(json.dumps(rec), flush=True)
            point = rec["point"]
            key = point.split(":")[0] + (":" + point.split(":")[1] if point.startswith("write") else "")
            s = summary.setdefault(key, {"tried": 0, "killed": 0, "survived": 0})
            s["tried"] += 1
            s["killed"] += int(rec["killed"])
            s["survived"] += int(rec["survived"] and rec["killed"])
    total = {k: sum(s[k] for s in summary.values()) for k in ("tried", "killed", "survived")}
    print(json.dumps({"summary": summary, "total": total, "seed": args.seed, "runner": args.runner,
                      "writes_per_run": reference["writes"]}), flush=True)
    return 0 if total["survived"] == total["killed"] else 1


if __name__ == "__main__":
    sys.exit(main())
