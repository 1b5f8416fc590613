"""AlignedReID (Zhang et al. 2017, "AlignedReID: Surpassing human-level performance in person
re-identification"): local shortest-path distance, aligned batch-hard triplet loss and mutual learning.

Local distance
--------------
An image has ``H`` horizontal stripe features ``(H, C)`` (the model's ``local`` output). For two
images the stripe-to-stripe Euclidean distances are squashed into ``[0, 1)``::

    d'_{ij} = (exp(d_ij) - 1) / (exp(d_ij) + 1)          (= tanh(d_ij / 2), computed that way)

and the local distance is the total length of the shortest path from cell ``(1, 1)`` to ``(H, H)``
of that ``H x H`` matrix moving only right or down (a monotone alignment of body parts). The dynamic
programme ``S[i, j] = d'[i, j] + min(S[i-1, j], S[i, j-1])`` runs over the ``2H - 1`` anti-diagonals
(every cell of a diagonal depends only on the previous diagonal), each step vectorised over all the
pairs at once - ``O(H)`` Python steps for any number of pairs. Stripes are L2-normalised first
unless ``normalize=False``.

* :func:`local_distance_pairs` - row-aligned pairs ``(N, H, C) x (N, H, C) -> (N,)``, differentiable;
* :func:`local_distance_matrix` - all query x gallery pairs, computed in blocks (``chunk`` queries
  times ``gallery_chunk`` gallery images at a time) so memory stays bounded; differentiable when
  its inputs require grad (call it under ``torch.no_grad()`` at test time).

At test time only the global feature is needed; the local distance is an optional extra.

Losses
------
* :class:`AlignedTripletLoss` - batch-hard triplet loss on the global distance and on the local
  distance. Hard positives/negatives are mined with the *global* distance only and the local loss
  reuses the same ``(a, p, n)`` indices, as in the paper. ``local_scale="sum"`` uses the path
  length itself (a sum of ``H + W - 1`` squashed terms, up to ``(H + W - 1) tanh(1)`` on unit
  stripes); ``"mean"`` divides it by ``H + W - 1``, which puts the local distance on the scale of
  the global one, so one margin and one weight mean the same for both terms.
* :class:`MutualLearningLoss` - mutual learning of two networks (Zhang et al. 2018, "Deep mutual
  learning", as used in AlignedReID): the classification mutual loss ``KL(p_partner || p_self)``
  and the metric mutual loss ``mean_{ij} (D_self[i,j] - ZG(D_partner[i,j]))^2`` where ``ZG`` stops the
  gradient. With ``symmetric=True`` (default) both directions are summed, each with its partner side
  detached, so one ``backward()`` gives each network exactly the gradient of its own objective.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .base import attached_zero, check_embeddings, check_labels
from .distances import EuclideanDistance, get_distance, safe_sqrt
from .miners import BatchHardMiner
from .triplet_loss import VARIANTS, triplet_terms


LOCAL_SCALES = ("sum", "mean")


def squash(d: torch.Tensor) -> torch.Tensor:
    """``(e^d - 1) / (e^d + 1)``, evaluated stably as ``tanh(d / 2)``."""
    return torch.tanh(0.5 * d)


def _check_local(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name}: expected float local features of shape (batch, stripes, channels), got {shape}")
    return x


def shortest_path(dist: torch.Tensor) -> torch.Tensor:
    """Length of the shortest right/down path from ``[0, 0]`` to ``[H-1, W-1]`` of every matrix in a
    batch ``(N, H, W)`` -> ``(N,)`` (anti-diagonal dynamic programme, vectorised over ``N``)."""
    if dist.dim() != 3:
        raise ValueError(f"dist: expected shape (pairs, H, W), got {tuple(dist.shape)}")
    N, H, W = dist.shape
    dev = dist.device
    prev, prev_lo = None, 0
    inf_col = dist.new_full((N, 1), float("inf"))
    for s in range(H + W - 1):
        lo, hi = max(0, s - W + 1), min(s, H - 1)
        rows = torch.arange(lo, hi + 1, device=dev)
        cell = dist[:, rows, s - rows]
        if prev is None:
            cur = cell
        else:
            padded = torch.cat([inf_col, prev, inf_col], dim=1)  # column r <-> row prev_lo + r - 1
            up = padded[:, rows - prev_lo]  # cell (i-1, j)
            left = padded[:, rows - prev_lo + 1]  # cell (i, j-1)
            cur = cell + torch.minimum(up, left)
        prev, prev_lo = cur, lo
    return prev[:, 0]


def _stripe_distances_pairs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    diff = x.unsqueeze(2) - y.unsqueeze(1)  # (N, H, W, C)
    return squash(safe_sqrt((diff * diff).sum(-1)))


def local_distance_pairs(x: torch.Tensor, y: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """AlignedReID local distance of row-aligned pairs: ``x[i]`` vs ``y[i]``, shapes ``(N, H, C)``."""
    _check_local(x, "x")
    _check_local(y, "y")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)}: need the same number of pairs and channels")
    if normalize:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    if x.shape[0] == 0:
        return x.new_zeros(0)
    return shortest_path(_stripe_distances_pairs(x, y))


def _stripe_distances_block(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(Nq, H, C) x (Ng, W, C) -> (Nq * Ng, H, W)`` squashed stripe distances (expansion form)."""
    q2 = (q * q).sum(-1)  # (Nq, H)
    g2 = (g * g).sum(-1)  # (Ng, W)
    cross = torch.einsum("ahc,bwc->abhw", q, g)
    sq = q2[:, None, :, None] + g2[None, :, None, :] - 2.0 * cross
    d = squash(safe_sqrt(sq.clamp_min(0.0)))
    return d.reshape(-1, q.shape[1], g.shape[1])


