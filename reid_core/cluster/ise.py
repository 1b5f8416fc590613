"""Implicit Sample Extension (ISE; Zhang et al., CVPR 2022): support samples around cluster borders.

For each real sample ``f`` (pseudo-label ``y``) ISE generates *support samples* by moving ``f`` towards
the centroids of its nearest **other** clusters (progressive linear interpolation, PLI)::

    f_hat   = normalize(f)                                   (the reference model outputs unit features)
    c_y     = memory centroid of the sample's own cluster     (detached)
    c_nn^j  = j-th most similar other centroid to f_hat, j = 1..k   (cosine, detached)
    s^j     = normalize( f_hat + (lambda(t) / 2) * (c_nn^j - c_y) )
    lambda(t) = (lambda0 / 2) * ln(1 + (e - 1) * t / T)

``t`` is the global iteration (``epoch * iters + i``) and ``T`` the total number of iterations, so
``lambda`` grows from 0 at the start to ``lambda0 / 2`` at the end (log-shaped: fast first, then
slower), and the step actually applied to ``f_hat`` is ``lambda / 2`` times the centroid difference
(at most ``lambda0 / 4``) - both halvings are in the reference implementation. Gradients reach the
support samples through ``f`` only; centroids are detached.

Geometric guarantee (tested): when ``0 < lambda / 2 < 1``, ``c_nn != c_y``, ``cos(f, c_nn) >= 0`` and
``f`` is at least as close to its own centroid as to ``c_nn``, the support sample is strictly closer
to ``c_nn`` than ``f`` is: ``cos(s, c_nn) > cos(f, c_nn)`` (with ``g = cos(f, c_nn)``, ``a = lambda / 2``,
``rho = cos(c_y, c_nn)``, bounding the norm by ``sqrt(1 + x) <= 1 + x / 2`` reduces the claim to
``(1 - rho)(1 - a g) > g (g - cos(f, c_y))``, whose right side is <= 0). Without these conditions
(e.g. a sample pointing away from the neighbour) the renormalisation can break it.

:func:`nearest_cluster_table` summarises, for inspection, which clusters ISE pushes against which.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def lambda_schedule(t: float, T: float, lambda0: float = 1.0) -> float:
    """Progressive interpolation degree ``(lambda0 / 2) * ln(1 + (e - 1) * t / T)``.

    ``t``: global iteration (0-based), ``0 <= t <= T``; ``T``: total iterations (> 0).
    Returns 0 at ``t = 0`` and ``lambda0 / 2`` at ``t = T``.
    """
    if not T > 0:
        raise ValueError(f"T (total iterations) must be > 0, got {T}")
    if t < 0 or t > T:
        raise ValueError(f"t (global iteration) must lie in [0, T={T}], got {t}")
    if lambda0 < 0:
        raise ValueError(f"lambda0 must be >= 0, got {lambda0}")
    return 0.5 * float(lambda0) * math.log1p((math.e - 1.0) * float(t) / float(T))


def _as_labels(labels, n: int, device) -> torch.Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels: expected shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected integer cluster labels, got dtype {labels.dtype}")
    return labels.long()


def _check_feats_centroids(feats: torch.Tensor, centroids: torch.Tensor) -> None:
    if feats.dim() != 2:
        raise ValueError(f"feats: expected shape (batch, dim), got {tuple(feats.shape)}")
    if centroids.dim() != 2 or centroids.shape[1] != feats.shape[1]:
        raise ValueError(f"centroids: expected shape (num_clusters, {feats.shape[1]}), "
                         f"got {tuple(centroids.shape)}")


def nearest_clusters(feats: torch.Tensor, labels, centroids: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Indices ``(B, k)`` of the ``k`` centroids most similar (cosine) to each sample, excluding the
    sample's own cluster, most similar first. No gradient. Labels must lie in ``[0, C)``."""
    _check_feats_centroids(feats, centroids)
    C = centroids.shape[0]
    labels = _as_labels(labels, feats.shape[0], feats.device)
    if not 1 <= int(k) <= C - 1:
        raise ValueError(f"k must lie in [1, num_clusters - 1 = {C - 1}], got {k}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= C):
        raise ValueError(f"labels: must lie in [0, {C - 1}], got range [{int(labels.min())}, {int(labels.max())}]")
    with torch.no_grad():
        cent = F.normalize(centroids.detach().to(torch.promote_types(feats.dtype, centroids.dtype)), dim=1)
        sims = F.normalize(feats.detach().to(cent.dtype), dim=1) @ cent.t()
        sims.scatter_(1, labels.unsqueeze(1), float("-inf"))
        return sims.topk(int(k), dim=1).indices


def support_samples(feats: torch.Tensor, labels, centroids: torch.Tensor, nn_idx: torch.Tensor,
                    lam: float) -> torch.Tensor:
    """Support samples ``normalize(normalize(f) + (lam / 2) * (c_nn - c_y))``, shape ``(B * k, D)``.

    Row ``i * k + j`` belongs to sample ``i`` and its ``j``-th neighbour ``nn_idx[i, j]``; its label is
    ``labels.repeat_interleave(k)``. ``lam`` is the value of :func:`lambda_schedule`. Gradient flows
    through ``feats`` only (centroids are detached). Computed in the dtype of ``feats``.
    """
    _check_feats_centroids(feats, centroids)
    labels = _as_labels(labels, feats.shape[0], feats.device)
    nn_idx = torch.as_tensor(nn_idx, device=feats.device).long()
    if nn_idx.dim() != 2 or nn_idx.shape[0] != feats.shape[0]:
        raise ValueError(f"nn_idx: expected shape ({feats.shape[0]}, k), got {tuple(nn_idx.shape)}")
    B, k = nn_idx.shape
    cent = centroids.detach().to(feats.dtype)
    f_hat = F.normalize(feats, dim=1)
    direction = cent[nn_idx] - cent[labels].unsqueeze(1)                 # (B, k, D)
    sup = f_hat.unsqueeze(1) + (float(lam) / 2.0) * direction
    return F.normalize(sup.reshape(B * k, -1), dim=1)


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


TABLE_COLUMNS = ["label", "cluster_size", "neighbour_label", "n_samples", "frac_samples",
                 "mean_sample_cosine", "centroid_cosine", "centroid_rank"]


def nearest_cluster_table(features, labels, centroids=None, k: int = 1,
                          chunk_size: int = 4096) -> pd.DataFrame:
    """Which clusters ISE pushes against which: one row per (cluster, chosen neighbour) pair.

    For every sample with a label ``>= 0`` the ``k`` nearest other centroids are found exactly as ISE
    does during training (:func:`nearest_clusters`); the rows aggregate those choices per cluster.

    Args:
        features: ``(N, D)`` features (numpy or torch; normalised here).
        labels: ``(N,)`` pseudo-labels, ``-1`` = outlier (ignored), clusters ``0..C-1``.
        centroids: ``(C, D)`` centroids (e.g. ``memory.features``); ``None`` = the renormalised mean of
            each cluster's normalised features (what :meth:`ClusterMemory.init_centroids` computes).
        k: neighbours per sample (ISE's ``k``).

    Columns (sorted by ``label``, then ``n_samples`` descending, then ``neighbour_label``):
        ``label``: the cluster whose samples are extended.
        ``cluster_size``: its number of samples.
        ``neighbour_label``: a cluster towards which at least one of its samples is pushed.
        ``n_samples``: how many of its samples have ``neighbour_label`` among their ``k`` nearest other
            centroids (so ``n_samples`` sums to ``k * cluster_size`` per cluster).
        ``frac_samples``: ``n_samples / cluster_size``.
        ``mean_sample_cosine``: mean cosine between those samples and the neighbour's centroid.
        ``centroid_cosine``: cosine between the two centroids.
        ``centroid_rank``: rank of ``neighbour_label`` among the centroids most similar to the
            ``label`` centroid (1 = its nearest other centroid).
    """
    feats = _to_tensor(features, "features")
    labs = torch.as_tensor(np.asarray(labels)).long().flatten()
    if labs.shape[0] != feats.shape[0]:
        raise ValueError(f"labels: has {labs.shape[0]} entries but features has {feats.shape[0]} rows")
    keep = labs >= 0
    feats, labs = F.normalize(feats[keep], dim=1), labs[keep]
    if labs.numel() == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c not in ("frac_samples", "mean_sample_cosine",
                             "centroid_cosine") else "float64") for c in TABLE_COLUMNS})
    if centroids is None:
        C = int(labs.max()) + 1
        sums = torch.zeros(C, feats.shape[1]).index_add_(0, labs, feats)
        counts = torch.bincount(labs, minlength=C)
        if (counts == 0).any():
            raise ValueError("labels: clusters must be numbered 0..C-1 without gaps "
                             f"(empty: {(counts == 0).nonzero().flatten()[:10].tolist()})")
        cent = F.normalize(sums / counts.unsqueeze(1).float(), dim=1)
    else:
        cent = F.normalize(_to_tensor(centroids, "centroids"), dim=1)
        if cent.shape[1] != feats.shape[1]:
            raise ValueError(f"centroids: dimension {cent.shape[1]} != features dimension {feats.shape[1]}")
        C = cent.shape[0]
        if int(labs.max()) >= C:
            raise ValueError(f"labels: found label {int(labs.max())} but only {C} centroids")
    nn_parts, cos_parts = [], []
    for s in range(0, feats.shape[0], chunk_size):
        f = feats[s:s + chunk_size]
        nn = nearest_clusters(f, labs[s:s + chunk_size], cent, k)
        nn_parts.append(nn)
        cos_parts.append((f.unsqueeze(1) * cent[nn]).sum(-1))
    nn_idx = torch.cat(nn_parts).flatten().numpy()
    cos = torch.cat(cos_parts).flatten().double().numpy()
    own = labs.repeat_interleave(k).numpy()
    pairs = pd.DataFrame({"label": own, "neighbour_label": nn_idx, "cos": cos})
    table = (pairs.groupby(["label", "neighbour_label"], sort=False)
             .agg(n_samples=("cos", "size"), mean_sample_cosine=("cos", "mean")).reset_index())
    sizes = np.bincount(labs.numpy(), minlength=C)
    table["cluster_size"] = sizes[table["label"].to_numpy()]
    table["frac_samples"] = table["n_samples"] / table["cluster_size"]
    csim = cent @ cent.t()
    a = torch.tensor(table["label"].to_numpy(dtype=np.int64))
    b = torch.tensor(table["neighbour_label"].to_numpy(dtype=np.int64))
    table["centroid_cosine"] = csim[a, b].double().numpy()
    # centroid_rank[c, d]: position of d among the other centroids sorted by similarity to c (1 = nearest)
    csim.fill_diagonal_(float("-inf"))
    order = csim.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(1, C + 1).expand(C, C).contiguous())
    table["centroid_rank"] = ranks[a, b].numpy()
    table = table.astype({"label": "int64", "neighbour_label": "int64", "n_samples": "int64",
                          "cluster_size": "int64", "centroid_rank": "int64"})
    table = table.sort_values(["label", "n_samples", "neighbour_label"], ascending=[True, False, True])
    return table[TABLE_COLUMNS].reset_index(drop=True)
