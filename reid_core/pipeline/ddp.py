"""Entry point of one DDP training stage, started by ``torchrun`` (one process per rank):

    torchrun --nproc-per-node 2 -m reid_core.pipeline.ddp --run-dir runs/NAME --round 3

(or with explicit ``--config --images --labels --features --checkpoint-in --out-checkpoint
--out-log``, as :func:`reid_core.pipeline.stages.run_under_torchrun` calls it). Every rank joins the
process group (gloo on CPU, nccl on CUDA, ``LOCAL_RANK`` picks the GPU), runs
:func:`reid_core.pipeline.stages.train_epoch_stage`; rank 0 writes the checkpoint, the training
log and the sidecar. Multi-node: the same command with torchrun's ``--nnodes`` / ``--rdzv-endpoint``,
the run folder on storage every node sees.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="run folder (reads config.json and the round's files from it)")
    ap.add_argument("--config", help="RunConfig JSON (default: <run-dir>/config.json)")
    ap.add_argument("--round", type=int, required=True)
    for name in ("images", "labels", "features", "checkpoint-in", "out-checkpoint", "out-log"):
        ap.add_argument(f"--{name}")
    a = ap.parse_args(argv)

    import torch.distributed as dist

    from ..distributed import init_from_env
    from . import loop, stages
    from .config import RunConfig

    config = a.config or (Path(a.run_dir) / "config.json" if a.run_dir else None)
    if config is None:
        ap.error("give --run-dir or --config")
    cfg = RunConfig.from_dict(json.loads(Path(config).read_text()))
    r = a.round
    if a.run_dir:  # the flow's file layout
        paths, prev = loop.round_paths(cfg, r), loop.round_paths(cfg, r - 1)
        run_dir = Path(a.run_dir)
        defaults = {"images": run_dir / "images.parquet", "labels": paths["pseudo_labels"],
                    "features": paths["features"], "checkpoint_in": prev["checkpoint"] if r > 1 else None,
                    "out_checkpoint": paths["checkpoint"], "out_log": paths["train_log"]}
    else:
        defaults = {}
    arg = {k: getattr(a, k) or defaults.get(k) for k in ("images", "labels", "features", "checkpoint_in",
                                                           "out_checkpoint", "out_log")}
    missing = [k for k in ("images", "labels", "out_checkpoint", "out_log") if arg[k] is None]
    if missing:
        ap.error(f"missing {missing}")
    init_from_env(cfg.device)
    try:
        stages.train_epoch_stage(arg["images"], arg["labels"], arg["features"], arg["checkpoint_in"], cfg, r,
                                 arg["out_checkpoint"], arg["out_log"], progress=dist.get_rank() == 0)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