def local_distance_matrix(q_local, g_local, chunk: int = 64, gallery_chunk: int = 2048, normalize: bool = True,
                          progress: bool = False):
    """All-pairs AlignedReID local distance ``(Nq, Ng)``, computed block by block.

    ``q_local`` ``(Nq, H, C)``, ``g_local`` ``(Ng, W, C)`` as tensors or numpy arrays; the result has
    the same kind (numpy in -> numpy out) and dtype as ``q_local``. Peak memory is about
    ``chunk * gallery_chunk * H * W`` floats (x a few) whatever ``Nq`` and ``Ng`` are.
    """
    as_numpy = isinstance(q_local, np.ndarray)
    q = torch.as_tensor(q_local)
    g = torch.as_tensor(g_local).to(device=q.device, dtype=q.dtype)
    _check_local(q, "q_local")
    _check_local(g, "g_local")
    if q.shape[2] != g.shape[2]:
        raise ValueError(f"q_local channels {q.shape[2]} != g_local channels {g.shape[2]}")
    if chunk < 1 or gallery_chunk < 1:
        raise ValueError(f"chunk and gallery_chunk must be >= 1, got {chunk}, {gallery_chunk}")
    if normalize:
        q, g = F.normalize(q, dim=-1), F.normalize(g, dim=-1)
    Nq, Ng = q.shape[0], g.shape[0]
    rows = []
    for qs in tqdm(range(0, Nq, chunk), disable=not progress, desc="local distance", unit="block"):
        qb = q[qs:qs + chunk]
        cols = []
        for gs in range(0, Ng, gallery_chunk):
            gb = g[gs:gs + gallery_chunk]
            cols.append(shortest_path(_stripe_distances_block(qb, gb)).reshape(qb.shape[0], gb.shape[0]))
        rows.append(torch.cat(cols, dim=1) if cols else q.new_zeros(qb.shape[0], 0))
    out = torch.cat(rows, dim=0) if rows else q.new_zeros(0, Ng)
    return out.detach().cpu().numpy() if as_numpy else out


