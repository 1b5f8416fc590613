"""DistributedDataParallel training on CPU (gloo): 2 ranks with p identities each match 1 process
with 2p identities (same seed) in the loss of the first iterations and in the memory's centroids,
and both ranks end with the same memory.

The model here has no BatchNorm, so the only differences left are float rounding (sums in another
order): tolerance 1e-4 relative on the loss, 1e-5 absolute on the centroids. With BatchNorm the
statistics are per device (B/2 images instead of B), which is the known, documented difference."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from reid_core.train import TrainConfig, build_ise, build_memory, build_optimizer, train_epoch

ITERS = 4
P, K = 4, 4  # one process: 4 identities x 4 images; two ranks: 2 x 4 each


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 32))


def _setup(data_root: str, p: int):
    from reid_core.data import load_market1501

    images = load_market1501(data_root)
    train = images[images["split"] == "train"].reset_index(drop=True)
    _, labels = np.unique(train["pid"].to_numpy(), return_inverse=True)
    cfg = TrainConfig(height=64, width=32, p=p, k=K, iters=ITERS, epochs=1, lr=1e-3, device="cpu", bf16=False,
                      channels_last=False, num_workers=0, seed=3, train_data="memory", use_ise=True)
    feats = np.random.default_rng(0).standard_normal((len(labels), 32)).astype(np.float32)
    return train["path"].tolist(), labels, train["camid"].to_numpy(), feats, cfg


def _train(data_root: str, p: int):
    paths, labels, camids, feats, cfg = _setup(data_root, p)
    model = _model()
    memory = build_memory(feats, labels, cfg, device="cpu")
    log = train_epoch(model, paths, labels, camids, memory, cfg, build_optimizer(model, cfg), epoch=0,
                      total_epochs=1, ise=build_ise(memory, cfg), progress=False)
    return log, memory.features.clone()


def _rank(rank: int, world: int, init_file: str, data_root: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        log, centroids = _train(data_root, P // world)
        log.to_parquet(os.path.join(out_dir, f"log{rank}.parquet"))
        torch.save(centroids, os.path.join(out_dir, f"memory{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from reid_core.data.synthetic import generate_synthetic

    return str(generate_synthetic(tmp_path_factory.mktemp("ddp") / "d", n_ids=12, n_cams=2, images_per_id_cam=3,
                                  seed=0, height=64, width=32))


def test_two_gloo_ranks_with_half_the_batch_match_one_process(data_root, tmp_path):
    import pandas as pd
    import torch.multiprocessing as mp

    single_log, single_mem = _train(data_root, P)
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), data_root, str(tmp_path)), nprocs=2, join=True)
    logs = [pd.read_parquet(tmp_path / f"log{r}.parquet") for r in range(2)]
    mems = [torch.load(tmp_path / f"memory{r}.pt", weights_only=True) for r in range(2)]

    # every rank holds the same memory, and it moved away from its initial centroids
    torch.testing.assert_close(mems[0], mems[1], rtol=0, atol=0)
    paths, labels, _, feats, cfg = _setup(data_root, P)
    init = build_memory(feats, labels, cfg, device="cpu").features
    assert (mems[0] - init).abs().max() > 1e-2
    # ... and it is the memory of one process with the whole batch
    torch.testing.assert_close(mems[0], single_mem, rtol=0, atol=1e-5)
    # the logged loss (global-batch mean) over the first iterations
    assert len(single_log) == ITERS and all(len(df) == ITERS for df in logs)
    np.testing.assert_allclose(logs[0]["loss"], single_log["loss"], rtol=1e-4)
    np.testing.assert_allclose(logs[0]["loss_lp"], single_log["loss_lp"], rtol=1e-4)
    assert (logs[0]["loss"] == logs[1]["loss"]).all()
    assert (logs[0]["per_device_batch"] == (P // 2) * K).all() and (logs[0]["world_size"] == 2).all()
    assert "per_device_batch" not in single_log.columns  # one process: today's log, unchanged


def test_training_stage_with_train_nproc_runs_torchrun_and_keys_the_cache_on_it(tmp_path, monkeypatch):
    import subprocess

    from reid_core.pipeline import stages
    from reid_core.pipeline.config import RunConfig

    assert "train_nproc" not in RunConfig().train_params()  # digests of existing runs unchanged
    assert RunConfig(train_nproc=2).train_params()["train_nproc"] == 2
    with pytest.raises(ValueError, match="train_nproc"):
        RunConfig(train_nproc=0)
    for name in ("images", "labels", "features"):
        (tmp_path / f"{name}.parquet").write_bytes(b"x")
    seen = {}

    def fake_run(cmd, check):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    cfg = RunConfig(train_nproc=2)
    with pytest.raises(RuntimeError, match="2 ranks.*exit code 3"):
        stages.train_epoch_stage(tmp_path / "images.parquet", tmp_path / "labels.parquet", tmp_path / "features.parquet",
                                 None, cfg, 1, tmp_path / "checkpoint.pt", tmp_path / "train_log.parquet")
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[cmd.index("-m", 2) + 1] == "reid_core.pipeline.ddp" and "--checkpoint-in" not in cmd
    assert RunConfig.from_dict(__import__("json").loads(
        (tmp_path / "checkpoint.ddp_config.json").read_text())) == cfg
