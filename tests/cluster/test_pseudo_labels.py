"""Pseudo-labels: DBSCAN / HDBSCAN on sparse Jaccard distances, relabelling, stats, eps sweep."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from reid_core.cluster.jaccard import compute_jaccard_distance, sparse_distance_to_dense
from reid_core.cluster.pseudo_labels import cluster_features, cluster_stats, eps_sweep, relabel_contiguous


def clustered(n_ids=6, per_id=8, dim=16, noise=0.3, seed=0, n_noise=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    x = np.repeat(centres, per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    gt = np.repeat(np.arange(n_ids), per_id)
    if n_noise:
        x = np.concatenate([x, 3 * rng.normal(size=(n_noise, dim))])
        gt = np.concatenate([gt, -1 - np.arange(n_noise)])
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), gt[perm]


def naive_dbscan_core_partition(d, eps, min_samples):
    """Core points and their connected components from the DBSCAN definition (loops)."""
    n = len(d)
    neigh = [[j for j in range(n) if d[i, j] <= eps] for i in range(n)]  # includes i itself
    core = [len(neigh[i]) >= min_samples for i in range(n)]
    comp = [-1] * n
    c = 0
    for i in range(n):
        if core[i] and comp[i] < 0:
            stack = [i]
            comp[i] = c
            while stack:
                p = stack.pop()
                for q in neigh[p]:
                    if core[q] and comp[q] < 0:
                        comp[q] = c
                        stack.append(q)
            c += 1
    reachable = [core[i] or any(core[j] for j in neigh[i]) for i in range(n)]
    return np.array(core), np.array(comp), np.array(reachable)


def same_partition(a, b):
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


@pytest.mark.parametrize("eps,min_samples", [(0.6, 4), (0.5, 3), (0.75, 6)])
def test_dbscan_sparse_matches_definition(eps, min_samples):
    x, _ = clustered(seed=int(eps * 100), n_noise=5, noise=0.45)
    dist = compute_jaccard_distance(x, k1=12, k2=4)
    dense = sparse_distance_to_dense(dist).astype(np.float64)
    labels = cluster_features(dist, "dbscan", eps=eps, min_samples=min_samples)
    core, comp, reachable = naive_dbscan_core_partition(dense, eps, min_samples)
    assert labels.dtype == np.int64
    assert np.array_equal(labels >= 0, reachable)
    assert same_partition(labels[core], comp[core])
    # labels contiguous, numbered by first occurrence
    pos = labels[labels >= 0]
    assert set(pos) == set(range(len(set(pos))))
    _, first = np.unique(pos, return_index=True)
    assert np.all(np.diff(first) > 0)
    # dense input gives the same labels
    assert np.array_equal(labels, cluster_features(dense, "dbscan", eps=eps, min_samples=min_samples))


def test_recovers_identities():
    x, gt = clustered(seed=3)
    dist = compute_jaccard_distance(x, k1=12, k2=4)
    labels = cluster_features(dist)
    assert same_partition(labels, gt)
    st = cluster_stats(labels)
    assert st["n_clusters"] == 6 and st["n_outliers"] == 0 and st["largest_cluster"] == 8


def test_hdbscan_sparse_equals_dense_and_finds_clusters():
    x, gt = clustered(seed=4, n_ids=5, per_id=10)
    dist = compute_jaccard_distance(x, k1=12, k2=4)
    a = cluster_features(dist, "hdbscan", min_cluster_size=4, min_samples=4)
    b = cluster_features(sparse_distance_to_dense(dist), "hdbscan", min_cluster_size=4, min_samples=4)
    assert np.array_equal(a, b)
    assert cluster_stats(a)["n_clusters"] == 5
    with pytest.raises(ValueError, match="max_dense"):
        cluster_features(dist, "hdbscan", max_dense=10)


def test_all_outliers_does_not_crash():
    x = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
    dist = compute_jaccard_distance(x, k1=10, k2=3)
    with pytest.warns(RuntimeWarning, match="outlier"):
        labels = cluster_features(dist, eps=0.05, min_samples=4)
    assert np.all(labels == -1)
    st = cluster_stats(labels)
    assert st["n_clusters"] == 0 and st["n_outliers"] == 40 and st["largest_cluster"] == 0


def test_relabel_contiguous():
    assert relabel_contiguous([7, 7, -1, 3, 9, 3]).tolist() == [0, 0, -1, 1, 2, 1]
    assert relabel_contiguous([-1, -1]).tolist() == [-1, -1]
    assert relabel_contiguous(np.array([], dtype=int)).tolist() == []


def test_cluster_stats_values():
    st = cluster_stats([0, 0, 1, -1, 2, 2, 2])
    assert st == {"n_samples": 7, "n_clusters": 3, "n_outliers": 1, "outlier_fraction": 1 / 7,
                  "largest_cluster": 3, "mean_cluster_size": 2.0, "n_singletons": 1}
    with pytest.raises(ValueError, match="-1"):
        cluster_stats([0, -2])


def test_eps_sweep():
    x, gt = clustered(seed=5, n_noise=4)
    dist = compute_jaccard_distance(x, k1=12, k2=4)
    df = eps_sweep(dist, [0.2, 0.6, 0.9], gt_pids=np.where(gt < 0, -1, gt))
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["eps", "n_clusters", "n_outliers", "nmi", "ari"]
    assert df["n_outliers"].is_monotonic_decreasing
    for e, row in zip([0.2, 0.6, 0.9], df.itertuples()):
        lab = cluster_features(dist, eps=e)
        assert row.n_clusters == cluster_stats(lab)["n_clusters"]
    assert df.loc[df.eps == 0.6, "ari"].item() > 0.8
    no_gt = eps_sweep(dist, [0.6])
    assert list(no_gt.columns) == ["eps", "n_clusters", "n_outliers"]
    with pytest.raises(ValueError, match="gt_pids"):
        eps_sweep(dist, [0.6], gt_pids=[0, 1])


def test_bad_inputs():
    d = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="method"):
        cluster_features(d, "kmeans")
    with pytest.raises(ValueError, match="square"):
        cluster_features(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="eps=1.5 >= 1"):
        cluster_features(d, eps=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        cluster_features(np.array([[0.0, -1.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        eps_sweep(d, [])
