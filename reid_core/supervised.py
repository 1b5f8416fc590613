"""Supervised objectives built from the metric-learning library, and one supervised epoch.

An objective is a ``+``-joined spec of terms, each applied to the model's ``return_dict`` output:

=================  ==========================================================================
term               what it adds
=================  ==========================================================================
``id``             cross-entropy with label smoothing (0.1) on the classifier logits
``triplet``        batch-hard triplet, margin 0.3, on the pooled feature (Euclidean on L2-normalised)
``triplet_semihard``, ``triplet_all``, ``triplet_soft``, ``triplet_improved``   the other miners / variants
``triplet_offline`` batch-hard triplet whose triplets are mined *offline*: with the embeddings of a
                   frozen snapshot of the network taken at the start of the round (epoch), as in
                   FaceNet's "offline" generation from the latest checkpoint; the loss is on the
                   live embeddings. Costs one extra no-grad forward pass a batch.
``contrastive``    contrastive loss over all pairs of the batch (margin 0.5)
``quadruplet``     hardest quadruplets (alpha 0.3 > beta 0.15)
``softtriple``     SoftTriple (10 centres a class) on the BN feature
``softtriple_k1``  SoftTriple with one centre a class (the paper's K = 1 baseline: a smoothed softmax)
``verification``   siamese same/different head over all pairs of the batch, weighted by
                   ``verification_weight`` (default 1)
``aligned``        AlignedReID batch-hard triplet on global + local (shortest-path) distances;
                   needs a model built with ``local_branch=True``. The local term's weight and
                   scale (``"mean"``: path length / (2H - 1), the default; ``"sum"``: the raw
                   path length, whose gradient outweighs the global term's ~2H - 1 times) are
                   ``aligned_local_weight`` / ``aligned_local_scale``
=================  ==========================================================================

Metric terms (every term but ``id``, ``softtriple`` and ``verification``) only need labels that
group the batch, so they also work on pseudo-labels as *extra losses* of the unsupervised loop
(:data:`PSEUDO_LABEL_TERMS`); terms with per-class parameters need fixed ground-truth classes.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .device import autocast, pick_device, resolve_bf16, set_seed

TERMS = ("id", "triplet", "triplet_semihard", "triplet_all", "triplet_soft", "triplet_improved", "triplet_offline",
         "contrastive",
         "quadruplet", "softtriple", "softtriple_k1", "verification", "aligned")
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

    def __init__(self, spec: str | Sequence[str], feat_dim: int, num_classes: int = 0,
                 aligned_local_weight: float = 1.0, aligned_local_scale: str = "mean",
                 verification_weight: float = 1.0):
        super().__init__()
        from .losses.contrastive_loss import ContrastiveLoss
        from .losses.id_loss import IDLoss
        from .losses.quadruplet_loss import QuadrupletLoss
        from .losses.triplet_loss import TripletMarginLoss

        self.terms = parse_spec(spec)
        self.aligned_local_weight = float(aligned_local_weight)
        self.aligned_local_scale = aligned_local_scale
        if not verification_weight >= 0:
            raise ValueError(f"verification_weight: must be >= 0, got {verification_weight}")
        self.verification_weight = float(verification_weight)
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
            elif term == "triplet_offline":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="batch_hard")
            elif term == "triplet_improved":
                self.losses[term] = TripletMarginLoss(margin=0.3, miner="batch_hard", variant="improved")
            elif term == "contrastive":
                self.losses[term] = ContrastiveLoss(margin=0.5)
            elif term == "quadruplet":
                self.losses[term] = QuadrupletLoss(alpha=0.3, beta=0.15)
            elif term in ("softtriple", "softtriple_k1"):
                from .losses.softtriple_loss import SoftTripleLoss

                if num_classes < 1:
                    raise ValueError(f"loss term {term!r} needs the number of classes")
                self.losses[term] = SoftTripleLoss(feat_dim, num_classes,
                                                   centers_per_class=1 if term == "softtriple_k1" else 10)
            elif term == "verification":
                from .losses.verification import VerificationHead, VerificationLoss

                self.losses[term] = VerificationLoss(VerificationHead(feat_dim))
            elif term == "aligned":
                from .losses.aligned_reid import AlignedTripletLoss

                self.losses[term] = AlignedTripletLoss(margin=0.3, local_weight=aligned_local_weight,
                                                       local_scale=aligned_local_scale)

    @property
    def needs_logits(self) -> bool:
        return "id" in self.terms

    @property
    def needs_snapshot(self) -> bool:
        """True when a term mines with a round-start snapshot of the network (``snapshot_feat``)."""
        return "triplet_offline" in self.terms

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
            elif term in ("softtriple", "softtriple_k1"):
                value = fn(bn, labels)
            elif term == "verification":
                value = fn(bn, labels)
            elif term == "triplet_offline":
                if "snapshot_feat" not in out:
                    raise ValueError("loss term 'triplet_offline': needs out['snapshot_feat'] (the round-start "
                                     "snapshot's embeddings of the batch; train_supervised_epoch adds them)")
                a, p, n = fn.miner(out["snapshot_feat"].float(), labels)
                value = fn(feat, labels, indices_tuple=(a, p, n))
            elif term == "aligned":
                if "local" not in out:
                    raise ValueError("loss term 'aligned': the model has no local branch (build it with local_branch=True)")
                value = fn(feat, out["local"].float(), labels)
                # the two parts, so a run's train log shows how much the local term weighs
                stats["loss_aligned_global"] = fn.last_stats.get("loss_global", 0.0)
                stats["loss_aligned_local"] = fn.last_stats.get("loss_local", 0.0)
            else:
                value = fn(feat, labels)
            stats[f"loss_{term}"] = float(value.detach())  # unweighted, comparable across weights
            if term == "verification":
                value = self.verification_weight * value
            total = value if total is None else total + value
        return total, stats


def build_supervised_model(backbone: str, pretrained: bool, num_classes: int, spec: str):
    from .models import build_model

    terms = parse_spec(spec)
    return build_model(backbone, pretrained=pretrained, num_classes=num_classes if "id" in terms else 0,
                       local_branch="aligned" in terms)


@dataclass
class MutualPartner:
    """The second network of deep mutual learning (AlignedReID's "mutual learning"): its own
    objective and optimizer, plus the :class:`~reid_core.losses.aligned_reid.MutualLearningLoss`
    that ties it to the first network (KL between the classifiers, squared difference of the two
    batch distance matrices; each network gets the gradient of its own side only)."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    mutual: nn.Module


def build_mutual_partner(model: nn.Module, objective: Objective, spec: str, num_classes: int, cfg,
                         pretrained: bool, backbone: str, init_seed: int, state: dict | None = None) -> MutualPartner:
    """The partner network for ``mutual_learning``: same architecture and objective as ``model``;
    a fresh build (classifier and local branch drawn from ``init_seed``, so the two networks
    differ) or, when ``state`` holds ``partner_model``, the partner saved in the last checkpoint."""
    from .losses.aligned_reid import MutualLearningLoss

    if "id" not in objective.terms:
        raise ValueError(f"mutual learning needs the 'id' term (its KL term compares the classifiers); "
                         f"supervised_loss is {spec!r}")
    if objective.needs_snapshot:
        raise ValueError(f"mutual learning with offline mining ({spec!r}) is not supported: the partner has no snapshot")
    device = next(model.parameters()).device
    if state and "partner_model" in state:
        partner = build_supervised_model(backbone, False, num_classes, spec)
        partner.load_state_dict(state["partner_model"], strict=True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            partner = build_supervised_model(backbone, pretrained, num_classes, spec)
    partner.to(device)
    partner_objective = Objective(spec, partner.feat_dim, num_classes,  # the first network's settings
                                  aligned_local_weight=objective.aligned_local_weight,
                                  aligned_local_scale=objective.aligned_local_scale,
                                  verification_weight=objective.verification_weight).to(device)
    if state and "partner_objective" in state:
        partner_objective.load_state_dict(state["partner_objective"])
    optimizer = build_supervised_optimizer(partner, partner_objective, cfg)
    if state and "partner_optimizer" in state:
        optimizer.load_state_dict(state["partner_optimizer"])
    return MutualPartner(partner, partner_objective, optimizer, MutualLearningLoss().to(device))


def partner_state(partner: MutualPartner) -> dict:
    """Checkpoint extras of the partner network (tensors only, so ``weights_only`` loads them)."""
    return {"partner_model": {k: v.detach().cpu().clone() for k, v in partner.model.state_dict().items()},
            "partner_objective": {k: v.detach().cpu() for k, v in partner.objective.state_dict().items()},
            "partner_optimizer": partner.optimizer.state_dict()}


def train_supervised_epoch(model: nn.Module, objective: Objective, paths: Sequence[str], labels, camids,
                           cfg, optimizer: torch.optim.Optimizer, epoch: int, progress: bool = True,
                           on_progress: Callable[[float], None] | None = None,
                           partner: MutualPartner | None = None) -> pd.DataFrame:
    """``cfg.iters`` iterations of P x K batches on ground-truth ``labels`` (0..C-1).

    ``cfg`` is a :class:`reid_core.train.TrainConfig` (batch, bf16, device, seed). Returns one row
    per iteration: epoch, iteration, loss, one ``loss_<term>`` column per term, lr, seconds,
    images_per_s. With a ``partner`` (mutual learning) both networks see the same batch and the
    loss is ``L_1 + L_2 + L_mutual``; the rows add ``loss_partner``, ``loss_mutual_kl`` and
    ``loss_mutual_metric``, and ``images_per_s`` counts each image once (two networks' work).
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
    nets = [(model, objective)] + ([(partner.model, partner.objective)] if partner is not None else [])
    for net, obj in nets:
        net.to(device)
        obj.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        net.train()
        obj.train()
    loader = train_batches(paths, labels, camids, cfg, epoch, device)
    rows = []
    bar = tqdm(total=cfg.iters, desc=f"supervised epoch {epoch}", disable=not progress, leave=False)
    t_prev = time.perf_counter()
    snapshot = None
    if objective.needs_snapshot:  # offline mining: a frozen copy of the network as it starts the round
        snapshot = copy.deepcopy(model).eval()
        for prm in snapshot.parameters():
            prm.requires_grad_(False)
    dw_enabled = use_bf16 and bool(getattr(cfg, "fp32_strided_dw", False))
    islands = contextlib.ExitStack()
    for net, _ in nets:
        islands.enter_context(fp32_strided_depthwise(net, enabled=dw_enabled))
    try:
        with islands:
            for i, (imgs, labs, _) in enumerate(loader):
                imgs = imgs.to(device, non_blocking=True)
                # one layout for both data paths (the memory path's batches come channels_last-strided)
                imgs = imgs.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                labs = labs.to(device, non_blocking=True)
                with autocast(device, use_bf16):
                    out = model(imgs, return_dict=True)
                if snapshot is not None:
                    with torch.no_grad(), autocast(device, use_bf16):
                        out["snapshot_feat"] = snapshot(imgs, return_dict=True)["feat"]
                loss, stats = objective(out, labs)
                if partner is not None:
                    with autocast(device, use_bf16):
                        out2 = partner.model(imgs, return_dict=True)
                    loss2, _ = partner.objective(out2, labs)
                    local = (out["local"].float(), out2["local"].float()) if objective.needs_local else (None, None)
                    mutual = partner.mutual(out["logits"].float(), out2["logits"].float(), out["feat"].float(),
                                            out2["feat"].float(), *local)
                    stats.update(loss_partner=float(loss2.detach()), loss_mutual_kl=partner.mutual.last_stats["loss_kl"],
                                 loss_mutual_metric=partner.mutual.last_stats["loss_metric"])
                    loss = loss + loss2 + mutual
                if not torch.isfinite(loss):
                    from .errors import NonFiniteLossError

                    raise NonFiniteLossError(f"train_supervised_epoch: loss {loss.item()} at epoch {epoch}, "
                                             f"iteration {i}: {stats}", iteration=i, value=float(loss.item()))
                optimizer.zero_grad(set_to_none=True)
                if partner is not None:
                    partner.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if partner is not None:
                    partner.optimizer.step()
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
