"""Cluster-level contrastive memory (Cluster-Contrast, Dai et al. 2021).

One L2-normalised centroid per pseudo-label cluster is kept in a memory ``M`` (``C x D``, a registered
buffer named ``features`` so it follows ``.to(device)`` and appears in ``state_dict``). The loss is an
InfoNCE over the memory::

    loss = CE( normalize(x) @ M^T / temp , y )                  (mean over the batch)

No gradient flows into the memory; it is refreshed by :meth:`ClusterMemory.update` after the loss has
been computed (call it once per iteration, before or after ``backward`` - the update builds a new
buffer tensor instead of writing in place, so the autograd graph of the loss keeps the pre-update
memory, exactly as the reference implementation which updates inside ``backward`` after computing
the input gradient).

Momentum convention (as in the Cluster-Contrast and ISE reference code)::

    m_c <- normalize( mu * m_c + (1 - mu) * x )

``mu`` (``momentum``) is the weight of the **old** centroid: ``mu = 0.1`` (Cluster-Contrast paper) or
``0.2`` (ISE Market setting) means the centroid moves most of the way towards the new sample.
``x`` depends on ``mode``:

``"hard"`` (default; Cluster-Contrast's "hardest query instance" update, ``--use-hard`` / ISE's
    ``--sample-type hard``): for each cluster present in the batch, the batch sample of that cluster
    **least similar** (lowest cosine) to the current centroid ``m_c``; ties go to the first such sample
    in batch order.
``"momentum"``: the **mean** of the batch's (normalised) samples of that cluster. Note: the reference
    code's non-hard mode applies the momentum rule sequentially, sample by sample; this class applies
    it once per cluster with the batch mean, which does not depend on the order of the batch.

Both updates are vectorised (``index_add`` / ``scatter_reduce``) and tested against plain loops.
Inputs may be bf16 (autocast); they are cast to the memory's dtype (float32 unless the module was
converted with ``.double()``) and the loss runs with autocast disabled.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MEMORY_MODES = ("hard", "momentum")


def _check_inputs(inputs: torch.Tensor, targets, num_features: int, num_clusters: int,
                  name: str = "inputs") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"{name}: expected a (batch, {num_features}) tensor, got {shape}")
    if not inputs.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.shape[1] != num_features:
        raise ValueError(f"{name}: feature dimension {inputs.shape[1]} does not match the memory's "
                         f"num_features={num_features}")
    targets = torch.as_tensor(targets, device=inputs.device)
    if targets.dim() != 1 or targets.shape[0] != inputs.shape[0]:
        raise ValueError(f"targets: expected shape ({inputs.shape[0]},), got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets: expected integer cluster labels, got dtype {targets.dtype}")
    targets = targets.long()
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_clusters):
        raise ValueError(f"targets: labels must lie in [0, {num_clusters - 1}] (outliers -1 must be "
                         f"filtered out before training); got range [{int(targets.min())}, "
                         f"{int(targets.max())}]")
    return inputs, targets


class ClusterMemory(nn.Module):
    """Cluster-level memory with an InfoNCE loss and momentum / hard centroid updates.

    Args:
        num_features: feature dimension ``D``.
        num_clusters: number of clusters ``C`` (labels ``0..C-1``).
        temp: softmax temperature (0.05 in Cluster-Contrast and ISE).
        momentum: weight ``mu`` of the old centroid in the update (see module docstring).
        mode: ``"hard"`` or ``"momentum"``.
    """

    def __init__(self, num_features: int, num_clusters: int, temp: float = 0.05,
                 momentum: float = 0.2, mode: str = "hard"):
        super().__init__()
        if int(num_features) <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if int(num_clusters) <= 0:
            raise ValueError(f"num_clusters must be positive (no clusters found?), got {num_clusters}")
        if not temp > 0:
            raise ValueError(f"temp must be > 0, got {temp}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        if mode not in MEMORY_MODES:
            raise ValueError(f"mode must be one of {MEMORY_MODES}, got {mode!r}")
        self.num_features = int(num_features)
        self.num_clusters = int(num_clusters)
        self.temp = float(temp)
        self.momentum = float(momentum)
        self.mode = mode
        self.register_buffer("features", torch.zeros(self.num_clusters, self.num_features))
        #: distributed training sets this to an all-gather (``reid_core.distributed.all_gather_cat``):
        #: every rank then updates its memory from the batch of all ranks and all memories stay equal
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, num_clusters={self.num_clusters}, "
                f"temp={self.temp}, momentum={self.momentum}, mode={self.mode!r}")

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_centroids(self, features, labels) -> "ClusterMemory":
        """Set each centroid to the renormalised mean of its cluster's L2-normalised features.

        ``features``: ``(N, D)`` array/tensor; ``labels``: ``(N,)`` with clusters ``0..C-1`` and ``-1`` for
        outliers (ignored). Every cluster must have at least one member.
        """
        feats = torch.as_tensor(features).to(device=self.features.device, dtype=self.features.dtype)
        labs = torch.as_tensor(labels).to(self.features.device)
        if feats.dim() != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"features: expected shape (N, {self.num_features}), got {tuple(feats.shape)}")
        if labs.dim() != 1 or labs.shape[0] != feats.shape[0]:
            raise ValueError(f"labels: expected shape ({feats.shape[0]},), got {tuple(labs.shape)}")
        labs = labs.long()
        keep = labs >= 0
        feats, labs = feats[keep], labs[keep]
        if labs.numel() and int(labs.max()) >= self.num_clusters:
            raise ValueError(f"labels: found label {int(labs.max())} but the memory has "
                             f"num_clusters={self.num_clusters}")
        counts = torch.bincount(labs, minlength=self.num_clusters)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"labels: clusters {empty[:10].tolist()} have no member "
                             f"({empty.numel()} empty of {self.num_clusters}); labels must be 0..C-1")
        sums = torch.zeros_like(self.features)
        sums.index_add_(0, labs, F.normalize(feats, dim=1))
        self.features = F.normalize(sums / counts.unsqueeze(1).to(sums.dtype), dim=1)
        return self

    # ------------------------------------------------------------------ loss
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``normalize(inputs) @ M^T / temp`` in float32 (``(B, C)``)."""
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            x = F.normalize(inputs.to(self.features.dtype), dim=1)
            return x @ self.features.t() / self.temp

    def forward(self, inputs: torch.Tensor, targets) -> torch.Tensor:
        """InfoNCE loss of ``inputs`` (normalised or not; they are normalised here) against the memory."""
        inputs, targets = _check_inputs(inputs, targets, self.num_features, self.num_clusters)
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            return F.cross_entropy(self.logits(inputs), targets)

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, inputs: torch.Tensor, targets) -> None:
        """Update the centroids of the clusters present in the batch (no gradient, not in place)."""
        inputs, targets = _check_inputs(inputs, targets, self.num_features, self.num_clusters)
        if self.gather is not None:
            inputs, targets = self.gather(inputs.detach()), self.gather(targets)
        if targets.numel() == 0:
            return
        x = F.normalize(inputs.detach().to(self.features.dtype), dim=1)
        mem = self.features
        C = self.num_clusters
        counts = torch.bincount(targets, minlength=C)
        present = counts > 0
        if self.mode == "momentum":
            sums = torch.zeros_like(mem).index_add_(0, targets, x)
            new_x = sums[present] / counts[present].unsqueeze(1).to(x.dtype)
        else:  # hard: least similar sample of each cluster to its current centroid
            sims = (x * mem[targets]).sum(dim=1)
            min_sim = torch.full((C,), float("inf"), device=x.device, dtype=x.dtype)
            min_sim = min_sim.scatter_reduce(0, targets, sims, reduce="amin", include_self=True)
            is_min = sims == min_sim[targets]
            order = torch.arange(x.shape[0], device=x.device)
            cand = torch.where(is_min, order, torch.full_like(order, x.shape[0]))
            first = torch.full((C,), x.shape[0], device=x.device, dtype=order.dtype)
            first = first.scatter_reduce(0, targets, cand, reduce="amin", include_self=True)
            new_x = x[first[present]]
        new_mem = mem.clone()
        new_mem[present] = F.normalize(self.momentum * mem[present] + (1.0 - self.momentum) * new_x, dim=1)
        self.features = new_mem
