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

__all__ = ["DegenerateClusteringWarning", "clustering_health", "cluster_features", "cluster_stats", "eps_from_density", "eps_sweep", "relabel_contiguous",
           "split_large_clusters", "CLUSTER_METHODS"]

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


def eps_from_density(dist: Any, rho: float, eps_max: float = 0.9, eps_min: float = 0.05) -> float:
    """A label-free DBSCAN ``eps`` for this distance matrix: the mean of its ``rho`` fraction of
    smallest off-diagonal pairwise distances (``m = rho * N (N - 1) / 2`` pairs), clipped to
    ``[eps_min, eps_max]``.

    The eps then follows the features: tight early-round features (many small distances) get a
    smaller eps than the same ``rho`` would give on diffuse ones, and a set with few images per
    person gets a smaller eps than one with many. For a sparse ``dist`` (missing = 1) only stored
    entries are candidates; when fewer than ``m`` pairs are stored, the missing ones count as 1.
    """
    if not 0 < float(rho) < 1:
        raise ValueError(f"rho must lie in (0, 1), got {rho!r}")
    if not 0 < eps_min <= eps_max:
        raise ValueError(f"need 0 < eps_min <= eps_max, got {eps_min}, {eps_max}")
    d = _check_dist(dist)
    n = d.shape[0]
    m = max(1, int(round(float(rho) * n * (n - 1) / 2)))
    if sp.issparse(d):
        coo = sp.triu(d, k=1, format="coo")
        vals = np.asarray(coo.data, dtype=np.float64)
    else:
        iu = np.triu_indices(n, k=1)
        vals = np.asarray(d, dtype=np.float64)[iu]
    if len(vals) >= m:
        smallest = np.partition(vals, m - 1)[:m]
        eps = float(smallest.mean())
    else:
        eps = float((vals.sum() + (m - len(vals)) * 1.0) / m)
    return float(np.clip(eps, eps_min, eps_max))


def split_large_clusters(dist: Any, labels: Any, max_size: int, eps: float, min_samples: int = 4,
                         shrink: float = 0.9, min_eps: float = 0.05, reassign: bool = True) -> np.ndarray:
    """Split every cluster larger than ``max_size`` by DBSCAN on its own rows of ``dist`` with a
    smaller eps (``eps * shrink``, then ``* shrink`` again for any part still too large, down to
    ``min_eps``). Samples that the tighter DBSCAN leaves alone join the part of their nearest
    clustered member when that distance is within the eps the cluster was made with
    (``reassign=True``), else become outliers (``-1``): splitting should not cost training images.
    The labels come back renumbered ``0..C-1`` (:func:`relabel_contiguous`).

    Label-free: reads only distances. DBSCAN's chaining (a path of close pairs through a crowd)
    is what makes the 300-500-image clusters of early rounds; a tighter eps inside the cluster
    cuts the weakest links of that path.
    """
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import sort_graph_by_row_values

    if int(max_size) < 2:
        raise ValueError(f"max_size must be >= 2, got {max_size}")
    if not 0 < float(shrink) < 1:
        raise ValueError(f"shrink must lie in (0, 1), got {shrink}")
    d = _check_dist(dist)
    if sp.issparse(d):
        d = sp.csr_matrix(d)
    lab = np.asarray(labels).astype(np.int64).copy()
    if lab.shape != (d.shape[0],):
        raise ValueError(f"labels: expected shape ({d.shape[0]},), got {lab.shape}")
    next_id = int(lab.max()) + 1 if (lab >= 0).any() else 0
    # (member indices, eps used to make them) of the clusters still to check
    todo = [(np.flatnonzero(lab == c), float(eps)) for c in np.unique(lab[lab >= 0])]
    while todo:
        members, used_eps = todo.pop()
        if len(members) <= max_size:
            continue
        new_eps = used_eps * float(shrink)
        if new_eps < min_eps:
            continue  # cannot split further: keep it
        sub = d[members][:, members]
        if sp.issparse(sub):
            sub = sort_graph_by_row_values(sp.csr_matrix(sub), copy=True, warn_when_not_sorted=False)
        part = DBSCAN(eps=new_eps, min_samples=int(min_samples), metric="precomputed").fit_predict(sub)
        if reassign and (part >= 0).any() and (part < 0).any():
            dense = sub.toarray() if sp.issparse(sub) else np.asarray(sub, dtype=np.float64)
            if sp.issparse(sub):  # missing entries of a sparse distance mean 1; stored zeros stay 0
                dense[dense == 0] = 1.0
                stored = sp.coo_matrix(sub)
                dense[stored.row, stored.col] = stored.data
            left = np.flatnonzero(part < 0)
            kept = np.flatnonzero(part >= 0)
            nearest = kept[np.argmin(dense[np.ix_(left, kept)], axis=1)]
            close = dense[left, nearest] <= used_eps
            part[left[close]] = part[nearest[close]]
        lab[members] = -1
        for p in np.unique(part[part >= 0]):
            idx = members[part == p]
            lab[idx] = next_id
            next_id += 1
            todo.append((idx, new_eps))
    return relabel_contiguous(lab)


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


