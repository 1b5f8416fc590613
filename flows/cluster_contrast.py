"""The ``cluster-contrast`` flow: the loop over rounds as a Prefect DAG (wiring only).

Round 0 evaluates the starting model; round r = 1..R extracts features with checkpoint r-1,
clusters them into pseudo labels, plans ISE (when enabled), trains one epoch and evaluates the new
checkpoint. Every arrow is a file in ``<runs_dir>/<name>/``; each stage skips itself when its
outputs are fresh, so re-running the flow after a crash resumes where it stopped.

Run it locally: ``python -m flows.cluster_contrast --help``; as a deployment: ``python -m flows.serve``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow
from prefect.artifacts import update_progress_artifact
from prefect.logging import get_run_logger

from reid_core.pipeline import cache, loop
from reid_core.pipeline.fork import read_fork
from tasks import build_pseudo_labels, collect_metrics, evaluate, plan_ise, train_epoch, write_profile

from flows._common import DEFAULTS, begin_run, build_config, hold_run_folder, publish_run_artifacts
from flows._runners import LOCAL_RUNNERS, dask_scheduler, extract_round

#: share of a round's progress bar given to training (the rest: extract, cluster, evaluate)
TRAIN_SHARE = 0.8


@flow(name="cluster-contrast", flow_run_name="{name}", persist_result=False)
def cluster_contrast(
    name: str = DEFAULTS.name,
    dataset: Literal["synthetic", "market1501", "manifest"] = DEFAULTS.dataset,  # type: ignore[assignment]
    data_root: str = DEFAULTS.data_root,
    backbone: str = DEFAULTS.backbone,
    rounds: int = DEFAULTS.rounds,
    cluster_method: Literal["dbscan", "hdbscan"] = DEFAULTS.cluster_method,  # type: ignore[assignment]
    eps: float = DEFAULTS.eps,
    use_ise: bool = DEFAULTS.use_ise,
    p: int = DEFAULTS.p,
    k: int = DEFAULTS.k,
    iters: int = DEFAULTS.iters,
    seed: int = DEFAULTS.seed,
    runs_dir: str = DEFAULTS.runs_dir,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
    task_runner: str = "default",
    dask_workers: int = 2,
    extract_shards: int = 0,
) -> dict[str, Any]:
    """Unsupervised Cluster-Contrast (+ ISE) training over ``rounds`` rounds.

    Args:
        name: run name; outputs go to ``<runs_dir>/<name>/``.
        dataset: ``synthetic`` (generated when missing), ``market1501`` or ``manifest``.
        data_root: dataset folder (or manifest file).
        backbone: ``mobilenet_v2`` or ``resnet50``.
        rounds: clustering + training rounds after the round-0 evaluation.
        cluster_method: ``dbscan`` (uses ``eps``) or ``hdbscan``.
        eps: DBSCAN radius on the Jaccard distance, in (0, 1).
        use_ise: Implicit Sample Extension on/off.
        p: identities per batch; k: images per identity (per-device batch p*k).
        iters: iterations per round.
        seed: seeds every round (results are reproducible for a fixed seed and batch).
        runs_dir: parent of the run folder.
        overrides: any other ``RunConfig`` field, e.g. ``{"pretrained": false, "height": 64}``.
        progress: show tqdm bars in the worker's terminal.
        task_runner: where feature extraction runs: ``default`` (in this process, as before), ``dask``
            (a Dask ``LocalCluster`` of ``dask_workers`` processes), ``dask-threads`` (its workers
            as threads here) or a Dask scheduler address such as ``tcp://host:8786``. With Dask the
            run folder must be on storage every worker sees.
        dask_workers: workers of the ``LocalCluster`` (``dask`` / ``dask-threads``).
        extract_shards: slices of the training images extracted in parallel, each into its own part
            file; 0 = one per Dask worker (``dask_workers``), or 1 with the default runner.

    Returns:
        ``{"run_dir", "metrics_path", "metrics", "skipped_rounds"}``.
    """
    named = dict(name=name, dataset=dataset, data_root=data_root, backbone=backbone, rounds=rounds,
                 cluster_method=cluster_method, eps=eps, use_ise=use_ise, p=p, k=k, iters=iters, seed=seed,
                 runs_dir=runs_dir)
    cfg = build_config(named, overrides)
    if cfg.mode != "unsupervised":
        raise ValueError(f"overrides.mode={cfg.mode!r}: the cluster-contrast flow is unsupervised; "
                         "use the supervised flow for ground-truth training")
    n_shards = int(extract_shards) or (1 if task_runner == "default" else int(dask_workers))
    # one writer per run folder: a second run on it fails at once, naming this process
    with hold_run_folder(cfg.run_dir), dask_scheduler(task_runner, dask_workers) as address:
        return _rounds(cfg, progress, address, n_shards)


def _rounds(cfg, progress: bool, address: str | None, n_shards: int) -> dict[str, Any]:
    """The rounds of the flow (inside the flow run; ``address``: Dask scheduler or None)."""
    logger = get_run_logger()
    cfg_dict, progress_id, images = begin_run(cfg, progress, unit="rounds")
    if address is not None:
        logger.info("feature extraction: %d shard(s) on the Dask scheduler %s", n_shards, address)

    checkpoint: Path | None = None
    skipped: list[int] = []
    fork = read_fork(cfg.run_dir)
    if fork:  # rounds 0..N are the parent's, taken as they are (reid_core.pipeline.fork)
        checkpoint = loop.round_paths(cfg, fork["round"])["checkpoint"]
        logger.info("fork of %s: rounds 0..%d inherited, training from round %d", fork["parent"], fork["round"],
                    fork["round"] + 1)
    for r in range((fork["round"] if fork else 0) + 1, cfg.rounds + 1):
        paths = loop.round_paths(cfg, r)
        paths["features"].parent.mkdir(parents=True, exist_ok=True)
        base = 100.0 * (r - 1) / cfg.rounds
        span = (base, base + 100.0 * TRAIN_SHARE / cfg.rounds)

        feats = extract_round(images, checkpoint, cfg_dict, r, paths["features"], address, n_shards, progress)
        labels = build_pseudo_labels(feats, cfg_dict, r, paths["pseudo_labels"], progress=progress, images_path=images,
                                     previous_labels_path=loop.round_paths(cfg, r - 1)["pseudo_labels"])
        if cache.read_meta(labels).get("n_clusters", 0) < 2:
            logger.warning("round %d: clustering found fewer than 2 clusters (all outliers); training is skipped "
                           "this round (checkpoint carried over). Try a larger eps.", r)
            skipped.append(r)
        if cfg.use_ise:
            plan_ise(feats, labels, cfg_dict, r, paths["ise_plan"])
        checkpoint, _ = train_epoch(images, labels, feats, checkpoint, cfg_dict, r, paths["checkpoint"],
                                    paths["train_log"], progress_artifact_id=progress_id, progress_span=span,
                                    progress=progress)
        evaluate(images, checkpoint, cfg_dict, r, paths["metrics"], pseudo_labels_path=labels, progress=progress)
        write_profile(cfg_dict, r)
        update_progress_artifact(artifact_id=progress_id, progress=100.0 * r / cfg.rounds)

    metrics_path = collect_metrics(cfg_dict)
    records = publish_run_artifacts(cfg, metrics_path, skipped, progress_id)
    return {"run_dir": str(cfg.run_dir), "metrics_path": str(metrics_path), "metrics": records,
            "skipped_rounds": skipped}


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.cluster_contrast --rounds 2 --set pretrained=false`` (runs the flow once)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Run the cluster-contrast flow once, in this process.")
    ap.add_argument("--name", default=DEFAULTS.name)
    ap.add_argument("--dataset", default=DEFAULTS.dataset, choices=["synthetic", "market1501", "manifest"])
    ap.add_argument("--data-root", default=DEFAULTS.data_root)
    ap.add_argument("--backbone", default=DEFAULTS.backbone)
    ap.add_argument("--rounds", type=int, default=DEFAULTS.rounds)
    ap.add_argument("--cluster-method", default=DEFAULTS.cluster_method, choices=["dbscan", "hdbscan"])
    ap.add_argument("--eps", type=float, default=DEFAULTS.eps)
    ap.add_argument("--no-ise", action="store_true")
    ap.add_argument("--p", type=int, default=DEFAULTS.p)
    ap.add_argument("--k", type=int, default=DEFAULTS.k)
    ap.add_argument("--iters", type=int, default=DEFAULTS.iters)
    ap.add_argument("--seed", type=int, default=DEFAULTS.seed)
    ap.add_argument("--runs-dir", default=DEFAULTS.runs_dir)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                    help="any other RunConfig field, value parsed as JSON (repeatable)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--task-runner", default="default",
                    help=f"{' | '.join(LOCAL_RUNNERS)} | a Dask scheduler address (tcp://host:8786)")
    ap.add_argument("--dask-workers", type=int, default=2, help="workers of the local Dask cluster")
    ap.add_argument("--extract-shards", type=int, default=0, help="0 = one per Dask worker")
    a = ap.parse_args(argv)
    overrides = {}
    for item in a.set:
        field, _, raw = item.partition("=")
        try:
            overrides[field] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[field] = raw
    out = cluster_contrast(name=a.name, dataset=a.dataset, data_root=a.data_root, backbone=a.backbone,
                           rounds=a.rounds, cluster_method=a.cluster_method, eps=a.eps, use_ise=not a.no_ise,
                           p=a.p, k=a.k, iters=a.iters, seed=a.seed, runs_dir=a.runs_dir,
                           overrides=overrides or None, progress=a.progress, task_runner=a.task_runner,
                           dask_workers=a.dask_workers, extract_shards=a.extract_shards)
    metrics = pd.read_parquet(out["metrics_path"])
    cols = [c for c in ("round", "mAP", "rank1", "mINP", "ari", "nmi", "n_clusters", "n_outliers") if c in metrics]
    print("\nmetrics per round (fractions):")
    print(metrics[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    run_dir = Path(out["run_dir"])
    print(f"\noutputs in {run_dir}/ (Parquet, readable with pandas or DuckDB):")
    for path in sorted(run_dir.rglob("*")):
        if path.suffix in (".parquet", ".pt", ".json") and not path.name.endswith(".stage.json"):
            print(f"  {path.relative_to(run_dir)}")
    print(json.dumps({k: out[k] for k in ("run_dir", "metrics_path", "skipped_rounds")}))


if __name__ == "__main__":
    main()
