"""k-reciprocal re-ranking vs a dense reference written from Zhong et al.'s definition."""
from __future__ import annotations

import numpy as np
import pytest

from reid_core.evaluation.rerank import re_ranking


def naive_re_ranking(q, g, k1, k2, lam):
    """Dense float64 reference: all q+g samples, per-row max-normalised squared distances,
    k-reciprocal sets with k1+1 entries, expansion with round(k1/2)+1, Gaussian encoding,
    query expansion over k2, Jaccard 1 - sum(min)/sum(max), final mix on the q x g block."""
    x = np.concatenate([q, g]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, nq = len(x), len(q)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                d[i, j] = max(float(np.sum((x[i] - x[j]) ** 2)), 0.0)
    for i in range(n):
        d[i] = d[i] / d[i].max()
    ranks = [[i] + sorted((j for j in range(n) if j != i), key=lambda j: (d[i, j], j)) for i in range(n)]
    m1 = min(k1 + 1, n)
    m2 = min(int(np.around(k1 / 2)) + 1, m1)

    def recip(i, m):
        return [j for j in ranks[i][:m] if i in ranks[j][:m]]

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, m1)
        e = set(r)
        for c in r:
            rc = recip(c, m2)
            if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
                e |= set(rc)
        e = sorted(e)
        w = np.array([np.exp(-d[i, j]) for j in e])
        v[i, e] = w / w.sum()
    vqe = np.zeros((n, n))
    for i in range(n):
        vqe[i] = np.mean([v[l] for l in ranks[i][:min(k2, n)]], axis=0)
    out = np.zeros((nq, n - nq))
    for a in range(nq):
        for b in range(n - nq):
            k = nq + b
            smin = sum(min(vqe[a, j], vqe[k, j]) for j in range(n))
            smax = sum(max(vqe[a, j], vqe[k, j]) for j in range(n))
            jac = 1.0 - smin / smax
            out[a, b] = (1 - lam) * jac + lam * d[a, k]
    return out


def _data(seed, n_ids=6, per_id=8, dim=12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    x = np.repeat(centres, per_id, axis=0) + 0.5 * rng.normal(size=(n_ids * per_id, dim))
    perm = rng.permutation(len(x))
    x = x[perm].astype(np.float32)
    return x[:12], x[12:]


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (8, 3, 0.5), (5, 1, 0.0), (60, 6, 1.0)])
def test_matches_dense_reference(k1, k2, lam):
    q, g = _data(k1)
    ref = naive_re_ranking(q, g, k1, k2, lam)
    got = re_ranking(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (len(q), len(g)) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5


def test_random_features_and_chunking():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(9, 6)).astype(np.float32)
    g = rng.normal(size=(40, 6)).astype(np.float32)
    ref = naive_re_ranking(q, g, 20, 6, 0.3)
    got = re_ranking(q, g, chunk_size=4)
    assert np.abs(got - ref).max() < 1e-5


def test_improves_or_keeps_ranking_on_clusters():
    """Sanity on easy data: each query's nearest re-ranked gallery item shares its cluster."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    q = (centres + 0.2 * rng.normal(size=(5, 16))).astype(np.float32)
    g = (np.repeat(centres, 6, axis=0) + 0.2 * rng.normal(size=(30, 16))).astype(np.float32)
    out = re_ranking(q, g)
    assert np.array_equal(out.argmin(axis=1) // 6, np.arange(5))


def test_bad_inputs():
    q = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="different dimensions"):
        re_ranking(q, np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="q_feat"):
        re_ranking(np.zeros((0, 3)), q)
    with pytest.raises(ValueError, match="g_feat .*NaN"):
        re_ranking(q, np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(q, q, lambda_value=1.5)
    with pytest.raises(ValueError, match="k1 and k2"):
        re_ranking(q, q, k1=0)


def test_single_query_and_gallery():
    out = re_ranking(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert out.shape == (1, 1) and np.isfinite(out).all()
