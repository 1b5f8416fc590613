"""Triplet loss computed per image on a P x K batch.

One forward pass per image; the ``(B, B)`` distance matrix of the batch is computed once and every
triplet is read from it, so the cost grows with the number of images and not with the number of
triplets (Ding et al. 2015, "Deep feature learning with relative distance comparison for person
re-identification"). The gradient is the same as running the network on the three members of
every triplet separately (``tests/losses/test_triplet.py`` checks this; ``bench/triplet.py``
times both).

Per-triplet terms (``variant``):

* ``"hinge"``    ``max(0, d(a,p) - d(a,n) + margin)``;
* ``"soft"``     ``log(1 + exp(d(a,p) - d(a,n)))`` (soft margin, Hermans et al. 2017; ``margin`` unused);
* ``"improved"`` ``max(0, d(a,p) - d(a,n) + margin) + pull_weight * max(d(a,p), pull_threshold)``
  (Cheng et al. 2016's improved triplet loss: the hinge plus a weak pull of the positive pair
  towards the anchor, active only above an intra-class threshold; defaults beta = 0.002 and
  tau2 = 0.01, the paper's values). With weight 1 and threshold 0 the pull dominates and training
  shrinks every distance towards 0 (3 seeds, 5.8 mAP against 41.4 for the hinge; README claims).

Mining (``miner``): ``"batch_hard"`` (default; hardest positive and negative per anchor),
``"semi_hard"`` (all triplets with ``d(a,p) < d(a,n) < d(a,p) + margin``), ``"batch_all"`` (all valid
triplets), a :class:`~reid_core.losses.miners.BaseMiner`, or ``None`` (= all triplets). An explicit
``indices_tuple=(a, p, n)`` passed to ``forward`` overrides the miner.

Reduction (``reduction=None`` picks the default): ``"mean_nonzero"`` for batch-all / all triplets -
the mean over triplets with a positive loss, as in Hermans et al. 2017, so the many already
satisfied triplets do not dilute the gradient - and ``"mean"`` otherwise.

No valid triplet (one identity in the batch, or every identity a singleton) gives an exact zero
still attached to the graph, and ``last_stats["empty"] == True`` / ``last_stats["num_triplets"] == 0``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import BaseMetricLoss, LossTerms, check_index_tuple
from .miners import BaseMiner, BatchAllMiner, all_triplets_indices, get_triplet_miner

VARIANTS = ("hinge", "soft", "improved")


#: the improved variant's pull term (Cheng et al. 2016: beta and tau2)
IMPROVED_PULL_WEIGHT = 0.002
IMPROVED_PULL_THRESHOLD = 0.01


def triplet_terms(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float, variant: str = "hinge",
                  pull_weight: float = IMPROVED_PULL_WEIGHT,
                  pull_threshold: float = IMPROVED_PULL_THRESHOLD) -> torch.Tensor:
    """Per-triplet losses from anchor-positive and anchor-negative distances (``pull_*``: the
    ``"improved"`` variant only)."""
    if variant == "hinge":
        return F.relu(d_ap - d_an + margin)
    if variant == "soft":
        return F.softplus(d_ap - d_an)
    if variant == "improved":
        return F.relu(d_ap - d_an + margin) + pull_weight * torch.clamp(d_ap, min=pull_threshold)
    raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")


class TripletMarginLoss(BaseMetricLoss):
    """Batched triplet loss (see the module docstring).

    ``last_stats`` adds ``num_triplets`` (= ``num_terms``) and ``num_active``.
    """

    def __init__(
        self,
        margin: float = 0.3,
        distance=None,
        miner="batch_hard",
        variant: str = "hinge",
        reduction: Optional[str] = None,
        pull_weight: float = IMPROVED_PULL_WEIGHT,
        pull_threshold: float = IMPROVED_PULL_THRESHOLD,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if pull_weight < 0 or pull_threshold < 0:
            raise ValueError(f"pull_weight and pull_threshold must be >= 0, got {pull_weight}, {pull_threshold}")
        if variant != "soft" and margin < 0:
            raise ValueError(f"margin: must be >= 0, got {margin}")
        miner = get_triplet_miner(miner, margin=margin)
        if reduction is None:
            reduction = "mean_nonzero" if (miner is None or isinstance(miner, BatchAllMiner)) else "mean"
        super().__init__(distance=distance, reduction=reduction)
        self.margin = float(margin)
        self.variant = variant
        self.pull_weight = float(pull_weight)
        self.pull_threshold = float(pull_threshold)
        self.miner = miner

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, dist_mat: torch.Tensor) -> tuple:
        if self.miner is None:
            return all_triplets_indices(labels)
        if isinstance(self.miner, BaseMiner) and self.miner.distance is None:
            return self.miner.mine(dist_mat.detach(), labels)
        return self.miner(embeddings, labels)

    def compute_loss(self, embeddings, labels, indices_tuple=None) -> LossTerms:
        dist_mat = self.distance(embeddings)
        if indices_tuple is None:
            a, p, n = self.mine(embeddings, labels, dist_mat)
        else:
            a, p, n = check_index_tuple(indices_tuple, 3, embeddings.shape[0], "anchor, positive, negative")
        a, p, n = (t.to(embeddings.device) for t in (a, p, n))
        losses = triplet_terms(dist_mat[a, p], dist_mat[a, n], self.margin, self.variant,
                               self.pull_weight, self.pull_threshold)
        self._extra_stats = {"num_triplets": int(a.numel())}
        return LossTerms(losses)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, variant={self.variant!r}, " + super().extra_repr()


TripletLoss = TripletMarginLoss
