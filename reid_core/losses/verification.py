"""Verification (siamese) loss and the combined identification + verification objective.

:class:`VerificationHead` fuses the features of two images and classifies the pair as
*same identity* (class 1) or *different identities* (class 0) with a 2-way linear layer:

* ``fusion="square"`` (default): ``(f1 - f2)^2`` elementwise, the square layer of Zheng et al. 2017
  ("A discriminatively learned CNN embedding for person re-identification"); smooth and symmetric.
* ``fusion="abs"``: ``|f1 - f2|`` elementwise (the L1 siamese fusion of Koch et al. 2015); also
  symmetric, with a kink at ``f1 == f2`` (PyTorch uses subgradient 0 there).

Both fusions are symmetric, so ``head(f1, f2) == head(f2, f1)``.

:class:`VerificationLoss` forms every unordered pair ``i < j`` inside a P x K batch (no extra
forward: the features of the batch are reused) and averages the 2-way cross-entropy. With
``balance=True`` (default) positive and negative pairs each get half of the weight,
``0.5 * mean(positive CE) + 0.5 * mean(negative CE)``, because a P x K batch has far more
negative than positive pairs (``P K (K-1) / 2`` vs ``K^2 P (P-1) / 2``); if one kind is missing,
the mean over the other is used. ``balance=False``: plain mean over all pairs.

:class:`IDVerificationLoss` is ``lambda_id * L_ID(logits, labels) + lambda_verif * L_verif(features, labels)``
(Zheng et al. 2017), with ``L_ID`` the label-smoothed cross-entropy of :mod:`.id_loss`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import attached_zero, check_embeddings, check_labels
from .id_loss import IDLoss
from .miners import all_pairs_indices

FUSIONS = ("square", "abs")


class VerificationHead(nn.Module):
    """``forward(f1, f2) -> (N, 2)`` logits; column 1 = same identity."""

    def __init__(self, in_dim: int, fusion: str = "square", normalize: bool = False, dropout: float = 0.0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        if in_dim < 1:
            raise ValueError(f"in_dim: must be >= 1, got {in_dim}")
        self.fusion = fusion
        self.normalize = bool(normalize)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_dim, 2)

    def fuse(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        if f1.shape != f2.shape:
            raise ValueError(f"f1 {tuple(f1.shape)} and f2 {tuple(f2.shape)} must have the same shape")
        if self.normalize:
            f1, f2 = F.normalize(f1, dim=-1), F.normalize(f2, dim=-1)
        diff = f1 - f2
        return diff * diff if self.fusion == "square" else diff.abs()

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.fuse(f1, f2)))


class VerificationLoss(nn.Module):
    """Same/different cross-entropy over the pairs of a batch (see the module docstring).

    ``forward(features, labels)`` or ``forward(features, labels, pairs=(i, j))`` for explicit pairs.
    ``last_stats``: ``num_pos_pairs``, ``num_neg_pairs``, ``empty``, ``accuracy`` (fraction of pairs
    classified correctly, float; ``nan`` when empty).
    """

    def __init__(self, head: VerificationHead, balance: bool = True):
        super().__init__()
        self.head = head
        self.balance = bool(balance)
        self.last_stats: dict = {}

    def forward(self, features: torch.Tensor, labels, pairs: Optional[tuple] = None) -> torch.Tensor:
        check_embeddings(features, "features")
        labels = check_labels(labels, features.shape[0], device=features.device)
        if pairs is None:
            a1, p, a2, n = all_pairs_indices(labels)
            i, j = torch.cat([a1, a2]), torch.cat([p, n])
        else:
            i, j = (torch.as_tensor(t, device=features.device).long() for t in pairs)
        target = (labels[i] == labels[j]).long()
        n_pos = int(target.sum())
        n_neg = int(target.numel()) - n_pos
        if target.numel() == 0:
            self.last_stats = {"num_pos_pairs": 0, "num_neg_pairs": 0, "empty": True, "accuracy": float("nan")}
            return attached_zero(features, *self.head.parameters())
        logits = self.head(features[i], features[j])
        ce = F.cross_entropy(logits, target, reduction="none")
        if self.balance and n_pos and n_neg:
            pos = target.bool()
            loss = 0.5 * ce[pos].mean() + 0.5 * ce[~pos].mean()
        else:
            loss = ce.mean()
        with torch.no_grad():
            acc = float((logits.argmax(1) == target).double().mean())
        self.last_stats = {"num_pos_pairs": n_pos, "num_neg_pairs": n_neg, "empty": False, "accuracy": acc}
        return loss


class IDVerificationLoss(nn.Module):
    """``lambda_id * IDLoss(logits, labels) + lambda_verif * VerificationLoss(features, labels)``.

    ``forward(features, logits, labels)``; ``last_stats``: ``loss_id``, ``loss_verif`` (floats) plus
    the verification stats.
    """

    def __init__(self, feat_dim: int, epsilon: float = 0.1, lambda_id: float = 1.0, lambda_verif: float = 1.0,
                 fusion: str = "square", balance: bool = True, normalize: bool = False):
        super().__init__()
        if lambda_verif < 0:
            raise ValueError(f"lambda_verif: must be >= 0, got {lambda_verif}")
        self.id_loss = IDLoss(epsilon=epsilon, lambda_id=1.0)
        self.lambda_id = float(lambda_id)
        self.lambda_verif = float(lambda_verif)
        self.verif = VerificationLoss(VerificationHead(feat_dim, fusion=fusion, normalize=normalize), balance=balance)
        self.last_stats: dict = {}

    def forward(self, features: torch.Tensor, logits: torch.Tensor, labels) -> torch.Tensor:
        l_id = self.id_loss(logits, labels)
        l_v = self.verif(features, labels)
        self.last_stats = {"loss_id": float(l_id.detach()), "loss_verif": float(l_v.detach()), **self.verif.last_stats}
        return self.lambda_id * l_id + self.lambda_verif * l_v