class AlignedTripletLoss(nn.Module):
    """Batch-hard triplet loss on global and local distances (hard samples mined globally).

    ``forward(global_feat (B, D), local_feat (B, H, C), labels (B,))`` returns
    ``global_weight * L_global + local_weight * L_local`` where each term is the mean over anchors of
    :func:`~reid_core.losses.triplet_loss.triplet_terms`. ``last_stats``: ``loss_global``,
    ``loss_local`` (floats), ``num_triplets``, ``empty`` (no anchor with both a positive and a negative
    -> attached zero).
    """

    def __init__(self, margin: float = 0.3, local_margin: Optional[float] = None, distance=None,
                 global_weight: float = 1.0, local_weight: float = 1.0, normalize_local: bool = True,
                 variant: str = "hinge", local_scale: str = "sum"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if local_scale not in LOCAL_SCALES:
            raise ValueError(f"local_scale: expected one of {LOCAL_SCALES}, got {local_scale!r}")
        if local_weight < 0 or global_weight < 0:
            raise ValueError(f"weights must be >= 0, got global_weight={global_weight}, local_weight={local_weight}")
        self.local_scale = local_scale
        if margin < 0 or (local_margin is not None and local_margin < 0):
            raise ValueError(f"margins must be >= 0, got margin={margin}, local_margin={local_margin}")
        self.margin = float(margin)
        self.local_margin = float(margin if local_margin is None else local_margin)
        self.distance = get_distance(distance)
        self.global_weight = float(global_weight)
        self.local_weight = float(local_weight)
        self.normalize_local = bool(normalize_local)
        self.variant = variant
        self.miner = BatchHardMiner()
        self.last_stats: dict = {}

    def forward(self, global_feat: torch.Tensor, local_feat: torch.Tensor, labels) -> torch.Tensor:
        check_embeddings(global_feat, "global_feat")
        _check_local(local_feat, "local_feat")
        if local_feat.shape[0] != global_feat.shape[0]:
            raise ValueError(f"local_feat: has {local_feat.shape[0]} rows but global_feat has {global_feat.shape[0]}")
        labels = check_labels(labels, global_feat.shape[0], device=global_feat.device)
        dist = self.distance(global_feat)
        a, p, n = self.miner.mine(dist.detach(), labels)
        if a.numel() == 0:
            self.last_stats = {"loss_global": 0.0, "loss_local": 0.0, "num_triplets": 0, "empty": True}
            return attached_zero(global_feat, local_feat)
        l_glob = triplet_terms(dist[a, p], dist[a, n], self.margin, self.variant).mean()
        d_ap = local_distance_pairs(local_feat[a], local_feat[p], normalize=self.normalize_local)
        d_an = local_distance_pairs(local_feat[a], local_feat[n], normalize=self.normalize_local)
        if self.local_scale == "mean":  # per cell of the path: H + W - 1 cells, here H = W
            cells = 2 * local_feat.shape[1] - 1
            d_ap, d_an = d_ap / cells, d_an / cells
        l_loc = triplet_terms(d_ap, d_an, self.local_margin, self.variant).mean()
        self.last_stats = {"loss_global": float(l_glob.detach()), "loss_local": float(l_loc.detach()),
                           "num_triplets": int(a.numel()), "empty": False}
        return self.global_weight * l_glob + self.local_weight * l_loc


def mutual_kl_loss(logits: torch.Tensor, partner_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(p_partner || p_self)`` averaged over the batch, gradient stopped on the partner."""
    if logits.shape != partner_logits.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and partner_logits {tuple(partner_logits.shape)}: need equal (batch, classes) shapes")
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(partner_logits.detach() / temperature, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean()


def metric_mutual_loss(dist: torch.Tensor, partner_dist: torch.Tensor) -> torch.Tensor:
    """``mean_{ij} (dist[i,j] - ZG(partner_dist[i,j]))^2`` (AlignedReID's metric mutual loss)."""
    if dist.shape != partner_dist.shape:
        raise ValueError(f"dist {tuple(dist.shape)} and partner_dist {tuple(partner_dist.shape)}: shapes differ")
    return ((dist - partner_dist.detach()) ** 2).mean()


class MutualLearningLoss(nn.Module):
    """Mutual learning between two networks (see the module docstring).

    ``forward(logits1, logits2, feat1, feat2, local1=None, local2=None)``: ``kl_weight`` times the
    classification mutual loss plus ``metric_weight`` times the metric mutual loss on the global
    distance matrices (and on the local distance matrices when ``local1``/``local2`` are given).
    ``symmetric=True``: the terms for network 1 (partner = 2) and for network 2 (partner = 1) are
    summed; ``False``: only network 1's terms. ``last_stats``: ``loss_kl``, ``loss_metric`` (floats).
    """

    def __init__(self, kl_weight: float = 1.0, metric_weight: float = 1.0, distance=None, symmetric: bool = True,
                 temperature: float = 1.0, normalize_local: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {temperature}")
        self.kl_weight = float(kl_weight)
        self.metric_weight = float(metric_weight)
        self.distance = get_distance(distance) if distance is not None else EuclideanDistance()
        self.symmetric = bool(symmetric)
        self.temperature = float(temperature)
        self.normalize_local = bool(normalize_local)
        self.last_stats: dict = {}

    def _local_batch_matrix(self, local: torch.Tensor) -> torch.Tensor:
        return local_distance_matrix(local, local, chunk=local.shape[0], gallery_chunk=local.shape[0],
                                     normalize=self.normalize_local)

    def forward(self, logits1, logits2, feat1, feat2, local1=None, local2=None) -> torch.Tensor:
        check_embeddings(feat1, "feat1")
        check_embeddings(feat2, "feat2")
        kl = mutual_kl_loss(logits1, logits2, self.temperature)
        d1, d2 = self.distance(feat1), self.distance(feat2)
        mm = metric_mutual_loss(d1, d2)
        if self.symmetric:
            kl = kl + mutual_kl_loss(logits2, logits1, self.temperature)
            mm = mm + metric_mutual_loss(d2, d1)
        if (local1 is None) != (local2 is None):
            raise ValueError("local1 / local2: give both or neither")
        if local1 is not None:
            l1, l2 = self._local_batch_matrix(local1), self._local_batch_matrix(local2)
            mm = mm + metric_mutual_loss(l1, l2)
            if self.symmetric:
                mm = mm + metric_mutual_loss(l2, l1)
        self.last_stats = {"loss_kl": float(kl.detach()), "loss_metric": float(mm.detach())}
        return self.kl_weight * kl + self.metric_weight * mm
