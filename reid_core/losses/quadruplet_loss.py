"""Quadruplet loss (Chen et al., CVPR 2017, "Beyond triplet loss").

For an anchor ``a``, a positive ``p`` (same identity), a negative ``n1`` (other identity) and a
second negative ``n2`` whose identity differs from both ``a``'s and ``n1``'s::

    l(a, p, n1, n2) = max(0, d(a,p) - d(a,n1) + alpha) + max(0, d(a,p) - d(n1,n2) + beta)

with ``alpha > beta`` (checked): the first term is the usual triplet constraint, the second, weaker
one pushes apart pairs that do not contain the anchor, so inter-class distances grow relative to
intra-class ones over the whole batch.

Batch versions (``mining``), both computed from the one ``(B, B)`` distance matrix of the batch:

* ``"hard"`` (default): per anchor the farthest positive ``p*``, the closest negative ``n1*`` and,
  for the second term, the closest image ``n2*`` to ``n1*`` among identities other than ``a``'s and
  ``n1*``'s - one quadruplet per anchor; ``reduction="mean"``.
* ``"all"``: every valid quadruplet; ``reduction="mean_nonzero"`` (mean over quadruplets with a
  positive loss, as for batch-all triplets). Memory grows like ``B^3 K``: meant for small batches.

A batch needs three identities (and one with two images) to form a quadruplet; otherwise the loss
is an attached zero and ``last_stats["empty"]`` is True. ``last_stats`` adds ``num_quadruplets``.
``indices_tuple=(a, p, n1, n2)`` passed to ``forward`` overrides the mining.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import BaseMetricLoss, LossTerms, check_index_tuple
from .miners import all_triplets_indices, label_masks

MINING = ("hard", "all")


def hard_quadruplets(dist_mat: torch.Tensor, labels: torch.Tensor) -> tuple:
    """One hard quadruplet per anchor (see the module docstring)."""
    with torch.no_grad():
        d = dist_mat.detach()
        pos, neg = label_masks(labels)
        p = d.masked_fill(~pos, float("-inf")).argmax(1)
        n1 = d.masked_fill(~neg, float("inf")).argmin(1)
        # n2 must differ in identity from the anchor and from n1
        ok_n2 = neg & neg[n1]  # [a, j]: y_j != y_a and y_j != y_{n1(a)}
        d_n1 = d[n1]  # [a, j] = d(n1(a), j)
        n2 = d_n1.masked_fill(~ok_n2, float("inf")).argmin(1)
        valid = pos.any(1) & neg.any(1) & ok_n2.any(1)
        a = torch.nonzero(valid, as_tuple=True)[0]
    return a, p[a], n1[a], n2[a]


def all_quadruplets(labels: torch.Tensor) -> tuple:
    """Every valid quadruplet ``(a, p, n1, n2)``."""
    a, p, n1 = all_triplets_indices(labels)
    ok = (labels.unsqueeze(0) != labels[a].unsqueeze(1)) & (labels.unsqueeze(0) != labels[n1].unsqueeze(1))
    t, n2 = torch.nonzero(ok, as_tuple=True)
    return a[t], p[t], n1[t], n2


class QuadrupletLoss(BaseMetricLoss):
    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        distance=None,
        mining: str = "hard",
        reduction: Optional[str] = None,
    ):
        if not alpha > beta:
            raise ValueError(f"alpha must be larger than beta (the second constraint is the weaker one), got alpha={alpha}, beta={beta}")
        if beta < 0:
            raise ValueError(f"beta: must be >= 0, got {beta}")
        if mining not in MINING:
            raise ValueError(f"mining: expected one of {MINING}, got {mining!r}")
        if reduction is None:
            reduction = "mean" if mining == "hard" else "mean_nonzero"
        super().__init__(distance=distance, reduction=reduction)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mining = mining

    def compute_loss(self, embeddings, labels, indices_tuple=None) -> LossTerms:
        dist_mat = self.distance(embeddings)
        if indices_tuple is not None:
            a, p, n1, n2 = check_index_tuple(indices_tuple, 4, embeddings.shape[0], "anchor, positive, negative1, negative2")
        elif self.mining == "hard":
            a, p, n1, n2 = hard_quadruplets(dist_mat, labels)
        else:
            a, p, n1, n2 = all_quadruplets(labels)
        dev = embeddings.device
        a, p, n1, n2 = (t.to(dev) for t in (a, p, n1, n2))
        d_ap = dist_mat[a, p]
        losses = F.relu(d_ap - dist_mat[a, n1] + self.alpha) + F.relu(d_ap - dist_mat[n1, n2] + self.beta)
        self._extra_stats = {"num_quadruplets": int(a.numel())}
        return LossTerms(losses)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, mining={self.mining!r}, " + super().extra_repr()
