"""ClusterMemory: InfoNCE and centroid updates against plain loops (float64)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid_core.losses.cluster_memory import ClusterMemory


def _norm(v):
    n = math.sqrt(sum(float(a) * float(a) for a in v))
    return [float(a) / n for a in v]


def _dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _make(C=5, D=6, B=12, mode="hard", momentum=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mem = ClusterMemory(D, C, temp=0.05, momentum=momentum, mode=mode).double()
    mem.features = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=1)
    x = torch.randn(B, D, generator=g, dtype=torch.float64) * 3.0  # unnormalised
    y = torch.randint(0, C, (B,), generator=g)
    return mem, x, y


def naive_loss(x, y, M, temp):
    total = 0.0
    for i in range(len(x)):
        xi = _norm(x[i].tolist())
        logits = [_dot(xi, M[c].tolist()) / temp for c in range(len(M))]
        mx = max(logits)
        lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
        total += lse - logits[int(y[i])]
    return total / len(x)


def naive_update(x, y, M, mu, mode):
    M = [m.tolist() for m in M]
    xs = [_norm(v.tolist()) for v in x]
    new = [list(m) for m in M]
    for c in sorted(set(int(v) for v in y)):
        members = [i for i in range(len(xs)) if int(y[i]) == c]
        if mode == "momentum":
            target = [sum(xs[i][d] for i in members) / len(members) for d in range(len(M[c]))]
        else:
            best, best_sim = None, None
            for i in members:  # first minimum wins
                s = _dot(xs[i], M[c])
                if best_sim is None or s < best_sim:
                    best, best_sim = i, s
            target = xs[best]
        new[c] = _norm([mu * M[c][d] + (1 - mu) * target[d] for d in range(len(M[c]))])
    return torch.tensor(new, dtype=torch.float64)


def test_loss_matches_naive_loop():
    mem, x, y = _make()
    loss = mem(x, y)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(naive_loss(x, y, mem.features, 0.05), rel=1e-10)


@pytest.mark.parametrize("mode", ["hard", "momentum"])
@pytest.mark.parametrize("momentum", [0.0, 0.2, 0.9])
def test_update_matches_naive_loop(mode, momentum):
    mem, x, y = _make(mode=mode, momentum=momentum, B=20, seed=3)
    y[:3] = 4  # cluster 4 surely present several times
    y[y == 2] = 1  # cluster 2 surely absent: must stay untouched
    before = mem.features.clone()
    expected = naive_update(x, y, before, momentum, mode)
    mem.update(x, y)
    torch.testing.assert_close(mem.features, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(mem.features[2], before[2])
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(5, dtype=torch.float64))


def test_hard_update_picks_least_similar_and_first_on_ties():
    mem = ClusterMemory(2, 2, momentum=0.0, mode="hard").double()
    mem.features = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.1], [1.0, 1.0], [1.0, -1.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    mem.update(x, y)
    # samples 1 and 2 tie (cos 1/sqrt2) -> the first (index 1) is used; momentum 0 copies it
    torch.testing.assert_close(mem.features[0], F.normalize(x[1], dim=0))
    torch.testing.assert_close(mem.features[1], x[3])


def test_no_grad_into_memory_and_grad_to_inputs():
    mem, x, y = _make()
    x.requires_grad_(True)
    loss = mem(x, y)
    mem.update(x, y)  # before backward: must not break the graph (not in place)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not mem.features.requires_grad


def test_gradient_uses_pre_update_memory():
    mem, x, y = _make(seed=5)
    x1 = x.clone().requires_grad_(True)
    mem(x1, y).backward()
    ref = x1.grad.clone()
    x2 = x.clone().requires_grad_(True)
    loss = mem(x2, y)
    mem.update(x2, y)
    loss.backward()
    torch.testing.assert_close(x2.grad, ref)


def test_init_centroids_mean_of_normalised_ignores_outliers():
    feats = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 5.0], [9.0, 9.0], [3.0, 4.0]])
    labels = np.array([0, 0, 1, -1, 1])
    mem = ClusterMemory(2, 2).double().init_centroids(feats, labels)
    e0 = _norm([0.5 * (1.0 + 0.0), 0.5 * (0.0 + 1.0)])
    e1 = _norm([0.5 * (0.0 + 0.6), 0.5 * (1.0 + 0.8)])
    torch.testing.assert_close(mem.features, torch.tensor([e0, e1], dtype=torch.float64))


def test_init_centroids_errors():
    mem = ClusterMemory(2, 3)
    with pytest.raises(ValueError, match="no member"):
        mem.init_centroids(np.ones((4, 2)), np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="num_clusters"):
        mem.init_centroids(np.ones((2, 2)), np.array([0, 3]))
    with pytest.raises(ValueError, match="features"):
        mem.init_centroids(np.ones((2, 5)), np.array([0, 1]))


def test_bad_targets_and_args():
    mem = ClusterMemory(4, 3)
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="outliers"):
        mem(x, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="targets"):
        mem(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="feature dimension"):
        mem(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mode"):
        ClusterMemory(4, 3, mode="soft")
    with pytest.raises(ValueError, match="num_clusters"):
        ClusterMemory(4, 0)


def test_bf16_inputs_are_cast_to_float32():
    mem = ClusterMemory(8, 4)
    mem.init_centroids(torch.randn(16, 8), torch.arange(16) % 4)
    x = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ref = mem(x.bfloat16().float(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mem(x.bfloat16(), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    mem.update(x.bfloat16(), y)
    assert mem.features.dtype == torch.float32


def test_memory_is_buffer_in_state_dict():
    mem = ClusterMemory(4, 3)
    assert "features" in dict(mem.named_buffers())
    assert "features" in mem.state_dict()
    mem.update(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert "features" in dict(mem.named_buffers())  # still a buffer after the non-inplace update
