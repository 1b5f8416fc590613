import math

import numpy as np
import pytest
import torch

from reid_core.losses.softtriple_loss import SoftTripleLoss, effective_centers

from .reference import normalize_row


def naive_softtriple(x, labels, centers, C, K, la, gamma, delta, tau, eps):
    """centers: (D, C*K) array, column c*K + k."""
    D = centers.shape[0]
    W = [[normalize_row([centers[d_, c * K + k] for d_ in range(D)]) for k in range(K)] for c in range(C)]
    losses = []
    for i, row in enumerate(x):
        xi = normalize_row(row)
        s = []
        for c in range(C):
            sims = [sum(a * b for a, b in zip(xi, W[c][k])) for k in range(K)]
            m = max(sims)
            ws = [math.exp((v - m) / gamma) for v in sims]
            z = sum(ws)
            s.append(sum(w / z * v for w, v in zip(ws, sims)))
        logits = [la * (s[c] - (delta if c == labels[i] else 0.0)) for c in range(C)]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        losses.append(lse - logits[labels[i]])
    reg = 0.0
    if K > 1:
        for c in range(C):
            for k in range(K):
                for k2 in range(k + 1, K):
                    dot = sum(a * b for a, b in zip(W[c][k], W[c][k2]))
                    reg += math.sqrt(2 + 2 * eps - 2 * dot)
        reg = tau * reg / (C * K * (K - 1))
    return sum(losses) / len(losses), reg


@pytest.mark.parametrize("K", [1, 3])
def test_matches_naive_loop(K):
    torch.manual_seed(0)
    C, D = 4, 5
    loss_fn = SoftTripleLoss(D, C, centers_per_class=K).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, D, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 3])
    got = loss_fn(x, y).item()
    ce, reg = naive_softtriple(x.numpy(), y.tolist(), loss_fn.centers.detach().numpy(), C, K,
                               la=20.0, gamma=0.1, delta=0.01, tau=0.2, eps=1e-5)
    assert got == pytest.approx(ce + reg, abs=1e-10)
    assert loss_fn.last_stats["regularizer"] == pytest.approx(reg, abs=1e-12)
    if K == 1:
        assert reg == 0.0


def test_non_default_hyperparameters_and_gradients():
    torch.manual_seed(2)
    C, D, K = 3, 4, 4
    loss_fn = SoftTripleLoss(D, C, centers_per_class=K, la=5.0, gamma=0.5, margin=0.2, tau=1.0).double()
    x = torch.randn(5, D, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 2, 0])
    loss = loss_fn(x, y)
    ce, reg = naive_softtriple(x.detach().numpy(), y.tolist(), loss_fn.centers.detach().numpy(), C, K,
                               la=5.0, gamma=0.5, delta=0.2, tau=1.0, eps=1e-5)
    assert loss.item() == pytest.approx(ce + reg, abs=1e-10)
    loss.backward()
    assert torch.isfinite(loss_fn.centers.grad).all() and loss_fn.centers.grad.abs().sum() > 0
    # numerical gradient of the whole objective w.r.t. the centres
    c0 = loss_fn.centers.detach().clone().requires_grad_(True)
    xs = x.detach()
    assert torch.autograd.gradcheck(lambda c: torch.func.functional_call(loss_fn, {"centers": c}, (xs, y)), (c0,))


def test_effective_centers_counts_merged_groups():
    e = torch.eye(4, dtype=torch.float64)
    # class 0: all four centres identical -> 1; class 1: four orthogonal -> 4;
    # class 2: a chain a~b~c (each step < threshold, a-c > threshold) merged transitively + one far -> 2
    a = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.07, 0.0, 0.0], dtype=torch.float64)
    c = torch.tensor([1.0, 0.14, 0.0, 0.0], dtype=torch.float64)
    centers = torch.stack([
        torch.stack([e[0]] * 4),
        e,
        torch.stack([a, b, c, e[3]]),
    ])
    counts = effective_centers(centers, threshold=0.1)
    assert counts.tolist() == [1, 4, 2]
    assert effective_centers(centers, threshold=1e-9).tolist() == [1, 4, 4]


def test_regularizer_merges_centres():
    torch.manual_seed(0)
    loss_fn = SoftTripleLoss(3, 2, centers_per_class=4, tau=1.0)
    with torch.no_grad():  # start from two tight groups per class, 0.3 apart within a group
        base = torch.tensor([[1.0, 0, 0], [1.0, 0.3, 0], [0, 1.0, 0], [0.3, 1.0, 0]])
        loss_fn.centers.copy_(torch.cat([base, base.flip(1)]).t())
    assert loss_fn.effective_centers(threshold=0.05).tolist() == [4, 4]
    reg0 = float(loss_fn.regularizer().detach())
    for _ in range(40):  # plain gradient descent (torch.optim's first use costs seconds of imports)
        (grad,) = torch.autograd.grad(loss_fn.regularizer(), [loss_fn.centers])
        with torch.no_grad():
            loss_fn.centers -= 0.5 * grad
    # with no data term pulling them apart, the regulariser alone collapses each class to one centre
    assert float(loss_fn.regularizer().detach()) < 0.1 * reg0
    assert loss_fn.effective_centers(threshold=0.05).tolist() == [1, 1]


def test_validation():
    with pytest.raises(ValueError, match="labels"):
        SoftTripleLoss(4, 3)(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="dimension"):
        SoftTripleLoss(4, 3)(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="centers_per_class"):
        SoftTripleLoss(4, 3, centers_per_class=0)
    with pytest.raises(ValueError, match="centers"):
        effective_centers(np.zeros((3, 4)))
