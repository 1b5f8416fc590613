"""SoftTriple loss (Qian et al., ICCV 2019, "SoftTriple Loss: Deep metric learning without triplet sampling").

Each class ``c`` has ``K`` learnable unit-norm centres ``w_c^1..w_c^K``. For an L2-normalised
embedding ``x_i`` the relaxed similarity to class ``c`` is a softmax-weighted mix of its centre
similarities::

    S'_{i,c} = sum_k  softmax_k(x_i.w_c^k / gamma) * x_i.w_c^k

and the loss is the cross-entropy of the scaled, margin-shifted similarities::

    l_i = CE( lambda * (S'_{i,.} - delta * 1[. = y_i]),  y_i )

plus a regulariser that lets similar centres of a class collapse onto each other, so the number
of centres actually used adapts to the data::

    R = tau * sum_c sum_{k<k'} sqrt(2 + 2 eps - 2 w_c^k.w_c^k') / (C K (K - 1))

(``sqrt(2 - 2 w.w')`` is the distance of two unit centres; ``eps`` keeps the square root
differentiable when two centres coincide). Defaults follow the paper: ``K=10``, ``lambda=20``,
``gamma=0.1``, ``delta=0.01``, ``tau=0.2``. With ``K=1`` the regulariser vanishes.

:func:`effective_centers` counts how many centres per class remain distinct (centres closer than
``threshold`` are merged, transitively).

Labels must lie in ``[0, num_classes)``. ``forward(embeddings, labels)`` returns the mean of ``l_i``
plus ``R``; ``last_stats`` adds ``regularizer`` (float).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import BaseMetricLoss, LossTerms


class SoftTripleLoss(BaseMetricLoss):
    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        margin: float = 0.01,
        tau: float = 0.2,
        eps: float = 1e-5,
        reduction: str = "mean",
    ):
        super().__init__(distance=None, reduction=reduction)
        for name, val in (("embedding_dim", embedding_dim), ("num_classes", num_classes), ("centers_per_class", centers_per_class)):
            if int(val) != val or val < 1:
                raise ValueError(f"{name}: must be a positive integer, got {val!r}")
        if gamma <= 0:
            raise ValueError(f"gamma: must be > 0, got {gamma}")
        if tau < 0:
            raise ValueError(f"tau: must be >= 0, got {tau}")
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.centers_per_class = int(centers_per_class)
        self.la = float(la)
        self.gamma = float(gamma)
        self.margin = float(margin)
        self.tau = float(tau)
        self.eps = float(eps)
        # (D, C*K): column c*K + k is centre k of class c
        self.centers = nn.Parameter(torch.empty(self.embedding_dim, self.num_classes * self.centers_per_class))
        nn.init.kaiming_uniform_(self.centers, a=math.sqrt(5))

    def default_distance(self):
        return None

    def normalized_centers(self) -> torch.Tensor:
        """Unit centres as a ``(C, K, D)`` tensor."""
        w = F.normalize(self.centers, dim=0)
        return w.t().reshape(self.num_classes, self.centers_per_class, self.embedding_dim)

    def relaxed_similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``S'`` of shape ``(B, C)``."""
        x = F.normalize(embeddings, dim=1)
        w = self.normalized_centers()
        sim = torch.einsum("bd,ckd->bck", x, w.to(x.dtype))
        weights = torch.softmax(sim / self.gamma, dim=2)
        return (weights * sim).sum(2)

    def regularizer(self) -> torch.Tensor:
        K, C = self.centers_per_class, self.num_classes
        if K < 2 or self.tau == 0:
            return self.centers.sum() * 0.0
        w = self.normalized_centers()
        gram = w @ w.transpose(1, 2)  # (C, K, K)
        iu = torch.triu_indices(K, K, offset=1, device=gram.device)
        g = gram[:, iu[0], iu[1]]
        dist = torch.sqrt((2.0 + 2.0 * self.eps - 2.0 * g).clamp_min(0.0))
        return self.tau * dist.sum() / (C * K * (K - 1))

    def compute_loss(self, embeddings, labels, indices_tuple=None) -> LossTerms:
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"embeddings: expected dimension {self.embedding_dim}, got {embeddings.shape[1]}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels: must lie in [0, {self.num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
        s = self.relaxed_similarity(embeddings)
        onehot = F.one_hot(labels, self.num_classes).to(s.dtype)
        logits = self.la * (s - self.margin * onehot)
        losses = F.cross_entropy(logits, labels, reduction="none")
        reg = self.regularizer().to(losses.dtype)
        self._extra_stats = {"regularizer": float(reg.detach())}
        return LossTerms(losses, extra=reg)

    @torch.no_grad()
    def effective_centers(self, threshold: float = 0.1) -> np.ndarray:
        """Number of distinct centres per class (see :func:`effective_centers`)."""
        return effective_centers(self.normalized_centers(), threshold)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
                f"centers_per_class={self.centers_per_class}, la={self.la}, gamma={self.gamma}, "
                f"margin={self.margin}, tau={self.tau}")


def effective_centers(centers, threshold: float = 0.1) -> np.ndarray:
    """Count the distinct centres of every class.

    ``centers``: ``(C, K, D)`` (a tensor or array; rows are L2-normalised here). Two centres of the
    same class whose Euclidean distance is below ``threshold`` are merged, transitively (connected
    components of the "closer than threshold" graph). Returns an ``int64`` array of length ``C``
    with values in ``[1, K]``. ``threshold=0.1`` (our choice, not from the paper) is a distance of
    about 5.7 degrees between unit vectors.
    """
    w = torch.as_tensor(centers).detach().double()
    if w.dim() != 3:
        raise ValueError(f"centers: expected shape (classes, centers_per_class, dim), got {tuple(w.shape)}")
    w = F.normalize(w, dim=2)
    C, K, _ = w.shape
    dist = torch.cdist(w, w)  # (C, K, K)
    close = (dist < threshold).cpu().numpy()
    counts = np.empty(C, dtype=np.int64)
    for c in range(C):
        parent = list(range(K))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(K):
            for j in range(i + 1, K):
                if close[c, i, j]:
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[ri] = rj
        counts[c] = len({find(i) for i in range(K)})
    return counts
