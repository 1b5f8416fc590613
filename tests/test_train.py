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


def test_ise_before_its_start_trains_exactly_like_no_ise(images):
    """The issue-11 winner switches ISE on at iteration 1,000: before ``ise_start`` an ISE run must be
    the plain run bit for bit (losses, weights, memory), so its early rounds are the no-ISE rounds."""
    common = dict(lp_positive="own", ise_update_with_support=False, ise_horizon=10)
    plain = _run(images, _cfg(use_ise=False, **common))  # epoch 1: global iterations 2 and 3
    gated = _run(images, _cfg(use_ise=True, ise_start=4, **common))
    assert gated[0]["loss"].tolist() == plain[0]["loss"].tolist()
    assert gated[0]["loss_lp"].isna().all() and gated[0]["lambda"].isna().all()
    for key, value in plain[1].state_dict().items():
        assert torch.equal(gated[1].state_dict()[key], value), key
    assert torch.equal(gated[3].features, plain[3].features)
    # from ise_start on it is ISE: iteration 2 still plain, iteration 3 with support samples
    half = _run(images, _cfg(use_ise=True, ise_start=3, **common))[0]
    assert half["loss"].iloc[0] == plain[0]["loss"].iloc[0]
    assert np.isnan(half["loss_lp"].iloc[0]) and np.isfinite(half["loss_lp"].iloc[1])
    assert half["lambda"].iloc[1] > 0 and half["loss"].iloc[1] != plain[0]["loss"].iloc[1]


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


def _no_augmentation(monkeypatch):
    """Switch flip / pad + crop / erasing off on both data paths, so both see the same pixels."""
    import functools

    import reid_core.data.batch_augment as batch_augment
    import reid_core.train as train

    monkeypatch.setattr(train, "build_train_transform",
                        functools.partial(train.build_train_transform, flip_p=0, pad=0, erase_p=0))
    monkeypatch.setattr(batch_augment, "BatchAugment",
                        functools.partial(batch_augment.BatchAugment, flip_p=0, pad=0, erase_p=0))


FAST = dict(train_data="memory", fused_adam=True, fp32_strided_dw=True)
PLAIN = dict(train_data="loader", fused_adam=False, fp32_strided_dw=False)


def test_memory_data_path_gives_the_plain_losses_exactly(images, monkeypatch):
    """Same batches, augmentation off, fp32: the uint8 store + batched preprocessing feeds the
    model bit-identical pixels, so every loss of the first iterations is the same float."""
    _no_augmentation(monkeypatch)
    common = dict(iters=4, bf16=False, use_ise=False, fused_adam=False)
    fast = _run(images, _cfg(**common, train_data="memory"), epoch=0)[0]
    plain = _run(images, _cfg(**common, train_data="loader"), epoch=0)[0]
    assert fast["loss"].tolist() == plain["loss"].tolist()
    other = _run(images, _cfg(**common, train_data="memory", seed=8), epoch=0)[0]  # other batches
    assert other["loss"].tolist() != plain["loss"].tolist()


def test_fast_path_same_losses_as_plain_path_fp32(images, monkeypatch):
    """The whole fast path (memory data + fused Adam) against the plain path, fp32: the same loss
    over the first 3 iterations within 1e-4 relative (the fused kernel rounds differently; these
    4-image batches of a random-init net amplify rounding quickly, so later iterations drift)."""
    _no_augmentation(monkeypatch)
    common = dict(iters=3, bf16=False, use_ise=False)
    fast = _run(images, _cfg(**common, **FAST), epoch=0)
    plain = _run(images, _cfg(**common, **PLAIN), epoch=0)
    np.testing.assert_allclose(fast[0]["loss"], plain[0]["loss"], rtol=1e-4)
    other = _run(images, _cfg(**common, **FAST, seed=8), epoch=0)[0]
    assert not np.allclose(other["loss"], plain[0]["loss"], rtol=1e-4)


def test_fused_adam_step_matches_plain_adam():
    """One and five steps of the fused Adam against torch's for-loop Adam on the same gradients."""
    torch.manual_seed(0)
    shapes = [(32, 3, 3, 3), (32,), (1280, 320)]
    init = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
    runs = []
    for fused in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        cfg = _cfg(fused_adam=fused)
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               **__import__("reid_core.train", fromlist=["adam_options"]).adam_options(params, cfg))
        assert opt.param_groups[0]["fused"] is (True if fused else None)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        runs.append(params)
    for a, b, t in zip(*runs, init):
        assert not torch.equal(a, t)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fp32_islands_bring_bf16_features_closer_to_fp32(images):
    """bf16 training forward with and without the fp32 stride-2 depthwise convs, against fp32:
    the islands must not move the features away from fp32 (they are more precise, not different)."""
    from reid_core.data.batch_augment import ImageStore
    from reid_core.train import fp32_strided_depthwise

    paths = images[0]
    store = ImageStore(paths, 64, 32)
    x = (store.batch(np.arange(len(paths))).permute(0, 3, 1, 2).float() / 255 - 0.45) / 0.225
    x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=True).train().to(memory_format=torch.channels_last)
    with torch.no_grad():  # the pooled feature (the train-mode BN neck re-scales by batch statistics)
        ref = model(x, return_dict=True)["feat"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(x, return_dict=True)["feat"].float()
            with fp32_strided_depthwise(model):
                islands = model(x, return_dict=True)["feat"].float()

    def err(f):
        return float((1 - torch.nn.functional.cosine_similarity(f, ref, dim=1)).max())

    print("max 1 - cosine to fp32: bf16", err(plain), "bf16 + fp32 islands", err(islands))
    assert err(islands) <= err(plain) * 1.05 + 1e-6


def test_checkpoint_optimizer_state_keeps_the_configured_adam():
    from reid_core.train import set_adam_options_

    model = torch.nn.Linear(3, 2)
    plain = build_optimizer(model, _cfg(fused_adam=False))
    fused = build_optimizer(model, _cfg(fused_adam=True))
    fused.load_state_dict(plain.state_dict())  # restores the writer's flags
    assert not fused.param_groups[0]["fused"]
    set_adam_options_(fused, _cfg(fused_adam=True))
    assert fused.param_groups[0]["fused"] is True
    model(torch.randn(4, 3)).sum().backward()
    fused.step()


def test_fast_path_reproducible_and_augments(images):
    a = _run(images, _cfg(**FAST))[0]
    b = _run(images, _cfg(**FAST))[0]
    assert a["loss"].tolist() == b["loss"].tolist()
    c = _run(images, _cfg(**FAST, seed=8))[0]
    assert a["loss"].tolist() != c["loss"].tolist()


def test_train_data_option_checked():
    with pytest.raises(ValueError, match="train_data"):
        TrainConfig(train_data="disk")


def test_fp32_strided_depthwise_islands():
    from reid_core.train import fp32_strided_depthwise

    model = build_model("mobilenet_v2", pretrained=False)
    params = list(model.parameters())
    with fp32_strided_depthwise(model) as islands:
        assert len(islands.convs) == 3  # stride-2 depthwise convs of MobileNetV2 with last stride 1
        x = torch.randn(2, 3, 64, 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = islands.convs[0](torch.randn(2, islands.convs[0].in_channels, 16, 8, dtype=torch.bfloat16))
        assert out.dtype == torch.float32
        model(x)
    assert all(type(c) is torch.nn.Conv2d for c in islands.convs)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert not fp32_strided_depthwise(build_model("resnet50", pretrained=False)).convs
