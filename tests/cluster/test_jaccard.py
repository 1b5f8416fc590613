"""Sparse k-reciprocal Jaccard distance vs a slow dense reference written from the definition."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from reid_core.cluster.jaccard import (
    compute_jaccard_distance,
    jaccard_from_encoding,
    reciprocal_sets,
    sparse_distance_to_dense,
)
from reid_core.cluster.knn import knn_recall, knn_search


# ----------------------------------------------------------------------------- reference
def naive_ranking(x: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """float64 squared distances of L2-normalised rows and every row's full ranking
    (self first, then by distance, ties by index)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = 0.0 if i == j else max(float(np.sum((x[i] - x[j]) ** 2)), 0.0)
    ranks = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j))
        ranks.append([i] + others)
    return d, ranks


def naive_kreciprocal_jaccard(d, ranks, m1, m2, k2, use_max_form=True):
    """Dense Jaccard distance from the definition (plain loops, float64).

    ``use_max_form``: 1 - sum(min)/sum(max) (the textbook Jaccard); False: 1 - m/(2 - m).
    """
    n = len(ranks)

    def recip(i, m):
        return [j for j in ranks[i][:m] if i in ranks[j][:m]]

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, m1)
        expanded = set(r)
        for c in r:
            rc = recip(c, m2)
            if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
                expanded |= set(rc)
        members = sorted(expanded)
        weights = [np.exp(-d[i, j]) for j in members]
        total = sum(weights)
        for j, w in zip(members, weights):
            v[i, j] = w / total
    vqe = np.zeros((n, n))
    for i in range(n):
        for l in ranks[i][:k2]:
            vqe[i] += v[l] / k2
    jac = np.ones((n, n))
    for i in range(n):
        for k in range(n):
            smin = sum(min(vqe[i, j], vqe[k, j]) for j in range(n))
            if use_max_form:
                smax = sum(max(vqe[i, j], vqe[k, j]) for j in range(n))
                jac[i, k] = 1.0 - smin / smax
            else:
                jac[i, k] = 1.0 - smin / (2.0 - smin)
    return np.clip(jac, 0.0, 1.0)


def reference_jaccard(x, k1, k2, use_max_form=True):
    d, ranks = naive_ranking(x)
    n = len(x)
    m1 = min(k1, n)
    m2 = min(int(np.around(k1 / 2)) + 1, m1)
    return naive_kreciprocal_jaccard(d, ranks, m1, m2, min(k2, n), use_max_form)


