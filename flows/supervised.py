"""The ``supervised`` flow: the upper bound every unsupervised result is compared with.

Same tasks and the same Parquet outputs as ``cluster-contrast`` (so runs compare column for
column), but each round's labels file comes from ground-truth identities and training uses the
objective named by ``loss`` (``id``, ``triplet``, ``id+triplet``, ``softtriple``, ``id+aligned``, ...;
see ``reid_core.supervised``). Wiring only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import update_progress_artifact

from reid_core.pipeline import loop
from tasks import collect_metrics, evaluate, ground_truth_labels, train_epoch, write_profile

from flows._common import DEFAULTS, begin_run, build_config, hold_run_folder, publish_run_artifacts


@flow(name="supervised", flow_run_name="{name}", persist_result=False)
def supervised(
    name: str = "supervised",
    dataset: str = "market1501",
    data_root: str = DEFAULTS.data_root,
    backbone: str = DEFAULTS.backbone,
    rounds: int = DEFAULTS.rounds,
    loss: str = "id+triplet",
    p: int = DEFAULTS.p,
    k: int = DEFAULTS.k,
    iters: int = DEFAULTS.iters,
    seed: int = DEFAULTS.seed,
    runs_dir: str = DEFAULTS.runs_dir,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Supervised training on ground-truth identities for ``rounds`` epochs of ``iters`` iterations."""
    named = dict(name=name, dataset=dataset, data_root=data_root, backbone=backbone, rounds=rounds,
                 supervised_loss=loss, p=p, k=k, iters=iters, seed=seed, runs_dir=runs_dir, mode="supervised",
                 use_ise=False)
    cfg = build_config(named, overrides)
    # one writer per run folder: a second run on it fails at once, naming this process
    with hold_run_folder(cfg.run_dir):
        cfg_dict, progress_id, images = begin_run(cfg, progress, unit="epochs")
        checkpoint: Path | None = None
        for r in range(1, cfg.rounds + 1):
            paths = loop.round_paths(cfg, r)
            paths["pseudo_labels"].parent.mkdir(parents=True, exist_ok=True)
            base = 100.0 * (r - 1) / cfg.rounds
            labels = ground_truth_labels(images, paths["pseudo_labels"], r)
            checkpoint, _ = train_epoch(images, labels, None, checkpoint, cfg_dict, r, paths["checkpoint"],
                                        paths["train_log"], progress_artifact_id=progress_id,
                                        progress_span=(base, base + 90.0 / cfg.rounds), progress=progress)
            evaluate(images, checkpoint, cfg_dict, r, paths["metrics"], pseudo_labels_path=labels, progress=progress)
            write_profile(cfg_dict, r)
            update_progress_artifact(artifact_id=progress_id, progress=100.0 * r / cfg.rounds)
        metrics_path = collect_metrics(cfg_dict)
        records = publish_run_artifacts(cfg, metrics_path, [], progress_id)
        return {"run_dir": str(cfg.run_dir), "metrics_path": str(metrics_path), "metrics": records}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Run the supervised flow once, in this process.")
    ap.add_argument("--name", default="supervised")
    ap.add_argument("--dataset", default="market1501")
    ap.add_argument("--data-root", default=DEFAULTS.data_root)
    ap.add_argument("--rounds", type=int, default=DEFAULTS.rounds)
    ap.add_argument("--loss", default="id+triplet")
    ap.add_argument("--iters", type=int, default=DEFAULTS.iters)
    ap.add_argument("--runs-dir", default=DEFAULTS.runs_dir)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    a = ap.parse_args()
    ov = {f: json.loads(v) for f, _, v in (s.partition("=") for s in a.set)}
    out = supervised(name=a.name, dataset=a.dataset, data_root=a.data_root, rounds=a.rounds, loss=a.loss,
                     iters=a.iters, runs_dir=a.runs_dir, overrides=ov or None, progress=True)
    print(json.dumps({k: out[k] for k in ("run_dir", "metrics_path")}))
