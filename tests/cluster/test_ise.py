"""ISE support-sample generation: schedule, nearest clusters, support samples, inspection table."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from reid_core.cluster.ise import (lambda_schedule, nearest_cluster_table, nearest_clusters,
                                   support_samples)


# lambda(t) = (lambda0 / 2) * ln(1 + (e - 1) * t / T), worked by hand for lambda0 = 1:
#   25%: ln(1 + 1.718281828 / 4) = ln(1.429570457) = 0.357374020 -> 0.178687010
#   50%: ln(1 + 1.718281828 / 2) = ln(1.859140914) = 0.620114507 -> 0.310057253
#   75%: ln(1 + 1.718281828 * 0.75) = ln(2.288711371) = 0.827988939 -> 0.413994470
#  100%: ln(e) = 1 -> 0.5
@pytest.mark.parametrize("t, expected", [(0, 0.0), (25, 0.178687010), (50, 0.310057253),
                                         (75, 0.413994470), (100, 0.5)])
def test_lambda_schedule_hand_values(t, expected):
    assert lambda_schedule(t, 100, lambda0=1.0) == pytest.approx(expected, abs=1e-8)
    assert lambda_schedule(t, 100, lambda0=2.0) == pytest.approx(2 * expected, abs=1e-8)


def test_lambda_schedule_monotone_and_errors():
    vals = [lambda_schedule(t, 400) for t in range(401)]
    assert all(b > a for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="T"):
        lambda_schedule(0, 0)
    with pytest.raises(ValueError, match="t"):
        lambda_schedule(101, 100)
    with pytest.raises(ValueError, match="t"):
        lambda_schedule(-1, 100)


def _setup(B=10, C=5, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    cent = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=1)
    feats = torch.randn(B, D, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C, (B,), generator=g)
    return feats, labels, cent


def test_nearest_clusters_naive_loop():
    feats, labels, cent = _setup(B=15, C=6)
    nn = nearest_clusters(feats, labels, cent, k=3)
    assert nn.shape == (15, 3)
    for i in range(15):
        f = F.normalize(feats[i], dim=0)
        sims = [(float(f @ cent[c]), c) for c in range(6) if c != int(labels[i])]
        expected = [c for _, c in sorted(sims, key=lambda s: -s[0])[:3]]
        assert nn[i].tolist() == expected
        assert int(labels[i]) not in nn[i].tolist()


def test_nearest_clusters_bad_k_and_labels():
    feats, labels, cent = _setup(C=3)
    with pytest.raises(ValueError, match="k must"):
        nearest_clusters(feats, labels, cent, k=3)
    with pytest.raises(ValueError, match="labels"):
        nearest_clusters(feats, torch.full_like(labels, -1), cent, k=1)


def test_support_samples_naive_loop():
    feats, labels, cent = _setup(B=7, C=5)
    nn = nearest_clusters(feats, labels, cent, k=2)
    lam = 0.37
    sup = support_samples(feats, labels, cent, nn, lam)
    assert sup.shape == (14, 6)
    for i in range(7):
        f = feats[i].tolist()
        nf = math.sqrt(sum(v * v for v in f))
        for j in range(2):
            cn, cy = cent[int(nn[i, j])].tolist(), cent[int(labels[i])].tolist()
            v = [f[d] / nf + lam / 2 * (cn[d] - cy[d]) for d in range(6)]
            nv = math.sqrt(sum(a * a for a in v))
            expected = torch.tensor([a / nv for a in v], dtype=torch.float64)
            torch.testing.assert_close(sup[i * 2 + j], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sup.norm(dim=1), torch.ones(14, dtype=torch.float64))


def test_support_equals_real_at_lambda_zero():
    feats, labels, cent = _setup()
    nn = nearest_clusters(feats, labels, cent, k=1)
    torch.testing.assert_close(support_samples(feats, labels, cent, nn, 0.0), F.normalize(feats, dim=1))


def test_support_moves_towards_neighbour():
    """cos(s, c_nn) > cos(f, c_nn) whenever lambda > 0, cos(f, c_nn) >= 0 and f is at least as close to
    its own centroid (proved in the module docstring's conditions); checked on samples drawn around
    their centroids, for the whole range of lambda."""
    g = torch.Generator().manual_seed(1)
    C, D, B = 8, 16, 400
    cent = F.normalize(torch.rand(C, D, generator=g, dtype=torch.float64), dim=1)  # positive orthant
    labels = torch.randint(0, C, (B,), generator=g)
    feats = cent[labels] + 0.15 * torch.randn(B, D, generator=g, dtype=torch.float64)
    f = F.normalize(feats, dim=1)
    nn = nearest_clusters(feats, labels, cent, k=1)
    c_nn = cent[nn[:, 0]]
    cos_f = (f * c_nn).sum(1)
    valid = (cos_f >= 0) & ((f * cent[labels]).sum(1) >= cos_f)
    assert valid.sum() > 300  # the condition is the typical case
    for lam in (1e-3, 0.1, 0.3, 0.5):
        s = support_samples(feats, labels, cent, nn, lam)
        gain = (s * c_nn).sum(1) - cos_f
        assert (gain[valid] > 0).all()


def test_support_gradient_through_features_only():
    feats, labels, cent = _setup()
    feats = feats.clone().requires_grad_(True)
    cent = cent.clone().requires_grad_(True)
    nn = nearest_clusters(feats, labels, cent, k=2)
    sup = support_samples(feats, labels, cent, nn, 0.3)
    sup.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert cent.grad is None


def _naive_table(feats, labels, cent, k):
    rows = {}
    C = len(cent)
    for i in range(len(feats)):
        if labels[i] < 0:
            continue
        f = feats[i] / np.linalg.norm(feats[i])
        sims = sorted(((float(f @ cent[c]), c) for c in range(C) if c != labels[i]), key=lambda s: -s[0])
        for s, c in sims[:k]:
            rows.setdefault((int(labels[i]), c), []).append(s)
    out = []
    for (a, b), sims in rows.items():
        size = int((labels == a).sum())
        csims = sorted(((float(cent[a] @ cent[c]), c) for c in range(C) if c != a), key=lambda s: -s[0])
        rank = [c for _, c in csims].index(b) + 1
        out.append(dict(label=a, cluster_size=size, neighbour_label=b, n_samples=len(sims),
                        frac_samples=len(sims) / size, mean_sample_cosine=float(np.mean(sims)),
                        centroid_cosine=float(cent[a] @ cent[b]), centroid_rank=rank))
    return pd.DataFrame(out).sort_values(["label", "n_samples", "neighbour_label"],
                                         ascending=[True, False, True]).reset_index(drop=True)


@pytest.mark.parametrize("k", [1, 2])
def test_nearest_cluster_table_naive(k):
    rng = np.random.default_rng(0)
    C, D = 6, 8
    cent = rng.normal(size=(C, D))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    labels = rng.integers(0, C, size=60)
    labels[:5] = -1
    feats = cent[np.maximum(labels, 0)] + 0.6 * rng.normal(size=(60, D))
    table = nearest_cluster_table(feats, labels, cent, k=k, chunk_size=7)
    expected = _naive_table(feats, labels, cent, k)
    pd.testing.assert_frame_equal(table, expected, check_dtype=False, atol=1e-5)
    assert list(table.columns) == ["label", "cluster_size", "neighbour_label", "n_samples", "frac_samples",
                                   "mean_sample_cosine", "centroid_cosine", "centroid_rank"]
    sums = table.groupby("label")["n_samples"].sum()
    sizes = table.groupby("label")["cluster_size"].first()
    assert (sums == k * sizes).all()


def test_nearest_cluster_table_default_centroids_and_errors():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.2], [-0.9, 0.0]])
    labels = np.array([0, 0, 1, 1, 2, 2])
    table = nearest_cluster_table(feats, labels)
    assert set(table["label"]) == {0, 1, 2}
    row0 = table[table.label == 0].iloc[0]
    assert row0.neighbour_label == 1 and row0.n_samples == 2 and row0.centroid_rank == 1
    with pytest.raises(ValueError, match="labels"):
        nearest_cluster_table(feats, labels[:3])
    with pytest.raises(ValueError, match="without gaps"):
        nearest_cluster_table(feats, np.array([0, 0, 2, 2, 3, 3]))
    empty = nearest_cluster_table(feats, -np.ones(6, dtype=int))
    assert len(empty) == 0 and "neighbour_label" in empty.columns
