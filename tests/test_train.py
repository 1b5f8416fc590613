"""train_epoch on a tiny model and a handful of generated images."""
import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reid_core.models import build_model
from reid_core.train import (LOG_COLUMNS, TrainConfig, build_ise, build_memory, build_optimizer,
                             build_scheduler, train_epoch)

N_IDS, PER_ID = 4, 4


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths, labels, camids = [], [], []
    for pid in range(N_IDS):
        colour = rng.integers(0, 255, size=3)
        for j in range(PER_ID):
            arr = np.clip(colour + rng.normal(0, 30, size=(64, 32, 3)), 0, 255).astype(np.uint8)
            p = root / f"{pid:04d}_c{j % 2 + 1}_{j:06d}.jpg"
            Image.fromarray(arr).save(p)
            paths.append(str(p))
            labels.append(pid)
            camids.append(j % 2)
    labels = np.array(labels)
    labels[-1] = -1  # an outlier: never sampled
    return paths, labels, np.array(camids)


def _cfg(**kw):
    base = dict(height=64, width=32, p=2, k=2, iters=2, epochs=3, device="cpu", bf16=False, seed=7,
                num_workers=0, use_ise=True)
    base.update(kw)
    return TrainConfig(**base)


def _run(images, cfg, epoch=1):
    paths, labels, camids = images
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False)
    feats = torch.nn.functional.normalize(torch.randn(len(paths), model.feat_dim, generator=torch.Generator().manual_seed(1)), dim=1)
    memory = build_memory(feats.numpy(), labels, cfg)
    optimizer = build_optimizer(model, cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mem_before = memory.features.clone()
    log = train_epoch(model, paths, labels, camids, memory, cfg, optimizer, epoch, cfg.epochs, progress=False)
    return log, model, before, memory, mem_before


def test_train_epoch_runs_and_changes_things(images):
    cfg = _cfg()
    log, model, before, memory, mem_before = _run(images, cfg)
    assert isinstance(log, pd.DataFrame) and list(log.columns) == LOG_COLUMNS
    assert len(log) == cfg.iters
    assert np.isfinite(log["loss"]).all() and np.isfinite(log["loss_lp"]).all()
    assert log["global_iteration"].tolist() == [2, 3]  # epoch 1 of 2-iteration epochs
    assert (log["lambda"] > 0).all() and (log["images_per_s"] > 0).all()
    assert log["lr"].iloc[0] == pytest.approx(cfg.lr)
    after = model.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert len(changed) > 10
    assert not torch.equal(memory.features, mem_before)


def test_same_seed_same_losses(images):
    cfg = _cfg(num_workers=1)  # worker seeds come from (seed, epoch) too
    a = _run(images, cfg)[0]
    b = _run(images, cfg)[0]
    assert a["loss"].tolist() == b["loss"].tolist()
    c = _run(images, _cfg(seed=8, num_workers=1))[0]
    assert a["loss"].tolist() != c["loss"].tolist()


def test_baseline_bf16_channels_last(images):
    cfg = _cfg(use_ise=False, bf16=True, channels_last=True, memory_mode="momentum")
    log = _run(images, cfg, epoch=0)[0]
    assert np.isfinite(log["loss"]).all()
    assert log["loss_lp"].isna().all() and log["lambda"].isna().all()
    np.testing.assert_allclose(log["loss"], log["loss_memory"])


def test_build_helpers_and_errors(images):
    paths, labels, camids = images
    cfg = _cfg()
    model = build_model("mobilenet_v2", pretrained=False)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, cfg)
    n_train = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_train == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert opt.param_groups[0]["weight_decay"] == cfg.weight_decay
    sched = build_scheduler(opt, _cfg(step_size=2))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([3.5e-4, 3.5e-4, 3.5e-5, 3.5e-5, 3.5e-6])
    memory = build_memory(np.random.default_rng(0).normal(size=(len(paths), model.feat_dim)), labels, cfg)
    assert memory.num_clusters == N_IDS and memory.mode == "hard" and memory.momentum == 0.2
    ise = build_ise(memory, cfg)
    assert ise.use_interp and ise.use_lp
    off = build_ise(memory, _cfg(use_ise=False))
    assert not off.use_interp and not off.use_lp
    with pytest.raises(ValueError, match="epoch"):
        train_epoch(model, paths, labels, camids, memory, cfg, opt, 3, 3, progress=False)
    with pytest.raises(ValueError, match="labels"):
        train_epoch(model, paths, labels + 10, camids, memory, cfg, opt, 0, 3, progress=False)
    with pytest.raises(ValueError, match="memory_mode"):
        TrainConfig(memory_mode="soft")
    with pytest.raises(ValueError, match="iters"):
        TrainConfig(iters=0)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"pid": 1})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_train_epoch_takes_no_ground_truth():
    params = set(inspect.signature(train_epoch).parameters)
    assert not any("pid" in p or "gt" in p or "truth" in p for p in params)
    assert not any("pid" in f or "gt" in f for f in TrainConfig().to_dict())


