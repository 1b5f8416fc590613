"""One training epoch of Cluster-Contrast (+ optional ISE) on pseudo-labels.

Typical round (the Prefect task does exactly this)::

    cfg = TrainConfig(...)
    memory = build_memory(features, pseudo_labels, cfg)          # centroids from this round's features
    optimizer, scheduler = build_optimizer(model, cfg), build_scheduler(optimizer, cfg)
    for epoch in range(cfg.epochs):
        log = train_epoch(model, paths, pseudo_labels, camids, memory, cfg, optimizer, epoch, cfg.epochs)
        scheduler.step()

``train_epoch`` only ever sees **pseudo-labels** (cluster ids, ``-1`` = outlier, never sampled); it
has no argument through which ground-truth identities could enter.

Batch size and BatchNorm: a batch is ``p * k`` images (default 16 x 16 = 256) **per device**; the
BN neck and the backbone's BatchNorm layers compute their statistics over that batch, and the
memory's hard update and ISE's label-preserving loss look at the identities present in it, so
results change with the batch composition. Keep ``p * k`` (and ``k``) fixed when comparing runs;
on a small machine prefer fewer iterations over smaller batches.

Distributed training (``torchrun``, see :mod:`reid_core.distributed`): inside an initialised
process group of W ranks, :func:`train_epoch` wraps the model in ``DistributedDataParallel``, draws
the global batch of ``W * p`` identities x ``k`` images and trains each rank on its own ``p``
identities (per-device batch ``p * k``, logged as ``per_device_batch`` with ``world_size``); the
memory is updated from all ranks' features, so W ranks with ``p`` match one process with ``W * p``
up to per-device BatchNorm statistics. Supported on the ``train_data="memory"`` path without
camera proxies, extra losses or ``lp_positive="own"``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reid_core.data.dataset import TrainDataset
from reid_core.data.samplers import PKSampler
from reid_core.data.transforms import build_train_transform
from reid_core.device import autocast, loader_context, pick_device, resolve_bf16, set_seed
from reid_core.losses.camera_proxy import CameraProxyMemory
from reid_core.losses.cluster_memory import MEMORY_MODES, ClusterMemory
from reid_core.losses.ise_loss import ISELoss

#: ``"memory"``: images decoded once into a uint8 store, batch augmentation in the main process
#: (:mod:`reid_core.data.batch_augment`); ``"loader"``: DataLoader + per-image torchvision transforms
TRAIN_DATA_PATHS = ("memory", "loader")

LOG_COLUMNS = ["epoch", "iteration", "global_iteration", "loss", "loss_memory", "loss_lp", "lambda",
               "mean_cos_support", "lr", "seconds", "data_seconds", "images_per_s"]


@dataclass
class TrainConfig:
    """Training hyper-parameters (JSON-able; ``dataclasses.asdict`` gives the cache-key parameters).

    Defaults follow Cluster-Contrast / ISE on Market-1501 unless noted.

    Image / batch: ``height`` 256, ``width`` 128, ``p`` identities x ``k`` instances per batch
    (16 x 16 = 256 per device; see the module docstring about BatchNorm), ``iters`` iterations per
    epoch (200), ``epochs`` per round-run (50; the ISE ``lambda`` schedule spans all of them).
    Optimiser: Adam, ``lr`` 3.5e-4, ``weight_decay`` 5e-4; StepLR every ``step_size`` epochs (20) by
    ``gamma`` (0.1).
    Memory: ``temp`` 0.05, ``momentum`` 0.2 (weight of the old centroid: ``m <- mu m + (1 - mu) x``),
    ``memory_mode`` ``"hard"`` (Cluster-Contrast's hardest-instance update, the mode its paper and
    the ISE Market script use; ``"momentum"`` = batch-mean update).
    ISE: ``use_ise`` (True = full ISE; False = plain Cluster-Contrast), ``ise_lambda0`` 1.0,
    ``ise_k`` 1, ablation switches ``ise_interp`` / ``ise_lp``, ``lp_weight`` 0.1 (Market; use 0.01 for
    MSMT17-scale data), ``lp_temp`` 0.6, ``ise_update_with_support`` (memory also updated with the
    support samples, as the reference code does), ``ise_horizon`` (``T`` of the lambda schedule in
    iterations; 0 = ``epochs * iters``; lambda stays at its end value past ``T``), ``ise_start`` (global
    iteration before which ISE is off and training is plain Cluster-Contrast: a warm-up gate),
    ``lp_positive`` (``"hardest"`` same-label support sample, the paper's, or ``"own"``: the sample's
    own support samples; see :func:`reid_core.losses.ise_loss.label_preserving_loss`).
    Run time: ``bf16`` ("auto" = on where the device supports it), ``device`` ("auto"),
    ``channels_last`` ("auto" = with bf16), ``seed``, ``num_workers`` (DataLoader worker processes; 1 by
    default: on the 2-core CPU it hides the JPEG decoding + augmentation, ~0.4-0.7 s per 256-image
    batch, behind the model step - the wait for a batch drops to ~0.03 s - and measured at least as
    fast as 0; seeded from ``(seed, epoch)`` so runs stay reproducible), ``use_camids`` (the P x K sampler prefers
    other cameras of the same cluster when camera ids are known).
    Speed (none of them changes what is trained on; each can be switched off for the plain path):
    ``train_data`` (``"memory"``: each image decoded once per process into a uint8 store, flip /
    pad + crop / erasing done on the whole batch in the main process, no worker process,
    ``num_workers`` unused; ``"loader"``: the DataLoader path above), ``fused_adam`` (Adam's fused
    kernel: one pass over all parameters instead of ~10 small ops per tensor), ``fp32_strided_dw``
    (under bf16, the stride-2 depthwise convs run in float32: their bf16 backward is a slow oneDNN
    path on CPU, ~3x slower than fp32).
    """

    height: int = 256
    width: int = 128
    p: int = 16
    k: int = 16
    iters: int = 200
    epochs: int = 50
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    bf16: Any = "auto"
    device: str = "auto"
    channels_last: Any = "auto"
    seed: int = 0
    temp: float = 0.05
    momentum: float = 0.2
    memory_mode: str = "hard"
    use_ise: bool = True
    ise_lambda0: float = 1.0
    ise_k: int = 1
    ise_interp: bool = True
    ise_lp: bool = True
    lp_weight: float = 0.1
    lp_temp: float = 0.6
    ise_update_with_support: bool = True
    ise_horizon: int = 0
    ise_start: int = 0
    lp_positive: str = "hardest"
    num_workers: int = 1
    use_camids: bool = True
    cam_intra_weight: float = 0.0
    cam_inter_weight: float = 0.0
    cam_temp: float = 0.07
    cam_momentum: float = 0.2
    cam_hard_negatives: int = 50
    train_data: str = "memory"
    fused_adam: bool = True
    fp32_strided_dw: bool = True

    @property
    def camera_proxies(self) -> bool:
        """True when the camera-aware proxy losses are on (either weight > 0)."""
        return self.cam_intra_weight > 0 or self.cam_inter_weight > 0

    def __post_init__(self) -> None:
        for name in ("height", "width", "p", "k", "iters", "epochs", "step_size", "ise_k"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if self.train_data not in TRAIN_DATA_PATHS:
            raise ValueError(f"TrainConfig.train_data must be one of {TRAIN_DATA_PATHS}, got {self.train_data!r}")
        if self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"TrainConfig.memory_mode must be one of {MEMORY_MODES}, got {self.memory_mode!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 < self.gamma <= 1:
            raise ValueError(f"TrainConfig: need lr > 0, weight_decay >= 0, 0 < gamma <= 1 "
                             f"(got {self.lr}, {self.weight_decay}, {self.gamma})")
        if int(self.ise_horizon) != self.ise_horizon or self.ise_horizon < 0 or int(self.ise_start) != self.ise_start \
                or self.ise_start < 0:
            raise ValueError(f"TrainConfig: ise_horizon and ise_start must be integers >= 0 "
                             f"(got {self.ise_horizon!r}, {self.ise_start!r})")
        from reid_core.losses.ise_loss import LP_POSITIVES

        if self.lp_positive not in LP_POSITIVES:
            raise ValueError(f"TrainConfig.lp_positive must be one of {LP_POSITIVES}, got {self.lp_positive!r}")
        if self.cam_intra_weight < 0 or self.cam_inter_weight < 0 or not self.cam_temp > 0 \
                or not 0 <= self.cam_momentum <= 1 or int(self.cam_hard_negatives) < 1:
            raise ValueError("TrainConfig: camera proxies need weights >= 0, cam_temp > 0, 0 <= cam_momentum <= 1 "
                             f"and cam_hard_negatives >= 1 (got {self.cam_intra_weight}, {self.cam_inter_weight}, "
                             f"{self.cam_temp}, {self.cam_momentum}, {self.cam_hard_negatives})")
        if not 0 <= self.momentum <= 1 or not self.temp > 0:
            raise ValueError(f"TrainConfig: need 0 <= momentum <= 1 and temp > 0 (got {self.momentum}, {self.temp})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}")
        return cls(**d)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the parameters that require a gradient, with ``cfg.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no parameter requires a gradient")
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **adam_options(params, cfg))


def adam_options(params, cfg: TrainConfig) -> dict[str, Any]:
    """``{"fused": True}`` when ``cfg.fused_adam`` and every parameter is a floating-point tensor
    on a device with a fused Adam kernel (CPU, CUDA), else ``{}`` (torch's default)."""
    ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if getattr(cfg, "fused_adam", False) and ok else {}


def set_adam_options_(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Re-apply ``cfg.fused_adam`` after ``optimizer.load_state_dict`` (which restores the saved
    param groups' ``fused`` flag, e.g. of a checkpoint written by the plain path)."""
    if not isinstance(optimizer, torch.optim.Adam):
        return
    for group in optimizer.param_groups:
        fused = bool(adam_options(group["params"], cfg))
        group["fused"] = fused
        if fused:
            group["foreach"] = None


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """StepLR stepped once per epoch: lr x ``gamma`` every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)


def build_memory(features, labels, cfg: TrainConfig, device=None) -> ClusterMemory:
    """A :class:`ClusterMemory` initialised from this round's features and pseudo-labels
    (``-1`` ignored; clusters ``0..C-1``), on ``device`` (default: ``cfg.device``)."""
    labels = np.asarray(labels)
    n_clusters = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    if n_clusters == 0:
        raise ValueError("labels: no cluster (all samples are outliers); nothing to train on")
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    mem = ClusterMemory(feats.shape[1], n_clusters, temp=cfg.temp, momentum=cfg.momentum, mode=cfg.memory_mode)
    mem = mem.to(pick_device(device if device is not None else cfg.device))
    return mem.init_centroids(feats, labels)


def build_camera_memory(features, labels, camids, cfg: TrainConfig, device=None) -> CameraProxyMemory | None:
    """The round's :class:`CameraProxyMemory` when ``cfg.camera_proxies`` is on and every
    clustered sample has a known camera id; ``None`` otherwise (plain Cluster-Contrast: a set
    without camera ids falls back to today's training)."""
    if not cfg.camera_proxies or camids is None:
        return None
    labels = np.asarray(labels)
    cams = np.asarray(camids)
    if (cams[labels >= 0] < 0).any():
        return None
    mem = CameraProxyMemory(np.asarray(features).shape[1], temp=cfg.cam_temp, momentum=cfg.cam_momentum,
                            hard_negatives=cfg.cam_hard_negatives, intra_weight=cfg.cam_intra_weight,
                            inter_weight=cfg.cam_inter_weight)
    mem = mem.to(pick_device(device if device is not None else cfg.device))
    return mem.init_proxies(np.asarray(features, dtype=np.float32), labels, cams)


def build_ise(memory: ClusterMemory, cfg: TrainConfig) -> ISELoss:
    """The training criterion for ``cfg``: full / ablated ISE, or (``use_ise=False``) the plain
    cluster-memory loss wrapped in :class:`ISELoss` with both switches off."""
    on = bool(cfg.use_ise)
    return ISELoss(memory, lambda0=cfg.ise_lambda0, k=cfg.ise_k, use_interp=on and cfg.ise_interp,
                   use_lp=on and cfg.ise_lp, lp_weight=cfg.lp_weight, lp_temp=cfg.lp_temp,
                   update_with_support=cfg.ise_update_with_support, lp_positive=cfg.lp_positive)


def ise_horizon(cfg: TrainConfig, total_epochs: int) -> int:
    """``T`` of ISE's lambda schedule in iterations: ``cfg.ise_horizon``, or ``total_epochs * iters``."""
    return int(cfg.ise_horizon) if cfg.ise_horizon else int(total_epochs) * int(cfg.iters)


def _resolve_channels_last(option, bf16: bool) -> bool:
    if option in (None, "auto"):
        return bool(bf16)
    if isinstance(option, str):
        return option.lower() in ("1", "true", "yes", "on")
    return bool(option)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


def epoch_sampler(labels, camids, cfg: TrainConfig, epoch: int) -> PKSampler:
    """The epoch's P x K sampler (``cfg.iters`` batches, seeded by ``(seed, epoch)``); camera-aware
    when ``cfg.use_camids`` and every camera id is known."""
    labels = np.asarray(labels, dtype=np.int64)
    cams = None
    if cfg.use_camids and camids is not None:
        cams = np.asarray(camids, dtype=np.int64)
        if len(cams) != len(labels):
            raise ValueError(f"camids: {len(cams)} entries for {len(labels)} labels")
        if (cams < 0).any():
            cams = None  # unknown cameras: plain P x K sampling
    sampler = PKSampler(labels, camids=cams, p=cfg.p, k=cfg.k, num_iterations=cfg.iters, seed=cfg.seed)
    sampler.set_epoch(epoch)
    return sampler


def build_train_loader(paths: Sequence[str], labels, camids, cfg: TrainConfig, epoch: int,
                       pin_memory: bool = False) -> DataLoader:
    """The epoch's DataLoader: P x K sampler (``cfg.iters`` batches, seeded by ``(seed, epoch)``)."""
    labels = np.asarray(labels, dtype=np.int64)
    sampler = epoch_sampler(labels, camids, cfg, epoch)
    dataset = TrainDataset(paths, labels, build_train_transform(cfg.height, cfg.width))
    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    return DataLoader(dataset, sampler=sampler, batch_size=sampler.batch_size, drop_last=False,
                      num_workers=int(cfg.num_workers), pin_memory=pin_memory, generator=gen,
                      persistent_workers=False, multiprocessing_context=loader_context(int(cfg.num_workers)))


def train_batches(paths: Sequence[str], labels, camids, cfg: TrainConfig, epoch: int, device: torch.device,
                  rank: int = 0, world_size: int = 1):
    """The epoch's batches ``(images (B, 3, H, W) float32, labels (B,), dataset indices (B,))``:
    ``cfg.iters`` P x K batches (same indices on both paths), augmented by the ``cfg.train_data`` path.

    ``"memory"`` draws the augmentation from a generator seeded by ``(seed, epoch)``, so an epoch
    is reproducible; ``"loader"`` is :func:`build_train_loader`.

    ``world_size`` > 1 (``"memory"`` path only): every rank draws and augments the same global batch
    of ``world_size * p`` identities and keeps the ``p`` identities (``p * k`` rows) of ``rank``, so
    the ranks' slices together are exactly one process's batch of ``world_size * p`` identities."""
    if world_size > 1:
        if cfg.train_data != "memory":
            raise NotImplementedError("distributed training uses the train_data='memory' path")
        n_ids = len(np.unique(np.asarray(labels)[np.asarray(labels) >= 0]))
        if n_ids < cfg.p * world_size:
            raise ValueError(f"distributed training needs at least world_size x p = {world_size} x {cfg.p} clusters "
                             f"per batch, there are {n_ids}; lower p or the number of ranks")
        rows = slice(rank * cfg.p * cfg.k, (rank + 1) * cfg.p * cfg.k)
        whole = train_batches(paths, labels, camids, dataclasses.replace(cfg, p=cfg.p * world_size), epoch, device)
        return ((imgs[rows], labs[rows], idx[rows]) for imgs, labs, idx in whole)
    if cfg.train_data == "loader":
        return build_train_loader(paths, labels, camids, cfg, epoch, pin_memory=device.type == "cuda")
    from reid_core.data.batch_augment import BatchAugment, image_store

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(paths):
        raise ValueError(f"labels: need one label per path ({len(paths)} paths, {len(labels)} labels)")
    sampler = epoch_sampler(labels, camids, cfg, epoch)  # the loader path's batches, index for index
    store = image_store(paths, cfg.height, cfg.width)
    augment = BatchAugment(cfg.height, cfg.width)
    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))

    def batches():
        for idx in sampler.batches():
            idx = np.asarray(idx, dtype=np.int64)
            yield augment(store.batch(idx), gen), torch.from_numpy(labels[idx]), torch.from_numpy(idx)

    return batches()


def _strided_depthwise_convs(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in model.modules() if type(m) is torch.nn.Conv2d and m.groups > 1
            and m.groups == m.in_channels and max(m.stride) > 1]


class _FP32Conv2d(torch.nn.Conv2d):
    """A Conv2d that runs in float32 inside bf16 autocast (same parameters; set by class swap)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())


class fp32_strided_depthwise:
    """Context manager: while active, the stride-2 depthwise convs of ``model`` run in float32.

    Swaps their class for the duration (parameters, state-dict keys and the optimizer's references
    stay the same) and restores it on exit. Only MobileNetV2 has such convs here."""

    def __init__(self, model: torch.nn.Module, enabled: bool = True) -> None:
        self.convs = _strided_depthwise_convs(model) if enabled else []

    def __enter__(self):
        for m in self.convs:
            m.__class__ = _FP32Conv2d
        return self

    def __exit__(self, *exc) -> None:
        for m in self.convs:
            m.__class__ = torch.nn.Conv2d


def train_epoch(model: torch.nn.Module, paths: Sequence[str], labels, camids, memory: ClusterMemory,
                cfg: TrainConfig, optimizer: torch.optim.Optimizer, epoch: int, total_epochs: int,
                ise: ISELoss | None = None, progress: bool = True, extra_loss: torch.nn.Module | None = None,
                on_progress: Callable[[float], None] | None = None,
                camera_memory: CameraProxyMemory | None = None) -> pd.DataFrame:
    """Train ``model`` for ``cfg.iters`` iterations on pseudo-labelled images.

    Args:
        model: a :class:`reid_core.models.ReIDModel` (train mode returns unnormalised BN-neck features).
        paths: image paths, one per sample.
        labels: **pseudo-labels** (``-1`` = outlier, never sampled; clusters ``0..C-1`` of ``memory``).
        camids: camera ids or ``None`` (``-1`` = unknown disables camera-aware sampling).
        memory: the round's :class:`ClusterMemory` (updated in place every iteration).
        cfg: :class:`TrainConfig`.
        optimizer: from :func:`build_optimizer`; the scheduler is stepped by the caller per epoch.
        epoch, total_epochs: 0-based epoch and the number of epochs; the ISE schedule uses
            ``t = epoch * iters + i`` out of ``T = total_epochs * iters`` (or ``cfg.ise_horizon``
            when set; ``t`` is capped at ``T``), and ISE is off while ``t < cfg.ise_start``.
        ise: criterion (an :class:`ISELoss` on ``memory``); ``None`` = :func:`build_ise` from ``cfg``.
        progress: tqdm progress bar.
        extra_loss: optional module ``extra_loss(out, labels) -> (loss, stats)`` on the model's
            ``return_dict=True`` output (e.g. :class:`reid_core.supervised.Objective` with metric losses
            on pseudo-labels); its loss is added to the total and each ``stats`` key becomes a column.
            Its parameters must be in ``optimizer`` if it has any.
        on_progress: called with the finished fraction of the epoch after every iteration.
        camera_memory: optional :class:`CameraProxyMemory` of this round (from
            :func:`build_camera_memory` with the same ``labels`` / ``camids``); its intra- and
            inter-camera losses are added and it is updated every iteration (columns
            ``loss_cam_intra``, ``loss_cam_inter``).

    Returns one row per iteration with columns ``LOG_COLUMNS``: ``epoch``, ``iteration`` (0-based in
    the epoch), ``global_iteration`` (``t``), ``loss`` (total), ``loss_memory``, ``loss_lp`` (nan when
    off), ``lambda`` and ``mean_cos_support`` (nan without support samples), ``lr``, ``seconds`` (wall
    time of the iteration, data wait included), ``data_seconds`` (time waiting for the batch),
    ``images_per_s`` (+ the ``extra_loss`` stats columns).
    """
    if not 0 <= int(epoch) < int(total_epochs):
        raise ValueError(f"epoch must lie in [0, total_epochs={total_epochs}), got {epoch}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(paths):
        raise ValueError(f"labels: need one pseudo-label per path ({len(paths)} paths, shape {labels.shape})")
    if labels.size and int(labels.max()) >= memory.num_clusters:
        raise ValueError(f"labels: pseudo-label {int(labels.max())} but the memory has "
                         f"{memory.num_clusters} clusters")
    device = pick_device(cfg.device)
    use_bf16 = resolve_bf16(cfg.bf16, device)
    channels_last = _resolve_channels_last(cfg.channels_last, use_bf16)
    criterion = ise if ise is not None else build_ise(memory, cfg)
    if criterion.memory is not memory:
        raise ValueError("ise: its memory is not the `memory` passed to train_epoch")

    from reid_core import distributed as dist_utils

    rank, world = dist_utils.rank_and_world()
    if world > 1:
        unsupported = [name for name, on in (("camera proxies", camera_memory is not None),
                                             ("extra losses", extra_loss is not None)) if on]
        if unsupported:
            raise NotImplementedError(f"distributed training does not support {', '.join(unsupported)} yet")
    set_seed(_epoch_seed(cfg.seed, epoch))  # transforms in the main process use the global RNG
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    memory.to(device)
    model.train()
    net = model
    if world > 1:  # every rank already holds the same weights (same checkpoint); DDP checks and averages
        gpu = (device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if gpu is None else [gpu])
        memory.gather = dist_utils.all_gather_cat
        criterion.gather, criterion.gather_with_grad = dist_utils.all_gather_cat, dist_utils.all_gather_with_grad
    if extra_loss is not None:
        extra_loss.to(device)
        extra_loss.train()
    loader = train_batches(paths, labels, camids, cfg, epoch, device, rank=rank, world_size=world)
    cam_all = None
    if camera_memory is not None:
        if camids is None:
            raise ValueError("camera_memory needs camids")
        cam_all = torch.as_tensor(np.asarray(camids, dtype=np.int64))
        camera_memory.to(device)

    T = ise_horizon(cfg, total_epochs)
    rows = []
    bar = tqdm(total=cfg.iters, desc=f"train epoch {epoch}", disable=not progress, leave=False)
    t_prev = time.perf_counter()
    islands = fp32_strided_depthwise(model, enabled=use_bf16 and bool(cfg.fp32_strided_dw))
    try:
        with islands:
            for i, (imgs, labs, idx) in enumerate(loader):
                t_data = time.perf_counter()
                imgs = imgs.to(device, non_blocking=True)
                # one layout for both data paths (the memory path's batches come channels_last-strided)
                imgs = imgs.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                labs = labs.to(device, non_blocking=True)
                t = int(epoch) * cfg.iters + i
                with autocast(device, use_bf16):
                    if extra_loss is None:
                        out, feats = None, net(imgs)
                    else:
                        out = net(imgs, return_dict=True)
                        feats = out["bn_feat"]  # what model(imgs) returns in train mode
                loss, stats = criterion(feats.float(), labs, min(t, T), T, active=t >= int(cfg.ise_start))
                extra_stats: dict[str, float] = {}
                if camera_memory is not None:
                    cams = cam_all[torch.as_tensor(idx)].to(device)
                    cam_loss, cam_stats = camera_memory(feats.float(), labs, cams)
                    camera_memory.update(feats.detach().float(), labs, cams)
                    loss = loss + cam_loss
                    extra_stats.update(cam_stats)
                if extra_loss is not None:
                    extra_value, more_stats = extra_loss(out, labs)
                    extra_stats.update(more_stats)
                    loss = loss + extra_value
                if not torch.isfinite(loss):
                    from .errors import NonFiniteLossError

                    raise NonFiniteLossError(f"train_epoch: loss is {loss.item()} at epoch {epoch}, iteration {i} "
                                             f"(memory loss {stats['loss_memory']}, lp {stats['loss_lp']}"
                                             f"{', ' + str(extra_stats) if extra_stats else ''})",
                                             iteration=i, value=float(loss.item()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_value = float(loss.detach())
                if world > 1:  # log the loss of the global batch, as one process would
                    loss_value = dist_utils.all_reduce_mean(loss_value, device)
                    stats = {key: dist_utils.all_reduce_mean(v, device) for key, v in stats.items()}
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t_end = time.perf_counter()
                seconds = t_end - t_prev
                rows.append({
                    "epoch": int(epoch), "iteration": i, "global_iteration": t, "loss": loss_value,
                    "loss_memory": stats["loss_memory"], "loss_lp": stats["loss_lp"], "lambda": stats["lambda"],
                    "mean_cos_support": stats["mean_cos_support"], "lr": float(optimizer.param_groups[0]["lr"]),
                    "seconds": seconds, "data_seconds": t_data - t_prev,
                    "images_per_s": imgs.shape[0] * world / seconds if seconds > 0 else math.nan,
                    **{k: float(v) for k, v in extra_stats.items()},
                    **({"world_size": world, "per_device_batch": int(imgs.shape[0])} if world > 1 else {}),
                })
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", ips=f"{rows[-1]['images_per_s']:.0f}")
                t_prev = t_end
                if on_progress is not None:
                    on_progress((i + 1) / cfg.iters)
    finally:
        bar.close()
        if world > 1:
            memory.gather = None
            criterion.gather = criterion.gather_with_grad = None
    df = pd.DataFrame(rows)
    extra_cols = [c for c in df.columns if c not in LOG_COLUMNS]
    return df.reindex(columns=LOG_COLUMNS + extra_cols)


__all__ = ["LOG_COLUMNS", "TRAIN_DATA_PATHS", "TrainConfig", "adam_options", "build_camera_memory", "build_ise",
           "build_memory", "build_optimizer", "build_scheduler", "build_train_loader", "epoch_sampler",
           "fp32_strided_depthwise", "ise_horizon", "set_adam_options_", "train_batches", "train_epoch"]
