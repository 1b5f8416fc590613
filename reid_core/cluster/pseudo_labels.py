"""Pseudo-labels from a precomputed (sparse Jaccard) distance: DBSCAN or HDBSCAN.

Distances
---------
``dist`` is either a dense ``(N, N)`` array or a scipy sparse matrix as returned by
:func:`reid_core.cluster.jaccard.compute_jaccard_distance`: **stored entries are distances,
missing entries mean distance 1** (explicit zeros are real zeros and must stay stored).

* DBSCAN (scikit-learn, ``metric="precomputed"``) works on the sparse matrix directly: only
  stored entries are neighbour candidates, which equals the dense result as long as
  ``eps < 1`` (a missing pair has distance 1 > eps). ``eps >= 1`` with sparse input is refused.
* HDBSCAN (scikit-learn's ``HDBSCAN``) needs every pairwise distance (its mutual reachability
  graph would read a missing entry as "no edge", not as distance 1), so sparse input is
  densified with missing = 1. That is ``N^2`` float64 (3.2 GB at N = 20,000); above
  ``max_dense`` (default 20,000) a ``ValueError`` says so.

Labels
------
``int64``; ``-1`` = outlier; clusters renumbered ``0..C-1`` in order of their first member
(smallest sample index), so the numbering does not depend on the algorithm's internal order.
When every sample is an outlier the labels are all ``-1`` and ``cluster_stats`` reports
``n_clusters == 0``: no exception; the caller decides (the training loop skips the round
with a warning).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .jaccard import sparse_distance_to_dense

__all__ = ["cluster_features", "cluster_stats", "eps_sweep", "relabel_contiguous", "CLUSTER_METHODS"]

CLUSTER_METHODS = ("dbscan", "hdbscan")


def _check_dist(dist: Any) -> sp.csr_matrix | np.ndarray:
    if sp.issparse(dist):
        d = sp.csr_matrix(dist)  # keeps explicit zeros
        data = d.data
    else:
        d = np.asarray(dist)
        if d.ndim != 2:
            raise ValueError(f"dist must be a square (N, N) matrix, got shape {d.shape}")
        data = d
    if d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square (N, N) matrix, got shape {d.shape}")
    if d.shape[0] == 0:
        raise ValueError("dist is empty (N = 0)")
    if data.size and (not np.isfinite(data).all() or (data < 0).any()):
        raise ValueError("dist must hold finite, non-negative distances")
    return d


def relabel_contiguous(labels: Any) -> np.ndarray:
    """Renumber cluster ids ``>= 0`` to ``0..C-1`` by first occurrence; keep ``-1``."""
    lab = np.asarray(labels).astype(np.int64)
    out = np.full(lab.shape, -1, dtype=np.int64)
    mask = lab >= 0
    if mask.any():
        uniq, first = np.unique(lab[mask], return_index=True)
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
        out[mask] = rank[np.searchsorted(uniq, lab[mask])]
    return out


def cluster_features(
    dist: Any,
    method: str = "dbscan",
    eps: float = 0.6,
    min_samples: int = 4,
    min_cluster_size: int = 4,
    *,
    max_dense: int = 20000,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Cluster with a precomputed distance; ``int64`` labels, ``-1`` outliers, ids ``0..C-1``.

    ``method="dbscan"`` uses ``eps`` and ``min_samples`` (Cluster-Contrast: 0.6 and 4);
    ``method="hdbscan"`` uses ``min_cluster_size`` and ``min_samples`` (``eps`` is ignored).
    See the module docstring for sparse input and the all-outlier case.
    """
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {CLUSTER_METHODS}, got {method!r}")
    if int(min_samples) < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    d = _check_dist(dist)
    n = d.shape[0]
    if method == "dbscan":
        from sklearn.cluster import DBSCAN
        from sklearn.neighbors import sort_graph_by_row_values

        if not float(eps) > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if sp.issparse(d):
            if eps >= 1.0:
                raise ValueError(f"eps={eps} >= 1 with a sparse distance: missing pairs (distance 1) would be "
                                 "neighbours but DBSCAN only sees stored entries; use eps < 1 or a dense matrix")
            d = sort_graph_by_row_values(d, copy=True, warn_when_not_sorted=False)
        labels = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed",
                        n_jobs=n_jobs).fit_predict(d)
    else:
        from sklearn.cluster import HDBSCAN

        if int(min_cluster_size) < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size}")
        if sp.issparse(d):
            if n > max_dense:
                raise ValueError(f"HDBSCAN needs a dense distance matrix; N={n} > max_dense={max_dense} "
                                 f"(~{n * n * 8 / 1e9:.1f} GB). Use method='dbscan' or raise max_dense")
            d = sparse_distance_to_dense(d, fill=1.0).astype(np.float64)
        if n < 2:
            return np.full(n, -1, dtype=np.int64)
        labels = HDBSCAN(min_cluster_size=int(min_cluster_size), min_samples=int(min_samples),
                         metric="precomputed", n_jobs=n_jobs, copy=True).fit_predict(d)
    labels = relabel_contiguous(labels)
    if n and (labels < 0).all():
        warnings.warn(f"{method}: every one of the {n} samples is an outlier (no cluster)", RuntimeWarning, stacklevel=2)
    return labels


