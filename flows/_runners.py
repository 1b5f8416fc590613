"""Task runners of the flows: the default in-process runner, or Dask (a ``LocalCluster`` started
for the flow, or a running Dask scheduler given by its address). Wiring only."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from prefect import flow

from tasks import extract_features_shard, merge_features

#: values of the flows' ``task_runner`` parameter (besides a scheduler address such as ``tcp://host:8786``)
LOCAL_RUNNERS = ("default", "dask", "dask-threads")


@contextlib.contextmanager
def dask_scheduler(task_runner: str, n_workers: int) -> Iterator[str | None]:
    """The Dask scheduler address the flow's sharded stages run on, for the flow's lifetime.

    ``"default"``: None (today's in-process runner). ``"dask"``: a ``distributed.LocalCluster`` of
    ``n_workers`` worker processes, one thread each. ``"dask-threads"``: the same with threads in
    this process (cheap; torch releases the GIL in its kernels). An address (``tcp://host:8786``)
    connects to a cluster someone started with ``dask scheduler`` / ``dask worker``.
    """
    spec = (task_runner or "default").strip()
    if spec == "default":
        yield None
    elif spec in ("dask", "dask-threads"):
        if int(n_workers) < 1:
            raise ValueError(f"dask_workers must be >= 1, got {n_workers}")
        from distributed import LocalCluster

        with LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=spec == "dask",
                          dashboard_address=None) as cluster:
            yield cluster.scheduler_address
    elif "://" in spec:
        yield spec
    else:
        raise ValueError(f"task_runner must be one of {LOCAL_RUNNERS} or a Dask scheduler address "
                         f"such as tcp://host:8786, got {task_runner!r}")


def shard_runner(address: str | None) -> Any:
    """The Prefect task runner of one sharded stage: Dask at ``address``, else in-process."""
    if address is None:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


@flow(name="extract-sharded", flow_run_name="extract-sharded-r{round_idx}", persist_result=False)
def extract_sharded(images_path: str, checkpoint_path: str | None, cfg: dict[str, Any], round_idx: int,
                    out_path: str, n_shards: int) -> Path:
    """Extract ``n_shards`` slices of the training images in parallel (one part file each, each
    resumed on its own), then merge the parts into ``features.parquet``."""
    from reid_core.pipeline.stages import feature_part_path

    futures = [extract_features_shard.submit(images_path, checkpoint_path, cfg, round_idx, s, n_shards,
                                             feature_part_path(out_path, s, n_shards))
               for s in range(n_shards)]
    parts = [f.result() for f in futures]
    return merge_features(parts, round_idx, out_path)


def extract_round(images: Path, checkpoint: Path | None, cfg: dict[str, Any], round_idx: int, out_path: Path,
                  address: str | None, n_shards: int, progress: bool) -> Path:
    """One round's feature extraction: today's single task when there is one shard and no Dask,
    else the sharded sub-flow on the Dask scheduler at ``address``."""
    from tasks import extract_features

    if address is None and n_shards <= 1:
        return extract_features(images, checkpoint, cfg, round_idx, out_path, progress=progress)
    sub = extract_sharded.with_options(task_runner=shard_runner(address))
    return Path(sub(str(images), None if checkpoint is None else str(checkpoint), cfg, round_idx, str(out_path),
                    max(int(n_shards), 1)))
