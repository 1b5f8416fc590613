"""Miners: pick the tuples a loss is computed on, inside one batch.

A miner never computes a loss and never carries gradients. It returns an *index tuple* of
``LongTensor`` s into the batch:

* triplet miners -> ``(anchor, positive, negative)``, each ``(T,)``;
* pair miners    -> ``(anchor1, positive, anchor2, negative)``: positive pairs ``(anchor1[i], positive[i])``
  and negative pairs ``(anchor2[j], negative[j])``.

``miner(embeddings, labels)`` computes the ``(B, B)`` distance matrix with the miner's own distance;
``miner.mine(dist_mat, labels)`` works on a matrix the caller already has (losses do this, so the
batch matrix is computed once per forward). ``miner.last_stats`` records the number of tuples found.

All miners work on a P x K batch (P identities, K images each) but accept any label vector. An
anchor without a positive (singleton identity) or without a negative (one identity in the batch)
yields no tuple; when no tuple exists the returned tensors are empty.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .base import check_embeddings, check_labels
from .distances import BaseDistance, get_distance

Triplets = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Pairs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos, neg)`` boolean ``(B, B)`` masks: ``pos[i, j]`` same label and ``i != j``;
    ``neg[i, j]`` different labels."""
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def triplet_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(B, B, B)`` mask of valid triplets ``[a, p, n]``: ``y_a == y_p``, ``a != p``, ``y_a != y_n``."""
    pos, neg = label_masks(labels)
    return pos.unsqueeze(2) & neg.unsqueeze(1)


def all_triplets_indices(labels: torch.Tensor) -> Triplets:
    """Every valid triplet of the batch (ordered anchor/positive)."""
    a, p, n = torch.nonzero(triplet_mask(labels), as_tuple=True)
    return a, p, n


def all_pairs_indices(labels: torch.Tensor) -> Pairs:
    """Every unordered pair ``i < j``: positive pairs (same label) and negative pairs."""
    pos, neg = label_masks(labels)
    upper = torch.ones_like(pos).triu(diagonal=1)
    a1, p = torch.nonzero(pos & upper, as_tuple=True)
    a2, n = torch.nonzero(neg & upper, as_tuple=True)
    return a1, p, a2, n


class BaseMiner(nn.Module):
    """Base miner; subclasses implement :meth:`mine`.

    ``distance=None`` means: the distance of the loss that calls :meth:`mine` (and Euclidean on
    L2-normalised embeddings when the miner is called on its own).
    """

    def __init__(self, distance: Optional[BaseDistance] = None):
        super().__init__()
        self.distance = get_distance(distance) if distance is not None else None
        self.last_stats: dict = {}

    def forward(self, embeddings: torch.Tensor, labels) -> tuple:
        check_embeddings(embeddings)
        labels = check_labels(labels, embeddings.shape[0], device=embeddings.device)
        dist = self.distance if self.distance is not None else get_distance(None)
        with torch.no_grad():
            mat = dist(embeddings.detach())
        return self.mine(mat, labels)

    @torch.no_grad()
    def mine(self, dist_mat: torch.Tensor, labels: torch.Tensor) -> tuple:
        raise NotImplementedError


class BatchAllMiner(BaseMiner):
    """All valid triplets of the batch ("batch all", Hermans et al. 2017)."""

    @torch.no_grad()
    def mine(self, dist_mat, labels) -> Triplets:
        out = all_triplets_indices(labels)
        self.last_stats = {"num_triplets": int(out[0].numel())}
        return out


class BatchHardMiner(BaseMiner):
    """For each anchor: the farthest positive and the closest negative ("batch hard",
    Hermans et al. 2017). One triplet per anchor that has at least one positive and one negative."""

    @torch.no_grad()
    def mine(self, dist_mat, labels) -> Triplets:
        pos, neg = label_masks(labels)
        d = dist_mat.detach()
        hard_p = d.masked_fill(~pos, float("-inf")).argmax(1)
        hard_n = d.masked_fill(~neg, float("inf")).argmin(1)
        valid = pos.any(1) & neg.any(1)
        a = torch.nonzero(valid, as_tuple=True)[0]
        self.last_stats = {"num_triplets": int(a.numel())}
        return a, hard_p[a], hard_n[a]


class BatchSemiHardMiner(BaseMiner):
    """All triplets whose negative is semi-hard: ``d(a,p) < d(a,n) < d(a,p) + margin``
    (Schroff et al. 2015). Such triplets have a loss in ``(0, margin)``."""

    def __init__(self, margin: float = 0.3, distance: Optional[BaseDistance] = None):
        super().__init__(distance)
        if margin <= 0:
            raise ValueError(f"margin: must be > 0 for semi-hard mining, got {margin}")
        self.margin = float(margin)

    @torch.no_grad()
    def mine(self, dist_mat, labels) -> Triplets:
        d = dist_mat.detach()
        d_ap = d.unsqueeze(2)  # [a, p, 1]
        d_an = d.unsqueeze(1)  # [a, 1, n]
        mask = triplet_mask(labels) & (d_an > d_ap) & (d_an < d_ap + self.margin)
        a, p, n = torch.nonzero(mask, as_tuple=True)
        self.last_stats = {"num_triplets": int(a.numel())}
        return a, p, n


class AllPairsMiner(BaseMiner):
    """All unordered pairs ``i < j`` of the batch, split into positive and negative pairs."""

    @torch.no_grad()
    def mine(self, dist_mat, labels) -> Pairs:
        out = all_pairs_indices(labels)
        self.last_stats = {"num_pos_pairs": int(out[0].numel()), "num_neg_pairs": int(out[2].numel())}
        return out


class PairMarginMiner(BaseMiner):
    """Pairs that violate a margin: positives farther than ``pos_margin`` and negatives closer than
    ``neg_margin`` (the only pairs with a non-zero contrastive loss when
    ``pos_margin = 0`` and ``neg_margin`` = the contrastive margin)."""

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance: Optional[BaseDistance] = None):
        super().__init__(distance)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    @torch.no_grad()
    def mine(self, dist_mat, labels) -> Pairs:
        a1, p, a2, n = all_pairs_indices(labels)
        d = dist_mat.detach()
        kp = d[a1, p] > self.pos_margin
        kn = d[a2, n] < self.neg_margin
        out = (a1[kp], p[kp], a2[kn], n[kn])
        self.last_stats = {"num_pos_pairs": int(out[0].numel()), "num_neg_pairs": int(out[2].numel())}
        return out


TRIPLET_MINERS = {"batch_hard": BatchHardMiner, "batch_all": BatchAllMiner, "semi_hard": BatchSemiHardMiner}


def get_triplet_miner(miner, margin: float = 0.3) -> Optional[BaseMiner]:
    """``"batch_hard"`` | ``"batch_all"`` | ``"semi_hard"`` | a :class:`BaseMiner` | ``None``."""
    if miner is None or isinstance(miner, BaseMiner):
        return miner
    if isinstance(miner, str) and miner in TRIPLET_MINERS:
        cls = TRIPLET_MINERS[miner]
        return cls(margin=margin) if cls is BatchSemiHardMiner else cls()
    raise ValueError(f"miner: expected one of {sorted(TRIPLET_MINERS)}, a BaseMiner or None, got {miner!r}")
