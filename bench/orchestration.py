"""Orchestration overhead: the same rounds with the plain loop and with the Prefect flow.

    python bench/orchestration.py                       # tiny synthetic set, 2 rounds
    python bench/orchestration.py --data-root data/synthetic --dataset synthetic --iters 50

Both runs start from empty run folders (no stage is skipped) with the same RunConfig; the flow runs
against a temporary local Prefect API (``prefect_test_harness``, its start-up time is reported
separately) unless ``PREFECT_API_URL`` is set and ``--use-api`` is given. Prints one JSON line:
``plain_seconds``, ``prefect_seconds`` (fastest of ``--repeats`` alternating runs, each in a new
run folder), ``ratio`` (prefect / plain), ``overhead_seconds``, the same with every stage cached
(``cached_*``: pure orchestration cost, also per task run) and ``metrics_equal`` (the runs' metrics
match apart from timing columns); appends it to ``bench/results/orchestration.parquet``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_DATA = dict(n_ids=8, n_cams=2, images_per_id_cam=4, seed=0, height=64, width=32)
TINY = dict(pretrained=False, height=64, width=32, min_samples=2, k1=6, k2=2, num_workers=0, device="cpu",
            extract_batch_size=32, p=2, k=4, iters=2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help="default: a tiny generated synthetic set (market layout)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="RunConfig field (repeatable)")
    ap.add_argument("--workdir", default=None, help="where the two run folders go (default: a temp dir)")
    ap.add_argument("--use-api", action="store_true", help="use the Prefect API of PREFECT_API_URL, no harness")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (min is reported)")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args(argv)

    work = Path(a.workdir or tempfile.mkdtemp(prefix="reid-bench-orch-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect_home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import pandas as pd

    from reid_core.io.atomic import append_parquet
    from reid_core.pipeline import RunConfig, run_pipeline

    overrides: dict = {}
    if a.dataset is None:
        from reid_core.data.synthetic import ensure_synthetic

        data_root = str(ensure_synthetic(work / "tiny_data", **TINY_DATA))
        dataset = "market1501"
        overrides.update(TINY)
    else:
        dataset, data_root = a.dataset, a.data_root or "data/synthetic"
    for item in a.set:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    named = {k: overrides.pop(k) for k in ("p", "k", "iters", "eps", "seed", "backbone", "cluster_method", "use_ise")
             if k in overrides}
    runs = work / "runs"
    base = dict(dataset=dataset, data_root=str(Path(data_root).resolve()), runs_dir=str(runs.resolve()),
                rounds=a.rounds, **named, **overrides)

    # warm-up: imports, dataset index, torch kernels (not timed, separate folder)
    run_pipeline(RunConfig(name="warmup", **{**base, "rounds": 1}), progress=False)

    from flows.cluster_contrast import cluster_contrast

    def run_flow(name: str):
        return cluster_contrast(name=name, dataset=dataset, data_root=base["data_root"], runs_dir=base["runs_dir"],
                                rounds=a.rounds, **named, overrides=overrides or None)

    def timed(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        return time.perf_counter() - t0, out

    def measure() -> dict:
        # alternate plain / flow so a busy neighbour on a shared machine hurts both alike
        plain_t, flow_t, plain_out, flow_out = [], [], None, None
        for i in range(a.repeats):
            t, plain_out = timed(lambda n: run_pipeline(RunConfig(name=n, **base), progress=False), f"plain-{i}")
            plain_t.append(t)
            t, flow_out = timed(run_flow, f"prefect-{i}")
            flow_t.append(t)
        # everything cached: what is left is pure orchestration (task runs, API calls, artifacts)
        plain_cached, _ = timed(lambda n: run_pipeline(RunConfig(name=n, **base), progress=False), "plain-0")
        flow_cached, _ = timed(run_flow, "prefect-0")
        return dict(plain_t=plain_t, flow_t=flow_t, plain_out=plain_out, flow_out=flow_out,
                    plain_cached=plain_cached, flow_cached=flow_cached)

    harness_s = 0.0
    if a.use_api:
        m = measure()
    else:
        from prefect.testing.utilities import prefect_test_harness

        t_h = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            harness_s = time.perf_counter() - t_h
            m = measure()
    plain = m["plain_out"]
    flow_metrics = pd.read_parquet(m["flow_out"]["metrics_path"])

    def stable(df):
        return df[[c for c in ("round", "mAP", "rank1", "rank5", "mINP", "n_clusters") if c in df.columns]]

    equal = stable(plain).reset_index(drop=True).equals(stable(flow_metrics).reset_index(drop=True))
    plain_s, prefect_s = min(m["plain_t"]), min(m["flow_t"])
    n_task_runs = 2 + 6 * a.rounds + 1  # index, eval r0, per round 6 (extract, cluster, ise, train, eval, profile), collect
    result = {
        "bench": "orchestration", "rounds": a.rounds, "dataset": dataset, "repeats": a.repeats,
        "plain_seconds": round(plain_s, 3), "prefect_seconds": round(prefect_s, 3),
        "ratio": round(prefect_s / plain_s, 4) if plain_s > 0 else None,
        "overhead_seconds": round(prefect_s - plain_s, 3),
        "plain_seconds_all": [round(t, 3) for t in m["plain_t"]],
        "prefect_seconds_all": [round(t, 3) for t in m["flow_t"]],
        "cached_plain_seconds": round(m["plain_cached"], 3), "cached_prefect_seconds": round(m["flow_cached"], 3),
        "overhead_per_task_run_ms": round(1000 * (m["flow_cached"] - m["plain_cached"]) / n_task_runs, 1),
        "harness_startup_seconds": round(harness_s, 3), "metrics_equal": bool(equal),
        "iters": base.get("iters", RunConfig().iters),
        "batch_per_device": base.get("p", RunConfig().p) * base.get("k", RunConfig().k),
    }
    print(json.dumps(result), flush=True)
    if not a.no_save:
        append_parquet(pd.DataFrame([result]), REPO / "bench" / "results" / "orchestration.parquet")
    return result


if __name__ == "__main__":
    main()
