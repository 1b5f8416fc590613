"""The bf16 pre-filter of the exact k-NN: same neighbours as fp32, a sound error bound, a fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reid_core.cluster.bf16_knn as bk
from reid_core.cluster.bf16_knn import bf16_knn, error_bound_terms, resolve_prefilter
from reid_core.cluster.kernels import bf16_key, key_to_float
from reid_core.cluster.knn import knn_search, normalize_features


def naive_knn(x: np.ndarray, k: int) -> tuple[list[set[int]], np.ndarray]:
    """float64 loops: each row's k nearest (self first, then by squared distance, ties by index),
    as sets without self, and the sorted float64 similarities of every row (self excluded)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    sets, sims = [], np.empty((n, n - 1))
    for i in range(n):
        s = []
        for j in range(n):
            if j != i:
                s.append((-float(sum(x[i, q] * x[j, q] for q in range(x.shape[1]))), j))
        s.sort()
        sets.append({j for _, j in s[: k - 1]})
        sims[i] = [-v for v, _ in s]
    return sets, sims


def clustered(n_ids, per_id, dim, noise, seed):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_ids, dim))
    x = np.repeat(c, per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    return normalize_features(x.astype(np.float32))


def assert_same_sets(got_idx, ref_sets, ref_sims, k, tol=1e-5):
    """Row-wise equal neighbour sets, except rows whose k-1-th and k-th reference similarities
    are within ``tol`` (a tie at the cut: either choice is right)."""
    n = len(ref_sets)
    checked = 0
    for i in range(n):
        assert got_idx[i, 0] == i
        if k - 1 < ref_sims.shape[1] and ref_sims[i, k - 2] - ref_sims[i, k - 1] < tol:
            continue
        assert set(got_idx[i, 1:].tolist()) == ref_sets[i], i
        checked += 1
    assert checked > n // 2


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_bf16_equals_naive_fp64_neighbours(kind):
    if kind == "random":
        x = normalize_features(np.random.default_rng(0).normal(size=(150, 24)).astype(np.float32))
    else:
        x = clustered(10, 15, 24, 0.3, 1)
    k = 9
    ref_sets, ref_sims = naive_knn(x, k)
    _, idx, info = bf16_knn(x, k, margin=6, block=32)
    assert_same_sets(idx, ref_sets, ref_sims, k)
    res = knn_search(x, k, search_option={"prefilter": "bf16", "margin": 6, "block": 32})
    assert_same_sets(res.indices, ref_sets, ref_sims, k)
    assert (res.distances[:, 0] == 0).all() and (np.diff(res.distances, axis=1) >= 0).all()


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_bf16_equals_fp32_exact_path(kind):
    if kind == "random":
        x = normalize_features(np.random.default_rng(3).normal(size=(1500, 256)).astype(np.float32))
    else:
        x = clustered(75, 20, 256, 0.5, 4)
    k = 30
    a = knn_search(x, k, search_option={"prefilter": "bf16", "block": 256})
    b = knn_search(x, k, search_option={"prefilter": "none"})
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    srt = -np.sort(-sims, axis=1)
    tie = srt[:, k - 2] - srt[:, k - 1] < 1e-6
    differ = [i for i in range(len(x)) if set(a.indices[i]) != set(b.indices[i])]
    assert all(tie[i] for i in differ)
    assert len(differ) <= 2
    ok = ~tie
    assert np.allclose(a.distances[ok], b.distances[ok], atol=1e-6)


def test_near_ties_and_duplicates():
    """Duplicated rows and rows differing in the last bits: sets equal wherever the k-th place is
    not a tie, self always first."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(60, 32)).astype(np.float32)
    dup = base[:20].copy()  # exact duplicates
    near = base[20:40] + 1e-6 * rng.normal(size=(20, 32)).astype(np.float32)  # near-ties, below bf16 resolution
    x = normalize_features(np.concatenate([base, dup, near]))
    k = 8
    ref_sets, ref_sims = naive_knn(x, k)
    _, idx, _ = bf16_knn(x, k, margin=4, block=16)
    assert (idx[:, 0] == np.arange(len(x))).all()
    assert_same_sets(idx, ref_sets, ref_sims, k)
    # a duplicate is its twin's nearest neighbour
    for i in range(20):
        assert idx[i, 1] == 60 + i or ref_sims[i, 0] == ref_sims[i, 1]


def test_error_bound_holds():
    """Observed |bf16 product - float64 product| stays under B_i + u|a|/(1-u) for every pair."""
    x = normalize_features(np.random.default_rng(6).normal(size=(400, 512)).astype(np.float32))
    xt = torch.from_numpy(x)
    xh = xt.to(torch.bfloat16)
    b, e32 = error_bound_terms(xt, xh)
    a = (xh @ xh.T).double().numpy()
    true = x.astype(np.float64) @ x.astype(np.float64).T
    err = np.abs(a - true)
    bound = b[:, None] + np.abs(a) * bk.U_BF16 / (1 - bk.U_BF16)
    assert (err <= bound).all()
    # and it is not vacuous: far below the worst case 2u, and the observed error uses a fair part of it
    assert b.max() < 0.6 * 2 * bk.U_BF16
    assert err.max() > 0.01 * b.max()
    assert 0 < e32 < 1e-3


def test_fallback_path_is_exercised_and_exact(monkeypatch):
    """With margin 0 the certificate cannot hold for most rows (nothing beyond the k-1 best is
    known): the exact re-search takes them, and the result still equals the fp32 search."""
    x = normalize_features(np.random.default_rng(7).normal(size=(300, 64)).astype(np.float32))
    calls = []
    real = bk._exact_rows

    def spy(xt, rows, k, chunk=512):
        calls.append(len(rows))
        return real(xt, rows, k, chunk)

    monkeypatch.setattr(bk, "_exact_rows", spy)
    _, idx, info = bf16_knn(x, 10, margin=0, block=64)
    assert info["n_fallback"] > 0 and calls and calls[0] == info["n_fallback"]
    ref = knn_search(x, 10, search_option={"prefilter": "none"})
    assert all(set(idx[i]) == set(ref.indices[i]) for i in range(len(x)))


def test_fallback_when_bound_is_forced_huge(monkeypatch):
    """A bound larger than any gap certifies nothing: every row is searched again."""
    x = normalize_features(np.random.default_rng(8).normal(size=(200, 32)).astype(np.float32))
    monkeypatch.setattr(bk, "error_bound_terms", lambda xt, xh: (np.full(len(xt), 5.0), 1e-6))
    _, idx, info = bf16_knn(x, 6, margin=8, block=64)
    assert info["n_fallback"] == len(x)
    ref = knn_search(x, 6, search_option={"prefilter": "none"})
    assert all(set(idx[i]) == set(ref.indices[i]) for i in range(len(x)))


def test_prefilter_option_selects_the_path(monkeypatch):
    x = normalize_features(np.random.default_rng(9).normal(size=(120, 16)).astype(np.float32))
    used = []
    real = bk.bf16_knn
    import reid_core.cluster.knn as knn_mod

    monkeypatch.setattr(knn_mod, "bf16_knn", lambda *a, **k: used.append(1) or real(*a, **k))
    knn_search(x, 5, search_option={"prefilter": "none"})
    assert not used
    knn_search(x, 5, search_option={"prefilter": "bf16"})
    assert used
    with pytest.raises(ValueError, match="prefilter"):
        knn_search(x, 5, search_option={"prefilter": "fp8"})
    with pytest.raises(ValueError, match="not options"):
        knn_search(x, 5, search_option={"nprobe": 3})
    with pytest.raises(ValueError, match="row_max"):
        knn_search(x, 5, search_option={"prefilter": "bf16"}, return_row_max=True)


def test_auto_prefilter_rule(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(bk, "prefilter_available", lambda: True)
    assert resolve_prefilter("auto", bk.AUTO_MIN_ROWS, cpu, False)
    assert not resolve_prefilter("auto", bk.AUTO_MIN_ROWS - 1, cpu, False)
    assert not resolve_prefilter("auto", 10**5, cpu, True)  # row_max needs the fp32 pass
    monkeypatch.setattr(bk, "prefilter_available", lambda: False)
    assert not resolve_prefilter("auto", 10**5, cpu, False)
    assert resolve_prefilter("bf16", 10, cpu, False)


def test_small_inputs():
    x = normalize_features(np.random.default_rng(10).normal(size=(5, 8)).astype(np.float32))
    for k in (1, 2, 5, 9):
        a = knn_search(x, k, search_option={"prefilter": "bf16"})
        b = knn_search(x, k, search_option={"prefilter": "none"})
        assert (a.indices == b.indices).all()


def test_bf16_keys_are_order_preserving():
    v = torch.tensor([-2.5, -1.0, -1e-20, 0.0, 3e-30, 0.125, 0.5, 1.0]).bfloat16()
    keys = bf16_key(v.view(torch.int16).numpy())
    assert (np.diff(keys) > 0).all()
    assert (key_to_float(keys) == v.float().numpy()).all()