def cluster_stats(labels: Any) -> dict[str, Any]:
    """Summary of a labelling: ``n_samples``, ``n_clusters``, ``n_outliers``, ``outlier_fraction``,
    ``largest_cluster``, ``mean_cluster_size``, ``n_singletons`` (clusters of one sample)."""
    lab = np.asarray(labels).astype(np.int64)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if (lab < -1).any():
        raise ValueError("labels must be -1 (outlier) or >= 0")
    sizes = np.bincount(lab[lab >= 0]) if (lab >= 0).any() else np.zeros(0, np.int64)
    sizes = sizes[sizes > 0]
    n = len(lab)
    n_out = int((lab < 0).sum())
    return {
        "n_samples": n,
        "n_clusters": int(len(sizes)),
        "n_outliers": n_out,
        "outlier_fraction": float(n_out / n) if n else 0.0,
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        "mean_cluster_size": float(sizes.mean()) if len(sizes) else 0.0,
        "n_singletons": int((sizes == 1).sum()),
    }


def _quality(labels: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """NMI / ARI on all samples with known ground truth, each outlier its own singleton
    (:func:`reid_core.evaluation.pseudo_quality.pseudo_label_quality` when present)."""
    try:
        from reid_core.evaluation.pseudo_quality import pseudo_label_quality
    except ImportError:
        pseudo_label_quality = None
    if pseudo_label_quality is not None:
        q = pseudo_label_quality(labels, gt)
        return {"nmi": float(q["nmi"]), "ari": float(q["ari"])}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    known = gt >= 0
    lab = labels[known].copy()
    out = lab < 0
    lab[out] = lab.max(initial=-1) + 1 + np.arange(out.sum())
    if not (lab >= 0).any() or out.all():
        return {"nmi": float("nan"), "ari": float("nan")}
    return {"nmi": float(normalized_mutual_info_score(gt[known], lab)),
            "ari": float(adjusted_rand_score(gt[known], lab))}


def eps_sweep(
    dist: Any,
    eps_values: Iterable[float],
    gt_pids: Any = None,
    *,
    min_samples: int = 4,
) -> pd.DataFrame:
    """DBSCAN for every ``eps``: DataFrame with ``eps``, ``n_clusters``, ``n_outliers``, and with
    ``gt_pids`` also ``nmi`` and ``ari`` (all samples with known identity, outliers counted as
    singletons; the definitions of :mod:`reid_core.evaluation.pseudo_quality`)."""
    d = _check_dist(dist)
    eps_list = [float(e) for e in eps_values]
    if not eps_list:
        raise ValueError("eps_values is empty")
    gt = None
    if gt_pids is not None:
        gt = np.asarray(gt_pids).astype(np.int64)
        if gt.shape != (d.shape[0],):
            raise ValueError(f"gt_pids must have one entry per sample ({d.shape[0]}), got shape {gt.shape}")
    rows = []
    for e in eps_list:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lab = cluster_features(d, "dbscan", eps=e, min_samples=min_samples)
        st = cluster_stats(lab)
        row = {"eps": e, "n_clusters": st["n_clusters"], "n_outliers": st["n_outliers"]}
        if gt is not None:
            row.update(_quality(lab, gt))
        rows.append(row)
    return pd.DataFrame(rows)
