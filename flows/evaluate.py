"""The ``evaluate`` flow: retrieval metrics of one checkpoint (or of the starting model)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from reid_core.io.hashing import file_digest
from tasks import evaluate, index_images

from flows._common import DEFAULTS, artifact_key, build_config, fmt_value, hold_run_folder, metrics_table


@flow(name="evaluate", flow_run_name="evaluate-{name}", persist_result=False)
def evaluate_checkpoint(
    checkpoint: str | None = None,
    name: str = "eval",
    dataset: Literal["synthetic", "market1501", "manifest"] = DEFAULTS.dataset,  # type: ignore[assignment]
    data_root: str = DEFAULTS.data_root,
    backbone: str = DEFAULTS.backbone,
    runs_dir: str = DEFAULTS.runs_dir,
    round_idx: int = 0,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mAP / CMC / mINP of ``checkpoint`` on the dataset's query/gallery split.

    Args:
        checkpoint: a ``checkpoint.pt`` written by a run (the model is rebuilt from it); ``None``
            evaluates the starting model (``backbone``, ImageNet weights unless overridden).
        name: outputs go to ``<runs_dir>/<name>/eval/metrics_<checkpoint digest>.parquet``.
        round_idx: the value written to the ``round`` column.
        overrides: other ``RunConfig`` fields (``height``, ``width``, ``flip``, ``rerank``, ...);
            they must match how the checkpoint was trained.

    Returns:
        ``{"metrics_path", "metrics"}`` (one row).
    """
    logger = get_run_logger()
    cfg = build_config(dict(name=name, dataset=dataset, data_root=data_root, backbone=backbone, runs_dir=runs_dir),
                       overrides)
    ckpt = None if checkpoint in (None, "") else Path(checkpoint).expanduser().resolve()
    if ckpt is not None and not ckpt.exists():
        raise FileNotFoundError(f"checkpoint: {ckpt} does not exist")
    tag = "initial" if ckpt is None else file_digest(ckpt)[:12]
    # it writes images.parquet and eval/ into the run folder: one writer at a time, as training runs
    with hold_run_folder(cfg.run_dir):
        images = index_images(cfg.dataset, cfg.data_root, cfg.run_dir / "images.parquet")
        out = cfg.run_dir / "eval" / f"metrics_{tag}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        metrics_path = evaluate(images, ckpt, cfg.to_dict(), round_idx, out, extra={"checkpoint": str(ckpt or "")},
                                progress=progress)
    records = metrics_table(pd.read_parquet(metrics_path))
    key = artifact_key(cfg.name, "eval", tag)
    create_table_artifact(records, key=key, description=f"metrics of {ckpt or 'the starting model'}")
    row = records[0]
    create_markdown_artifact(
        "\n".join([f"# Evaluation of `{ckpt or 'starting model (' + cfg.backbone + ')'}`", "",
                   f"- dataset `{cfg.dataset}` at `{cfg.data_root}`",
                   f"- metrics file: `{metrics_path}`", "",
                   "| mAP | rank1 | rank5 | rank10 | mINP |", "|---|---|---|---|---|",
                   "| " + " | ".join(fmt_value(row.get(c)) for c in ("mAP", "rank1", "rank5", "rank10", "mINP")) + " |"]),
        key=f"{key}-summary", description="evaluation summary")
    logger.info("mAP %.4f rank1 %.4f -> %s", row["mAP"], row["rank1"], metrics_path)
    return {"metrics_path": str(metrics_path), "metrics": records}
