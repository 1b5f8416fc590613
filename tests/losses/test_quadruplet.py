import pytest
import torch

from reid_core.losses.distances import CosineDistance, EuclideanDistance
from reid_core.losses.quadruplet_loss import QuadrupletLoss

from .reference import dist_matrix, reduce


def _batch(seed=0, p=3, k=3, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p * k, d, generator=g, dtype=torch.float64)
    y = torch.arange(p).repeat_interleave(k)
    perm = torch.randperm(p * k, generator=g)
    return x[perm], y[perm]


def naive_quadruplets(d, labels, mining):
    B = len(labels)
    out = []
    for a in range(B):
        pos = [j for j in range(B) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(B) if labels[j] != labels[a]]
        if mining == "all":
            for p in pos:
                for n1 in neg:
                    for n2 in range(B):
                        if labels[n2] != labels[a] and labels[n2] != labels[n1]:
                            out.append((a, p, n1, n2))
        else:
            if not pos or not neg:
                continue
            p = max(pos, key=lambda j: d[a][j])
            n1 = min(neg, key=lambda j: d[a][j])
            cand = [j for j in range(B) if labels[j] != labels[a] and labels[j] != labels[n1]]
            if not cand:
                continue
            out.append((a, p, n1, min(cand, key=lambda j: d[n1][j])))
    return out


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("kind", ["euclidean", "cosine"])
def test_matches_naive_loop(mining, kind):
    alpha, beta = 0.6, 0.3
    x, y = _batch(4, p=4, k=2)
    dist = EuclideanDistance() if kind == "euclidean" else CosineDistance()
    loss_fn = QuadrupletLoss(alpha=alpha, beta=beta, distance=dist, mining=mining)
    got = loss_fn(x, y).item()
    d = dist_matrix(x.numpy(), kind)
    quads = naive_quadruplets(d, y.tolist(), mining)
    vals = [max(0.0, d[a][p] - d[a][n1] + alpha) + max(0.0, d[a][p] - d[n1][n2] + beta) for a, p, n1, n2 in quads]
    assert loss_fn.last_stats["num_quadruplets"] == len(quads) > 0
    assert got == pytest.approx(reduce(vals, "mean" if mining == "hard" else "mean_nonzero"), abs=1e-12)


def test_gradient_matches_explicit_terms():
    alpha, beta = 0.5, 0.2
    x, y = _batch(5, p=3, k=3)
    x.requires_grad_(True)
    QuadrupletLoss(alpha=alpha, beta=beta, reduction="sum", mining="all")(x, y).backward()
    x2 = x.detach().clone().requires_grad_(True)
    xn = x2 / x2.norm(dim=1, keepdim=True)

    def dd(i, j):
        return ((xn[i] - xn[j]) ** 2).sum().sqrt()

    d = dist_matrix(x.detach().numpy(), "euclidean")
    total = 0
    for a, p, n1, n2 in naive_quadruplets(d, y.tolist(), "all"):
        total = total + torch.relu(dd(a, p) - dd(a, n1) + alpha) + torch.relu(dd(a, p) - dd(n1, n2) + beta)
    total.backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 2, 3]], ids=["one_id", "two_ids", "singletons"])
@pytest.mark.parametrize("mining", ["hard", "all"])
def test_no_valid_quadruplet(labels, mining):
    x = torch.randn(4, 3, requires_grad=True)
    loss_fn = QuadrupletLoss(mining=mining)
    loss = loss_fn(x, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and loss_fn.last_stats["empty"]
    assert torch.all(x.grad == 0)


def test_equal_features_and_validation():
    x = torch.ones(6, 3, requires_grad=True)
    loss = QuadrupletLoss(alpha=0.4, beta=0.1)(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert loss.item() == pytest.approx(0.5, abs=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="alpha"):
        QuadrupletLoss(alpha=0.3, beta=0.3)
    with pytest.raises(ValueError, match="mining"):
        QuadrupletLoss(mining="semi")
