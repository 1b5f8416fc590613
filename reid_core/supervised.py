"""Supervised objectives built from the metric-learning library, and one supervised epoch.

An objective is a ``+``-joined spec of terms, each applied to the model's ``return_dict`` output:

=================  ==========================================================================
term               what it adds
=================  ==========================================================================
``id``             cross-entropy with label smoothing (0.1) on the classifier logits
``triplet``        batch-hard triplet, margin 0.3, on the pooled feature (Euclidean on L2-normalised)
``triplet_semihard``, ``triplet_all``, ``triplet_soft``, ``triplet_improved``   the other miners / variants
``contrastive``    contrastive loss over all pairs of the batch (margin 0.5)
``quadruplet``     hardest quadruplets (alpha 0.3 > beta 0.15)
``softtriple``     SoftTriple (10 centres a class) on the BN feature
``verification``   siamese same/different head over all pairs of the batch
``aligned``        AlignedReID batch-hard triplet on global + local (shortest-path) distances;
                   needs a model built with ``local_branch=True``
=================  ==========================================================================

Metric terms (every term but ``id``, ``softtriple`` and ``verification``) only need labels that
group the batch, so they also work on pseudo-labels as *extra losses* of the unsupervised loop
(:data:`PSEUDO_LABEL_TERMS`); terms with per-class parameters need fixed ground-truth classes.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .device import autocast, pick_device, resolve_bf16, set_seed

TERMS = ("id", "triplet", "triplet_semihard", "triplet_all", "triplet_soft", "triplet_improved", "contrastive",
         "quadruplet", "softtriple", "verification", "aligned")
PSEUDO_LABEL_TERMS = ("triplet", "triplet_semihard", "triplet_all", "triplet_soft", "triplet_improved",
                      "contrastive", "quadruplet")


def parse_spec(spec: str | Sequence[str]) -> list[str]:
    terms = [t.strip() for t in (spec.split("+") if isinstance(spec, str) else spec) if t.strip()]
    unknown = [t for t in terms if t not in TERMS]
    if unknown or not terms:
        raise ValueError(f"loss spec {spec!r}: unknown term(s) {unknown}; choose from {TERMS}")
    return terms


class Objective(nn.Module):
    """Sum of the terms of ``spec``; ``forward(out, labels) -> (loss, stats)``."""

    def __init__(self, spec: str | Sequence[str], feat_dim: int, num_classes: int = 0):
        super().__init__()
        from .losses.contrastive_loss import ContrastiveLoss
        from .losses.id_loss import IDLoss
        from .losses.quadruplet_loss import QuadrupletLoss
        from .losses.triplet_loss import TripletMarginLoss

        self.terms = parse_spec(spec)
        self.losses = nn.ModuleDict()
        for term in self.terms:
            if term == "id":
                if num_classes < 1:
                    raise ValueError("loss term 'id' needs num_classes >= 1 (a model with a classifier)")
                self.losses[term] = IDLoss(epsilon=0.1)
            elif term == "triplet":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="batch_hard")
            elif term == "triplet_semihard":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="semi_hard")
            elif term == "triplet_all":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="batch_all")
            elif term == "triplet_soft":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="batch_hard", variant="soft")
            elif term == "triplet_improved":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="batch_hard", variant="improved")
            elif term == "contrastive":
                self.losses[term] = ContrastiveLoss(margin=0.5)
            elif term == "quadruplet":
                self.losses[term] = QuadrupletLoss(alpha=0.3, beta=0.15)
            elif term == "softtriple":
                from .losses.softtriple_loss import SoftTripleLoss

                if num_classes < 1:
                    raise ValueError("loss term 'softtriple' needs the number of classes")
                self.losses[term] = SoftTripleLoss(feat_dim, num_classes)
            elif term == "verification":
                from .losses.verification import VerificationHead, VerificationLoss

                self.losses[term] = VerificationLoss(VerificationHead(feat_dim))
            elif term == "aligned":
                from .losses.aligned_reid import AlignedTripletLoss

                self.losses[term] = AlignedTripletLoss(margin=0.3)

    @property
    def needs_logits(self) -> bool:
        return "id" in self.terms

    @property
    def needs_local(self) -> bool:
        return "aligned" in self.terms

    def forward(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = None
        stats: dict[str, float] = {}
        feat = out["feat"].float()
        bn = out["bn_feat"].float()
        for term, fn in self.losses.items():
            if term == "id":
                if "logits" not in out:
                    raise ValueError("loss term 'id': the model has no classifier (build it with num_classes)")
                value = fn(out["logits"].float(), labels)
            elif term == "softtriple":
                value = fn(bn, labels)
            elif term == "verification":
                value = fn(bn, labels)
            elif term == "aligned":
                if "local" not in out:
                    raise ValueError("loss term 'aligned': the model has no local branch (build it with local_branch=True)")
                value = fn(feat, out["local"].float(), labels)
            else:
                value = fn(feat, labels)
            stats[f"loss_{term}"] = float(value.detach())
            total = value if total is None else total + value
        return total, stats


def build_supervised_model(backbone: str, pretrained: bool, num_classes: int, spec: str):
    from .models import build_model

    terms = parse_spec(spec)
    return build_model(backbone, pretrained=pretrained, num_classes=num_classes if "id" in terms else 0,
                       local_branch="aligned" in terms)


def train_supervised_epoch(model: nn.Module, objective: Objective, paths: Sequence[str], labels, camids,
                           cfg, optimizer: torch.optim.Optimizer, epoch: int, progress: bool = True,
                           on_progress: Callable[[float], None] | None = None) -> pd.DataFrame:
    """``cfg.iters`` iterations of P x K batches on ground-truth ``labels`` (0..C-1).

    ``cfg`` is a :class:`reid_core.train.TrainConfig` (batch, bf16, device, seed). Returns one row
    per iteration: epoch, iteration, loss, one ``loss_<term>`` column per term, lr, seconds,
    images_per_s.
    """
    from .train import _epoch_seed, _resolve_channels_last, fp32_strided_depthwise, train_batches

    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) != len(paths):
        raise ValueError(f"labels: need one label per path ({len(paths)} paths, shape {labels.shape})")
    if (labels < 0).any():
        raise ValueError("labels: supervised training needs a label >= 0 for every image")
    device = pick_device(cfg.device)
    use_bf16 = resolve_bf16(cfg.bf16, device)
    channels_last = _resolve_channels_last(cfg.channels_last, use_bf16)
    set_seed(_epoch_seed(cfg.seed, epoch))
    model.to(device)
    objective.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    objective.train()
    loader = train_batches(paths, labels, camids, cfg, epoch, device)
    rows = []
    bar = tqdm(total=cfg.iters, desc=f"supervised epoch {epoch}", disable=not progress, leave=False)
    t_prev = time.perf_counter()
    islands = fp32_strided_depthwise(model, enabled=use_bf16 and bool(getattr(cfg, "fp32_strided_dw", False)))
    try:
        with islands:
            for i, (imgs, labs, _) in enumerate(loader):
                imgs = imgs.to(device, non_blocking=True)
                # one layout for both data paths (the memory path's batches come channels_last-strided)
                imgs = imgs.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                labs = labs.to(device, non_blocking=True)
                with autocast(device, use_bf16):
                    out = model(imgs, return_dict=True)
                loss, stats = objective(out, labs)
                if not torch.isfinite(loss):
                    from .errors import NonFiniteLossError

                    raise NonFiniteLossError(f"train_supervised_epoch: loss {loss.item()} at epoch {epoch}, "
                                             f"iteration {i}: {stats}", iteration=i, value=float(loss.item()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                t_end = time.perf_counter()
                seconds = t_end - t_prev
                rows.append({"epoch": int(epoch), "iteration": i, "global_iteration": int(epoch) * cfg.iters + i,
                             "loss": float(loss.detach()), **stats, "lr": float(optimizer.param_groups[0]["lr"]),
                             "seconds": seconds, "images_per_s": imgs.shape[0] / seconds if seconds > 0 else math.nan})
                t_prev = t_end
                bar.update(1)
                bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
                if on_progress is not None:
                    on_progress((i + 1) / cfg.iters)
    finally:
        bar.close()
    return pd.DataFrame(rows)


def build_supervised_optimizer(model: nn.Module, objective: Objective, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in objective.parameters() if p.requires_grad]
    from .train import adam_options

    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **adam_options(params, cfg))