class DegenerateClusteringWarning(UserWarning):
    """The pseudo-labels look degenerate by label-free statistics (see :func:`clustering_health`)."""


# thresholds of clustering_health (label-free; documented in README "Defaults, and why")
HEALTH_MAX_LARGEST_SHARE = 0.2  # one cluster holds more than this share of the clustered images ...
HEALTH_MIN_LARGEST = 20  # ... and at least this many images (a set of a handful of people is not chaining)
HEALTH_MAX_OUTLIER_FRACTION = 0.9  # almost nothing is clustered
HEALTH_MIN_CLUSTER_RATIO = 0.7  # clusters fell below this fraction of the previous round's count


def clustering_health(labels: Any, previous: Any = None) -> dict[str, Any]:
    """Label-free statistics of a clustering and the warnings they raise.

    Returns ``largest_share`` (largest cluster / clustered images), ``clusters_per_image``,
    ``outlier_fraction``, ``cluster_ratio`` (clusters / the previous round's clusters, nan without
    ``previous``) and ``warnings`` (a list of sentences; empty when the labels look healthy):

    * one cluster of at least ``HEALTH_MIN_LARGEST`` images holds more than
      ``HEALTH_MAX_LARGEST_SHARE`` of the clustered images (chaining:
      DBSCAN linked many people through a crowd; try camera_norm, split_factor or a smaller eps);
    * more than ``HEALTH_MAX_OUTLIER_FRACTION`` of the images are outliers (eps too small);
    * the number of clusters fell below ``HEALTH_MIN_CLUSTER_RATIO`` x the previous round's while the
      largest cluster grew (clusters merging into fewer, larger ones round after round: a collapse).

    Ground truth is never read.
    """
    lab = np.asarray(labels).astype(np.int64)
    st = cluster_stats(lab)
    clustered = st["n_samples"] - st["n_outliers"]
    largest_share = st["largest_cluster"] / clustered if clustered else 0.0
    out = {"largest_share": float(largest_share),
           "clusters_per_image": float(st["n_clusters"] / st["n_samples"]) if st["n_samples"] else 0.0,
           "outlier_fraction": st["outlier_fraction"], "cluster_ratio": float("nan"), "warnings": []}
    if st["largest_cluster"] >= HEALTH_MIN_LARGEST and largest_share > HEALTH_MAX_LARGEST_SHARE:
        out["warnings"].append(f"one cluster holds {100 * largest_share:.0f}% of the {clustered} clustered images "
                               f"({st['largest_cluster']}): clusters are chaining across people")
    if st["n_samples"] and st["outlier_fraction"] > HEALTH_MAX_OUTLIER_FRACTION:
        out["warnings"].append(f"{100 * st['outlier_fraction']:.0f}% of the images are outliers: eps is too small "
                               "for these features")
    if previous is not None:
        prev = cluster_stats(np.asarray(previous).astype(np.int64))
        if prev["n_clusters"]:
            ratio = st["n_clusters"] / prev["n_clusters"]
            out["cluster_ratio"] = float(ratio)
            if ratio < HEALTH_MIN_CLUSTER_RATIO and st["largest_cluster"] > prev["largest_cluster"]:
                out["warnings"].append(f"clusters fell from {prev['n_clusters']} to {st['n_clusters']} in one round "
                                       f"while the largest grew from {prev['largest_cluster']} to "
                                       f"{st['largest_cluster']}: the clustering is collapsing")
    return out


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
