"""Distances injected into losses and miners.

Every distance maps two sets of embeddings to a matrix in which *smaller means more similar*:

* :class:`EuclideanDistance` - ``||x - y||_2`` (``power=2``: squared), with a safe square root;
* :class:`CosineDistance`    - ``1 - cos(x, y)``.

Both L2-normalise the rows first unless ``normalize_embeddings=False``.

``dist(x)`` returns the ``(B, B)`` matrix of a batch with itself (exact zeros on the diagonal),
``dist(x, y)`` the ``(Bx, By)`` cross matrix, ``dist.pairwise(x, y)`` the ``(N,)`` distances of
row-aligned pairs (row ``i`` of ``x`` with row ``i`` of ``y``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import check_embeddings

#: squared distances below this are treated as exactly zero by :func:`safe_sqrt`
SQRT_EPS = 1e-12


def safe_sqrt(x: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= eps`` and exactly 0 below, with a finite gradient everywhere.

    ``torch.sqrt`` has an infinite derivative at 0, which turns the gradient of a distance between
    identical embeddings (all-equal features, a sample with itself) into ``nan``. Here entries below
    ``eps`` (including small negative round-off of the ``|x|^2 + |y|^2 - 2 x.y`` expansion) get the
    value 0 and gradient 0.
    """
    mask = x > eps
    safe = torch.where(mask, x, torch.ones_like(x))
    return torch.where(mask, safe.sqrt(), torch.zeros_like(x))


class BaseDistance(nn.Module):
    """Common interface; subclasses implement :meth:`compute_mat` and :meth:`compute_pairwise`."""

    def __init__(self, normalize_embeddings: bool = True):
        super().__init__()
        self.normalize_embeddings = bool(normalize_embeddings)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1) if self.normalize_embeddings else x

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_embeddings(x, "x")
        same = y is None
        if not same:
            check_embeddings(y, "y")
            if y.shape[1] != x.shape[1]:
                raise ValueError(f"y: feature dimension {y.shape[1]} differs from x's {x.shape[1]}")
        xn = self.normalize(x)
        yn = xn if same else self.normalize(y)
        mat = self.compute_mat(xn, yn)
        if same:
            # a sample with itself is at distance exactly 0 (round-off of the expansion removed)
            eye = torch.eye(mat.shape[0], dtype=torch.bool, device=mat.device)
            mat = mat.masked_fill(eye, 0.0)
        return mat

    def pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances of row-aligned pairs: ``out[i] = d(x[i], y[i])``."""
        if x.shape != y.shape:
            raise ValueError(f"pairwise: x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
        return self.compute_pairwise(self.normalize(x), self.normalize(y))

    def compute_mat(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_pairwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"normalize_embeddings={self.normalize_embeddings}"


class EuclideanDistance(BaseDistance):
    """Euclidean distance ``||x - y||`` (``power=1``) or its square (``power=2``)."""

    def __init__(self, normalize_embeddings: bool = True, power: int = 1):
        super().__init__(normalize_embeddings)
        if power not in (1, 2):
            raise ValueError(f"power: expected 1 or 2, got {power!r}")
        self.power = power

    def compute_mat(self, x, y):
        sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * (x @ y.t())
        sq = sq.clamp_min(0.0)
        return sq if self.power == 2 else safe_sqrt(sq)

    def compute_pairwise(self, x, y):
        sq = ((x - y) ** 2).sum(-1)
        return sq if self.power == 2 else safe_sqrt(sq)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", power={self.power}"


class CosineDistance(BaseDistance):
    """Cosine distance ``1 - x.y / (|x||y|)`` in ``[0, 2]``."""

    def compute_mat(self, x, y):
        if not self.normalize_embeddings:
            x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        return 1.0 - x @ y.t()

    def compute_pairwise(self, x, y):
        if not self.normalize_embeddings:
            x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        return 1.0 - (x * y).sum(-1)


def get_distance(distance) -> BaseDistance:
    """``None``/"euclidean" -> :class:`EuclideanDistance`, "cosine" -> :class:`CosineDistance`,
    a :class:`BaseDistance` instance is returned unchanged."""
    if distance is None:
        return EuclideanDistance()
    if isinstance(distance, BaseDistance):
        return distance
    if isinstance(distance, str):
        key = distance.lower()
        if key in ("euclidean", "l2"):
            return EuclideanDistance()
        if key in ("sq_euclidean", "squared_euclidean"):
            return EuclideanDistance(power=2)
        if key == "cosine":
            return CosineDistance()
    raise ValueError(f"distance: expected 'euclidean', 'cosine' or a BaseDistance, got {distance!r}")
