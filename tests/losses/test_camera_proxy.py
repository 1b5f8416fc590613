"""CameraProxyMemory against plain loops written from the definitions (float64, small inputs)."""
import math

import numpy as np
import pytest
import torch

from reid_core.losses.camera_proxy import CameraProxyMemory


def _setup(seed=0, n=24, d=6, n_clusters=4, n_cams=3):
    g = np.random.default_rng(seed)
    feats = g.normal(size=(n, d))
    labels = g.integers(0, n_clusters, size=n)
    cams = g.integers(0, n_cams, size=n)
    labels[:2] = -1  # outliers are ignored
    return feats, labels, cams


def _ref_proxies(feats, labels, cams):
    groups = sorted({(int(l), int(c)) for l, c in zip(labels, cams) if l >= 0})
    out = []
    for l, c in groups:
        rows = [f / np.linalg.norm(f) for f, ll, cc in zip(feats, labels, cams) if ll == l and cc == c]
        m = np.sum(rows, axis=0)
        out.append(m / np.linalg.norm(m))
    return groups, np.array(out)


def _ref_loss(x, labels, cams, groups, proxies, temp, n_neg, w_intra, w_inter):
    intra_all, inter_all = [], []
    for i in range(len(x)):
        f = x[i] / np.linalg.norm(x[i])
        s = [float(f @ p) / temp for p in proxies]
        own = groups.index((int(labels[i]), int(cams[i])))
        denom = sum(math.exp(s[j]) for j, (l, c) in enumerate(groups) if c == cams[i])
        intra_all.append(-math.log(math.exp(s[own]) / denom))
        pos = [j for j, (l, c) in enumerate(groups) if l == labels[i]]
        neg = sorted((s[j] for j, (l, c) in enumerate(groups) if l != labels[i]), reverse=True)[:n_neg]
        terms = [-math.log(math.exp(s[p]) / (math.exp(s[p]) + sum(math.exp(v) for v in neg))) for p in pos]
        inter_all.append(sum(terms) / len(terms))
    return w_intra * np.mean(intra_all) + w_inter * np.mean(inter_all), np.mean(intra_all), np.mean(inter_all)


@pytest.mark.parametrize("n_neg", [1, 3, 100])
def test_loss_matches_plain_loops(n_neg):
    feats, labels, cams = _setup()
    mem = CameraProxyMemory(6, temp=0.5, hard_negatives=n_neg, intra_weight=1.0, inter_weight=0.7).double()
    mem.init_proxies(torch.tensor(feats), labels, cams)
    groups, proxies = _ref_proxies(feats, labels, cams)
    np.testing.assert_allclose(mem.features.numpy(), proxies, atol=1e-12)
    keep = labels >= 0
    x = torch.tensor(np.random.default_rng(1).normal(size=(int(keep.sum()), 6)), requires_grad=True)
    loss, stats = mem(x, labels[keep], cams[keep])
    ref, ref_intra, ref_inter = _ref_loss(x.detach().numpy(), labels[keep], cams[keep], groups, proxies, 0.5,
                                          n_neg, 1.0, 0.7)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    assert stats["loss_cam_intra"] == pytest.approx(ref_intra, rel=1e-10)
    assert stats["loss_cam_inter"] == pytest.approx(ref_inter, rel=1e-10)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_update_matches_plain_loop():
    feats, labels, cams = _setup(seed=3)
    mem = CameraProxyMemory(6, momentum=0.3).double()
    mem.init_proxies(torch.tensor(feats), labels, cams)
    groups, before = _ref_proxies(feats, labels, cams)
    keep = labels >= 0
    batch = np.random.default_rng(5).normal(size=(int(keep.sum()), 6))
    mem.update(torch.tensor(batch), labels[keep], cams[keep])
    expected = before.copy()
    for j, (l, c) in enumerate(groups):
        rows = [b / np.linalg.norm(b) for b, ll, cc in zip(batch, labels[keep], cams[keep]) if ll == l and cc == c]
        if rows:
            v = 0.3 * before[j] + 0.7 * np.mean(rows, axis=0)
            expected[j] = v / np.linalg.norm(v)
    np.testing.assert_allclose(mem.features.numpy(), expected, atol=1e-12)


def test_one_cluster_one_camera_has_no_negative():
    """One identity seen by one camera: both losses are 0 (nothing to contrast), no NaN."""
    mem = CameraProxyMemory(4, temp=0.1).double()
    feats = torch.randn(5, 4, dtype=torch.float64)
    mem.init_proxies(feats, np.zeros(5, int), np.zeros(5, int))
    loss, stats = mem(feats, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert stats["loss_cam_inter"] == pytest.approx(0.0, abs=1e-12)


def test_errors():
    mem = CameraProxyMemory(4)
    with pytest.raises(ValueError, match="no clustered sample"):
        mem.init_proxies(torch.randn(3, 4), [-1, -1, -1], [0, 1, 0])
    with pytest.raises(ValueError, match="camera id"):
        mem.init_proxies(torch.randn(3, 4), [0, 0, 1], [0, -1, 0])
    mem.init_proxies(torch.randn(3, 4), [0, 0, 1], [0, 1, 0])
    with pytest.raises(ValueError, match="has no proxy"):
        mem(torch.randn(1, 4), [1], [1])  # cluster 1 was only seen by camera 0
    with pytest.raises(RuntimeError, match="init_proxies"):
        CameraProxyMemory(4)(torch.randn(1, 4), [0], [0])
