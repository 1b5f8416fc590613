"""Shared machinery of the metric-learning losses: input checks, reduction and bookkeeping.

A loss in this package subclasses :class:`BaseMetricLoss` and writes only its core,
:meth:`BaseMetricLoss.compute_loss`, which returns a :class:`LossTerms` (a 1-D tensor of
per-element losses - one per triplet, pair, quadruplet or sample - plus an optional additive
regulariser). The base class

* checks ``embeddings`` (float, shape ``(B, D)``) and ``labels`` (integer, shape ``(B,)``) and raises
  a ``ValueError`` naming the offending argument;
* reduces the per-element losses (``"mean"``, ``"mean_nonzero"``, ``"sum"`` or ``"none"``);
* returns an exact zero that is still attached to the autograd graph when there is nothing to
  average (no valid triplet in the batch, e.g. one identity only or all identities singletons), so
  ``loss.backward()`` works and yields zero - never ``nan`` - gradients;
* records what happened in ``loss.last_stats`` (a plain ``dict``):

  ``num_terms``  number of elements (triplets / pairs / quadruplets / samples) that entered the loss,
  ``num_active`` number of those with a strictly positive loss,
  ``empty``      ``True`` when ``num_terms == 0`` (the returned loss is then an attached zero).

  Losses may add their own keys (documented in their class docstring).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

REDUCTIONS = ("mean", "mean_nonzero", "sum", "none")


@dataclass
class LossTerms:
    """What a loss core returns: per-element ``losses`` (1-D) and an optional scalar ``extra`` term
    (e.g. a regulariser) that is added after the reduction."""

    losses: torch.Tensor
    extra: Optional[torch.Tensor] = None


def check_embeddings(embeddings, name: str = "embeddings") -> torch.Tensor:
    """Validate a ``(B, D)`` floating-point tensor; raise ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(embeddings, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name}: expected shape (batch, dim), got {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {embeddings.dtype}")
    return embeddings


def check_labels(labels, batch_size: int, name: str = "labels", device=None) -> torch.Tensor:
    """Validate integer labels of shape ``(batch_size,)``; lists / numpy arrays are converted."""
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"{name}: cannot convert to a tensor ({exc})") from exc
    if labels.dim() != 1:
        raise ValueError(f"{name}: expected shape (batch,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
    if labels.shape[0] != batch_size:
        raise ValueError(f"{name}: has {labels.shape[0]} entries but the batch has {batch_size} rows")
    if device is not None:
        labels = labels.to(device)
    return labels.long()


def check_index_tuple(indices_tuple, size: int, batch_size: int, what: str) -> tuple:
    """Validate a user-given index tuple of ``size`` 1-D index tensors into a batch of ``batch_size``."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) != size:
        raise ValueError(f"indices_tuple: expected a tuple of {size} index tensors ({what})")
    out = []
    for t in indices_tuple:
        t = torch.as_tensor(t).long()
        if t.dim() != 1:
            raise ValueError(f"indices_tuple: every entry must be 1-D, got shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= batch_size):
            raise ValueError(f"indices_tuple: indices must lie in [0, {batch_size}), got range [{int(t.min())}, {int(t.max())}]")
        out.append(t)
    return tuple(out)


def attached_zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar exact zero connected to the graph of ``tensors`` (zero, finite gradients)."""
    out = None
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            z = t.sum() * 0.0
            out = z if out is None else out + z
    if out is None:
        return torch.zeros(())
    # ``x * 0`` is nan when x holds inf/nan; keep the exact-zero promise regardless.
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def reduce_losses(losses: torch.Tensor, reduction: str, anchor: torch.Tensor) -> torch.Tensor:
    """Reduce a 1-D tensor of per-element losses.

    ``mean_nonzero`` divides the sum by the number of strictly positive elements (Hermans et al.
    2017, "batch all"); with no positive element it returns the (zero) sum, which keeps the graph.
    An empty ``losses`` gives :func:`attached_zero` of ``anchor`` for every reduction except
    ``"none"`` (which returns the empty tensor).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "none":
        return losses
    if losses.numel() == 0:
        return attached_zero(anchor)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    n_pos = (losses.detach() > 0).sum().clamp_min(1).to(losses.dtype)
    return losses.sum() / n_pos


class BaseMetricLoss(nn.Module):
    """Base class: subclasses implement :meth:`compute_loss`.

    Parameters
    ----------
    distance:
        a distance module from :mod:`reid_core.losses.distances`, or ``"euclidean"`` / ``"cosine"``
        (``None`` -> the subclass default, Euclidean on L2-normalised embeddings).
    reduction:
        ``"mean"`` | ``"mean_nonzero"`` | ``"sum"`` | ``"none"``.
    """

    def __init__(self, distance: Optional[nn.Module] = None, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        if distance is None:
            distance = self.default_distance()
        elif isinstance(distance, str):
            from .distances import get_distance

            distance = get_distance(distance)
        self.distance = distance
        self.reduction = reduction
        self.last_stats: dict = {}

    def default_distance(self) -> Optional[nn.Module]:
        from .distances import EuclideanDistance

        return EuclideanDistance()

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None) -> LossTerms:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels, indices_tuple=None) -> torch.Tensor:
        check_embeddings(embeddings)
        labels = check_labels(labels, embeddings.shape[0], device=embeddings.device)
        terms = self.compute_loss(embeddings, labels, indices_tuple)
        losses = terms.losses
        loss = reduce_losses(losses, self.reduction, embeddings)
        if terms.extra is not None and self.reduction != "none":
            loss = loss + terms.extra
        n = int(losses.numel())
        stats = {
            "num_terms": n,
            "num_active": int((losses.detach() > 0).sum().item()) if n else 0,
            "empty": n == 0,
        }
        stats.update(getattr(self, "_extra_stats", {}) or {})
        self._extra_stats = {}
        self.last_stats = stats
        return loss

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