def clustered(n_ids=8, per_id=9, dim=16, noise=0.35, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    x = np.repeat(centres, per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    return x.astype(np.float32), np.repeat(np.arange(n_ids), per_id)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(
    "kind,k1,k2",
    [("clustered", 20, 6), ("clustered", 7, 3), ("random", 12, 4), ("random", 30, 6), ("clustered", 5, 1)],
)
def test_matches_dense_reference(kind, k1, k2, backend):
    if kind == "clustered":
        x, _ = clustered(seed=k1)
    else:
        x = np.random.default_rng(k1).normal(size=(64, 12)).astype(np.float32)
    ref = reference_jaccard(x, k1, k2)
    got = compute_jaccard_distance(x, k1=k1, k2=k2, backend=backend)
    assert isinstance(got, sp.csr_matrix) and got.shape == (len(x), len(x))
    dense = sparse_distance_to_dense(got)
    assert np.abs(dense - ref).max() < 1e-5
    # stored exactly where the encodings overlap (reference < 1)
    stored = np.zeros(got.shape, dtype=bool)
    coo = got.tocoo()
    stored[coo.row, coo.col] = True
    assert not (ref[~stored] < 1 - 1e-6).any()


def test_max_form_equals_two_minus_min_form():
    """sum(max) = 2 - sum(min) because each query-expanded row sums to 1."""
    x, _ = clustered(n_ids=5, per_id=8, seed=3)
    a = reference_jaccard(x, 10, 4, use_max_form=True)
    b = reference_jaccard(x, 10, 4, use_max_form=False)
    assert np.abs(a - b).max() < 1e-12


def test_larger_random_matches_reference_on_sample_rows():
    """N=200 with 64-d random data (not clustered): compare all rows."""
    x = np.random.default_rng(7).normal(size=(200, 8)).astype(np.float32)
    ref = reference_jaccard(x, 30, 6, use_max_form=False)
    got = sparse_distance_to_dense(compute_jaccard_distance(x, k1=30, k2=6))
    assert np.abs(got - ref).max() < 1e-5


@pytest.mark.parametrize("max_distance", [None, 0.6, 0.0])
def test_backends_and_blocks_agree(max_distance):
    """numba (several threads) and numpy with tiny work/accumulator budgets (many blocks):
    identical structure and values, with and without a distance cut-off."""
    x, _ = clustered(seed=1)
    full = compute_jaccard_distance(x, k1=10, k2=3, backend="numba", max_distance=max_distance)
    from reid_core.cluster.jaccard import k_reciprocal_encoding
    from reid_core.cluster.knn import normalize_features

    xn = normalize_features(x)
    knn = knn_search(xn, 10)
    v = k_reciprocal_encoding(knn, xn, 10, 6, 3)
    blocked = jaccard_from_encoding(v, backend="numpy", work_budget=7, acc_budget=50, max_distance=max_distance)
    threaded = jaccard_from_encoding(v, backend="numba", n_threads=3, max_distance=max_distance)
    assert full.has_sorted_indices and blocked.has_sorted_indices
    for other in (blocked, threaded):
        assert np.array_equal(full.indptr, other.indptr) and np.array_equal(full.indices, other.indices)
        assert np.allclose(full.data, other.data, atol=1e-6)
    if max_distance is not None:
        assert full.data.max() <= max_distance
        assert np.all(full.diagonal() == 0) and full.nnz >= len(x)
        nocut = sparse_distance_to_dense(compute_jaccard_distance(x, k1=10, k2=3))
        cut = sparse_distance_to_dense(full)
        keep = nocut <= max_distance
        assert np.array_equal(cut[keep], nocut[keep]) and np.all(cut[~keep] == 1)


def test_diagonal_is_explicit_zero_and_dbscan_keeps_it():
    x, labels = clustered(seed=2)
    dist = compute_jaccard_distance(x, k1=10, k2=3)
    n = len(x)
    diag_stored = np.array([i in dist.indices[dist.indptr[i]:dist.indptr[i + 1]] for i in range(n)])
    assert diag_stored.all()
    assert np.all(dist.diagonal() == 0)
    assert dist.nnz == sp.csr_matrix(dist).nnz  # a plain copy keeps them
    assert (dist.data == 0).sum() >= n
    # DBSCAN on the sparse matrix == DBSCAN on the dense one (missing = 1 > eps)
    dense = sparse_distance_to_dense(dist)
    a = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dist)
    b = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dense)
    assert np.array_equal(a, b)
    # and the clusters are the true identities on this easy data
    assert (a >= 0).all() and len(set(a)) == len(set(labels))


def test_sklearn_precomputed_sees_stored_zero_diagonal():
    """NearestNeighbors(metric="precomputed") on sparse input only sees stored entries (unlike
    DBSCAN it does not add the diagonal itself): each point must find itself at distance 0."""
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    dist = compute_jaccard_distance(x, k1=5, k2=2)
    nn = NearestNeighbors(radius=0.5, metric="precomputed").fit(dist)
    d, idx = nn.radius_neighbors(dist, return_distance=True)
    for i in range(30):
        assert i in idx[i]
        assert d[i][list(idx[i]).index(i)] == 0.0
    # a matrix whose zeros were eliminated loses them: the reason we keep them stored
    dropped = dist.copy()
    dropped.eliminate_zeros()
    _, idx2 = NearestNeighbors(radius=0.5, metric="precomputed").fit(dropped).radius_neighbors(dropped)
    assert any(i not in idx2[i] for i in range(30))


def test_duplicates_and_tiny_inputs():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    dist = compute_jaccard_distance(x, k1=30, k2=6)
    assert dist.shape == (3, 3)
    dense = sparse_distance_to_dense(dist)
    assert np.all(np.diag(dense) == 0)
    assert dense[0, 1] < 1e-6 and dense[1, 0] < 1e-6  # identical rows
    one = compute_jaccard_distance(np.ones((1, 4), np.float32))
    assert one.shape == (1, 1) and one.nnz == 1 and one[0, 0] == 0
    # duplicates: the reference (self first, ties by index) agrees too
    ref = reference_jaccard(x, 30, 6)
    assert np.abs(dense - ref).max() < 1e-5


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((0, 4)), "empty"),
        (np.ones(5), "2-D"),
        (np.array([[1.0, np.nan], [1.0, 0.0]]), "NaN"),
        (np.array([[0.0, 0.0], [1.0, 0.0]]), "all-zero row"),
    ],
)
def test_bad_features(bad, match):
    with pytest.raises(ValueError, match=match):
        compute_jaccard_distance(bad)