def test_defaults():
    cfg = TrainConfig()
    assert (cfg.height, cfg.width, cfg.p, cfg.k, cfg.iters) == (256, 128, 16, 16, 200)
    assert (cfg.lr, cfg.weight_decay, cfg.step_size, cfg.gamma) == (3.5e-4, 5e-4, 20, 0.1)
    assert (cfg.temp, cfg.momentum, cfg.memory_mode) == (0.05, 0.2, "hard")
    assert (cfg.lp_weight, cfg.lp_temp, cfg.ise_lambda0, cfg.ise_k) == (0.1, 0.6, 1.0, 1)


class _Dummy(torch.nn.Module):
    def forward(self, out, labels):
        value = 0.01 * out["feat"].float().pow(2).mean()
        return value, {"loss_dummy": float(value.detach())}


def test_extra_loss_and_progress_callback(images):
    paths, labels, camids = images
    cfg = _cfg(use_ise=False)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False)
    memory = build_memory(np.random.default_rng(0).normal(size=(len(paths), model.feat_dim)), labels, cfg)
    seen = []
    log = train_epoch(model, paths, labels, camids, memory, cfg, build_optimizer(model, cfg), 0, cfg.epochs,
                      progress=False, extra_loss=_Dummy(), on_progress=seen.append)
    assert seen == [0.5, 1.0]
    assert list(log.columns) == LOG_COLUMNS + ["loss_dummy"]
    assert (log["loss_dummy"] > 0).all()
    np.testing.assert_allclose(log["loss"], log["loss_memory"] + log["loss_dummy"], rtol=1e-5)


def test_camera_proxies_add_their_losses(images):
    """Camera-aware proxies on: their two losses are logged, added to the total, and the proxies move."""
    from reid_core.train import build_camera_memory

    paths, labels, camids = images
    cfg = _cfg(use_ise=False, cam_intra_weight=1.0, cam_inter_weight=0.5)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False)
    feats = torch.nn.functional.normalize(torch.randn(len(paths), model.feat_dim,
                                                      generator=torch.Generator().manual_seed(1)), dim=1).numpy()
    memory = build_memory(feats, labels, cfg)
    cam_mem = build_camera_memory(feats, labels, camids, cfg)
    assert cam_mem is not None and cam_mem.num_proxies == len({(l, c) for l, c in zip(labels, camids) if l >= 0})
    before = cam_mem.features.clone()
    log = train_epoch(model, paths, labels, camids, memory, cfg, build_optimizer(model, cfg), 0, cfg.epochs,
                      progress=False, camera_memory=cam_mem)
    assert {"loss_cam_intra", "loss_cam_inter"} <= set(log.columns)
    np.testing.assert_allclose(log["loss"], log["loss_memory"] + log["loss_cam_intra"] + 0.5 * log["loss_cam_inter"],
                               rtol=1e-5)
    assert not torch.equal(cam_mem.features, before)
    # no camera ids (or an unknown one among the clustered samples): plain training
    assert build_camera_memory(feats, labels, None, cfg) is None
    assert build_camera_memory(feats, labels, np.full(len(labels), -1), cfg) is None
    assert build_camera_memory(feats, labels, camids, _cfg()) is None  # weights 0: off
