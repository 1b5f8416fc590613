import pytest
import torch

from reid_core.losses.contrastive_loss import ContrastiveLoss
from reid_core.losses.distances import CosineDistance, EuclideanDistance
from reid_core.losses.miners import PairMarginMiner

from .reference import dist_matrix, pairs_all


def _batch(seed=0, p=3, k=3, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p * k, d, generator=g, dtype=torch.float64)
    return x, torch.arange(p).repeat_interleave(k)


def _naive(d, pos, neg, margin):
    vals = [d[i][j] ** 2 for i, j in pos] + [max(0.0, margin - d[i][j]) ** 2 for i, j in neg]
    return vals


@pytest.mark.parametrize("kind", ["euclidean", "cosine"])
@pytest.mark.parametrize("margin", [0.5, 1.2])
def test_all_pairs_matches_loop(kind, margin):
    x, y = _batch(1)
    dist = EuclideanDistance() if kind == "euclidean" else CosineDistance()
    loss_fn = ContrastiveLoss(margin=margin, distance=dist)
    got = loss_fn(x, y).item()
    d = dist_matrix(x.numpy(), kind)
    pos, neg = pairs_all(y.tolist())
    vals = _naive(d, pos, neg, margin)
    assert got == pytest.approx(sum(vals) / len(vals), abs=1e-12)
    assert loss_fn.last_stats["num_pos_pairs"] == len(pos) == 9
    assert loss_fn.last_stats["num_neg_pairs"] == len(neg) == 27


def test_mined_pairs_match_loop_and_gradient():
    x, y = _batch(2)
    x.requires_grad_(True)
    margin = 1.4
    loss_fn = ContrastiveLoss(margin=margin, miner=PairMarginMiner(pos_margin=0.9, neg_margin=margin), reduction="sum")
    loss = loss_fn(x, y)
    d = dist_matrix(x.detach().numpy(), "euclidean")
    pos, neg = pairs_all(y.tolist())
    pos = [(i, j) for i, j in pos if d[i][j] > 0.9]
    neg = [(i, j) for i, j in neg if d[i][j] < margin]
    assert pos and neg
    assert loss.item() == pytest.approx(sum(_naive(d, pos, neg, margin)), abs=1e-12)
    # gradient against an explicit per-pair autograd loop
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    xn = x2 / x2.norm(dim=1, keepdim=True)
    ref = sum(((xn[i] - xn[j]) ** 2).sum() for i, j in pos)
    ref = ref + sum(torch.relu(margin - ((xn[i] - xn[j]) ** 2).sum().sqrt()) ** 2 for i, j in neg)
    ref.backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_explicit_pairs():
    x, y = _batch(3)
    d = dist_matrix(x.numpy(), "euclidean")
    idx = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 2]), torch.tensor([5, 8]))
    got = ContrastiveLoss(margin=1.5, reduction="sum")(x, y, indices_tuple=idx).item()
    assert got == pytest.approx(d[0][1] ** 2 + max(0, 1.5 - d[0][5]) ** 2 + max(0, 1.5 - d[2][8]) ** 2)


def test_single_image_and_equal_features():
    x = torch.randn(1, 4, requires_grad=True)
    loss_fn = ContrastiveLoss()
    loss = loss_fn(x, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and loss_fn.last_stats["empty"] and torch.all(x.grad == 0)
    x = torch.ones(4, 3, requires_grad=True)
    loss = ContrastiveLoss(margin=0.7)(x, torch.tensor([0, 0, 1, 1]))
    # 2 positive pairs at distance 0, 4 negative pairs at distance 0 -> (4 * 0.49) / 6
    assert loss.item() == pytest.approx(4 * 0.49 / 6, abs=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=0)
    with pytest.raises(ValueError, match="miner"):
        ContrastiveLoss(miner="all")