def test_bad_parameters():
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="k1 and k2"):
        compute_jaccard_distance(x, k1=0)
    with pytest.raises(ValueError, match="knn method"):
        compute_jaccard_distance(x, knn="annoy")
    with pytest.raises(TypeError, match="search_option"):
        compute_jaccard_distance(x, search_option=3)
    with pytest.raises(ValueError, match="backend"):
        compute_jaccard_distance(x, backend="cuda")
    with pytest.raises(ValueError, match="max_distance"):
        compute_jaccard_distance(x, max_distance=-0.1)


def test_reciprocal_sets_definition():
    x = np.random.default_rng(5).normal(size=(40, 6)).astype(np.float32)
    knn = knn_search(x, 8)
    indptr, cols = reciprocal_sets(knn.indices, 8)
    for i in range(40):
        f = list(knn.indices[i])
        want = [j for j in f if i in knn.indices[j]]
        assert list(cols[indptr[i]:indptr[i + 1]]) == want


def test_exact_knn_matches_sort_and_self_first():
    x = np.random.default_rng(3).normal(size=(150, 10)).astype(np.float32)
    d, ranks = naive_ranking(x)
    for chunk in (1, 16, 1000):
        res = knn_search(x, 12, chunk_size=chunk, return_row_max=True)
        assert np.array_equal(res.indices, np.array([r[:12] for r in ranks]))
        assert np.allclose(res.distances, np.take_along_axis(d, res.indices, 1), atol=1e-5)
        assert np.all(res.distances[:, 0] == 0)
        assert np.allclose(res.row_max, d.max(axis=1), atol=1e-5)


def test_pynndescent_result_handling(monkeypatch):
    """The backend's post-processing with a stand-in index: self missing (a duplicate took its
    place), -1 padding, unsorted rows -> self first, exact fp32 distances, sorted."""
    import pynndescent

    x = np.random.default_rng(9).normal(size=(25, 4)).astype(np.float32)
    exact = knn_search(x, 6)

    class FakeIndex:
        def __init__(self, data, **kw):
            assert kw["n_neighbors"] == 8
            g = knn_search(data, 8).indices.copy()
            g[:, 1:] = g[:, 1:][:, ::-1]  # unsorted
            g[0, 0] = g[0, 7]  # row 0 lost itself (and lists a neighbour twice)
            g[1, 1] = -1  # padding in place of row 1's 7th neighbour (not needed for k=6)
            self.neighbor_graph = (g, None)

    monkeypatch.setattr(pynndescent, "NNDescent", FakeIndex)
    res = knn_search(x, 6, method="pynndescent", search_option={"n_neighbors": 8})
    assert np.array_equal(res.indices, exact.indices)
    assert np.allclose(res.distances, exact.distances, atol=1e-6)


@pytest.mark.slow
def test_pynndescent_backend_recall_and_result():
    """Real pynndescent (its numba JIT compile takes 20-90 s on first use in a process)."""
    x, _ = clustered(n_ids=20, per_id=10, dim=16, seed=4)
    exact = knn_search(x, 15)
    approx = knn_search(x, 15, method="pynndescent", search_option={"n_neighbors": 30})
    assert np.all(approx.indices[:, 0] == np.arange(len(x)))
    assert knn_recall(approx.indices, exact.indices) > 0.95
    a = compute_jaccard_distance(x, k1=15, k2=4, knn="pynndescent", search_option={"n_neighbors": 30})
    b = compute_jaccard_distance(x, k1=15, k2=4)
    assert np.abs(sparse_distance_to_dense(a) - sparse_distance_to_dense(b)).mean() < 0.02


def test_knn_recall_counts():
    exact = np.array([[0, 1, 2], [1, 0, 2]])
    approx = np.array([[0, 2, 5], [1, 7, 8]])
    assert knn_recall(approx, exact) == pytest.approx(1 / 4)
    assert knn_recall(exact, exact) == 1.0


def test_warm_up_compiles_the_kernel_used_by_runs():
    from reid_core.cluster import jaccard

    kernel = jaccard._numba_kernel()
    if kernel is None:
        pytest.skip("numba not installed")
    assert jaccard.warm_up_kernel() is True
    n_sigs = len(kernel.signatures)
    assert n_sigs >= 1
    x = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    jaccard.compute_jaccard_distance(x, k1=20, k2=6, max_distance=0.6)  # a run's call: no new compile
    assert len(kernel.signatures) == n_sigs
