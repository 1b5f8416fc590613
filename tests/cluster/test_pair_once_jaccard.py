"""Pair-once Jaccard with the eps cut-off vs the full kernels and the naive loop reference."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from reid_core.cluster.jaccard import (
    compute_jaccard_distance,
    cutoff_overlap,
    jaccard_from_encoding,
    k_reciprocal_encoding,
    pair_once_jaccard,
    sparse_distance_to_dense,
)
from reid_core.cluster.knn import knn_search, normalize_features

from test_jaccard import clustered, reference_jaccard


def _encoding(x, k1=20, k2=6):
    x = normalize_features(x)
    m1 = min(k1, len(x))
    m2 = min(int(np.around(k1 / 2)) + 1, m1)
    res = knn_search(x, max(m1, m2, k2), search_option={"prefilter": "none"})
    return k_reciprocal_encoding(res, x, m1, m2, k2)


def _same(a: sp.csr_matrix, b: sp.csr_matrix):
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert (a.indptr == b.indptr).all() and (a.indices == b.indices).all()
    assert np.abs(a.data - b.data).max(initial=0) < 1e-6


@pytest.mark.parametrize("max_distance", [0.0, 0.3, 0.6, 0.9, 1.0, 1.5, None])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_equals_full_kernels(kind, max_distance):
    if kind == "random":
        x = np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)
    else:
        x, _ = clustered(n_ids=20, per_id=15, dim=32, noise=0.5, seed=2)
    v = _encoding(x)
    got = pair_once_jaccard(v, max_distance=max_distance, n_threads=2)
    _same(got, jaccard_from_encoding(v, max_distance=max_distance, backend="numba"))
    _same(got, jaccard_from_encoding(v, max_distance=max_distance, backend="numpy"))
    assert (got.diagonal() == 0).all() and got.has_sorted_indices
    assert abs(got - got.T).max() == 0  # stored symmetric
    # every stored distance is within the cut-off (diagonal aside), none beyond it is missing
    if max_distance is not None:
        off = got.copy()
        off.setdiag(0)
        assert off.data.max(initial=0) <= max_distance + 1e-7


@pytest.mark.parametrize("k1,k2,eps", [(20, 6, 0.6), (7, 3, 0.5), (12, 1, 0.75)])
def test_matches_naive_loop_reference(k1, k2, eps):
    x, _ = clustered(seed=k1)
    ref = reference_jaccard(x, k1, k2)
    got = compute_jaccard_distance(x, k1=k1, k2=k2, max_distance=eps, backend="pair-once")
    dense = sparse_distance_to_dense(got)
    # (pairs at the cut-off itself, within rounding, may go either way: small clustered sets hit it)
    within = ref <= eps - 1e-6
    beyond = ref > eps + 1e-6
    assert np.abs(dense[within] - ref[within]).max() < 1e-5
    assert (dense[beyond] == 1.0).all()  # pairs beyond the cut-off are not stored
    assert within.sum() > len(x)  # the test has pairs off the diagonal
    _same(got, compute_jaccard_distance(x, k1=k1, k2=k2, max_distance=eps, backend="numba"))


def test_prefix_pruning_and_verification_are_exercised():
    """Random data at a low cut-off: most partners are dropped by the bound, the survivors are
    verified; the result still equals the full kernel (and would not if the bound were wrong)."""
    x = np.random.default_rng(4).normal(size=(600, 48)).astype(np.float32)
    v = _encoding(x, k1=30)
    for eps in (0.2, 0.45, 0.7, 0.85):
        _same(pair_once_jaccard(v, max_distance=eps), jaccard_from_encoding(v, max_distance=eps, backend="numba"))


def test_auto_uses_pair_once_for_the_square_cut_off_case(monkeypatch):
    import reid_core.cluster.jaccard as jm

    x, _ = clustered(seed=3)
    v = _encoding(x, k1=10, k2=3)
    used = []
    real = jm.pair_once_jaccard
    monkeypatch.setattr(jm, "pair_once_jaccard", lambda *a, **k: used.append(1) or real(*a, **k))
    jaccard_from_encoding(v, max_distance=0.6)
    assert used
    used.clear()
    jaccard_from_encoding(v)  # no cut-off: the full kernel
    jaccard_from_encoding(v, v, max_distance=0.6)  # rectangular call
    assert not used
    with pytest.raises(ValueError, match="square"):
        jaccard_from_encoding(v, v, max_distance=0.6, backend="pair-once")


def test_cutoff_overlap():
    for eps in (0.0, 0.3, 0.6, 0.99):
        m = cutoff_overlap(eps)
        assert abs((1 - m / (2 - m)) - eps) < 1e-12
    assert cutoff_overlap(None) == 0.0 and cutoff_overlap(1.0) == 0.0 and cutoff_overlap(3.0) == 0.0


def test_edge_cases():
    # a single row, and rows with no partner within the cut-off
    one = sp.csr_matrix(np.array([[1.0]], dtype=np.float32))
    out = pair_once_jaccard(one, max_distance=0.6)
    assert out.shape == (1, 1) and out.nnz == 1 and out[0, 0] == 0
    eye = sp.identity(5, format="csr", dtype=np.float32)
    out = pair_once_jaccard(eye, max_distance=0.6)
    assert out.nnz == 5 and (out.diagonal() == 0).all()
    with pytest.raises(ValueError, match="max_distance"):
        pair_once_jaccard(eye, max_distance=-1)
    with pytest.raises(ValueError, match="square"):
        pair_once_jaccard(sp.csr_matrix(np.ones((2, 3), dtype=np.float32)))


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_compiled_encoding_equals_numpy_encoding(kind, scaled):
    """The one-pass compiled encoding (steps 2-3) equals the vectorised numpy one, incl. expansion
    members outside the k-NN lists (distances from the features) and re-ranking's row scale."""
    if kind == "random":
        x = normalize_features(np.random.default_rng(11).normal(size=(250, 24)).astype(np.float32))
    else:
        x = normalize_features(clustered(n_ids=12, per_id=20, dim=24, noise=0.4, seed=12)[0])
    res = knn_search(x, 20, search_option={"prefilter": "none"})
    scale = np.random.default_rng(13).uniform(0.5, 2.0, len(x)) if scaled else None
    a = k_reciprocal_encoding(res, x, 20, 11, 6, row_scale=scale, backend="numba")
    b = k_reciprocal_encoding(res, x, 20, 11, 6, row_scale=scale, backend="numpy")
    _same(a, b)
    assert np.allclose(np.asarray(a.sum(axis=1)).ravel(), 1.0, atol=1e-5)
