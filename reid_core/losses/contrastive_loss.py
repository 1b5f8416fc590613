"""Contrastive loss over pairs (Hadsell, Chopra & LeCun 2006).

For a pair at distance ``d`` with ``y = 1`` (same identity) or ``y = 0`` (different identities)::

    l(pair) = y * d^2 + (1 - y) * max(0, margin - d)^2

(the ``1/2`` factor of the original paper is dropped). Pairs are all unordered pairs ``i < j`` of the
batch (``miner=None``) or those returned by a pair miner (e.g.
:class:`~reid_core.losses.miners.PairMarginMiner`), or an explicit ``indices_tuple=(a1, p, a2, n)``.
The per-pair losses of positive and negative pairs are concatenated and reduced together
(``reduction="mean"``: the mean over all pairs).

``last_stats`` adds ``num_pos_pairs`` and ``num_neg_pairs``. A batch without pairs (a single image)
gives an attached zero with ``last_stats["empty"] == True``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import BaseMetricLoss, LossTerms, check_index_tuple
from .miners import BaseMiner, all_pairs_indices


class ContrastiveLoss(BaseMetricLoss):
    def __init__(self, margin: float = 1.0, distance=None, miner: Optional[BaseMiner] = None, reduction: str = "mean"):
        super().__init__(distance=distance, reduction=reduction)
        if margin <= 0:
            raise ValueError(f"margin: must be > 0, got {margin}")
        if miner is not None and not isinstance(miner, BaseMiner):
            raise ValueError(f"miner: expected a BaseMiner returning pairs or None, got {miner!r}")
        self.margin = float(margin)
        self.miner = miner

    def compute_loss(self, embeddings, labels, indices_tuple=None) -> LossTerms:
        dist_mat = self.distance(embeddings)
        if indices_tuple is not None:
            a1, p, a2, n = check_index_tuple(indices_tuple, 4, embeddings.shape[0], "anchor1, positive, anchor2, negative")
        elif self.miner is None:
            a1, p, a2, n = all_pairs_indices(labels)
        elif self.miner.distance is None:
            a1, p, a2, n = self.miner.mine(dist_mat.detach(), labels)
        else:
            a1, p, a2, n = self.miner(embeddings, labels)
        dev = embeddings.device
        a1, p, a2, n = (t.to(dev) for t in (a1, p, a2, n))
        pos = dist_mat[a1, p] ** 2
        neg = F.relu(self.margin - dist_mat[a2, n]) ** 2
        self._extra_stats = {"num_pos_pairs": int(pos.numel()), "num_neg_pairs": int(neg.numel())}
        return LossTerms(torch.cat([pos, neg]))

    def extra_repr(self) -> str:
        return f"margin={self.margin}, " + super().extra_repr()
