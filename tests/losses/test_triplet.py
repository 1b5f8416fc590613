import zlib

import numpy as np
import pytest
import torch
from torch import nn

from reid_core.losses.distances import CosineDistance, EuclideanDistance
from reid_core.losses.miners import BatchHardMiner
from reid_core.losses.triplet_loss import TripletMarginLoss

from .reference import (
    dist_matrix,
    reduce,
    triplet_value,
    triplets_all,
    triplets_batch_hard,
    triplets_semi_hard,
)


def _batch(seed=0, p=3, k=3, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p * k, d, generator=g, dtype=torch.float64)
    y = torch.arange(p).repeat_interleave(k)
    perm = torch.randperm(p * k, generator=g)
    return x[perm], y[perm]


def _naive_triplets(d, labels, miner, margin):
    if miner == "batch_hard":
        return triplets_batch_hard(d, labels)
    if miner == "semi_hard":
        return triplets_semi_hard(d, labels, margin)
    return triplets_all(labels)


@pytest.mark.parametrize("miner", ["batch_hard", "batch_all", "semi_hard"])
@pytest.mark.parametrize("variant", ["hinge", "soft", "improved"])
@pytest.mark.parametrize("kind", ["euclidean", "cosine"])
def test_loss_matches_naive_loop(miner, variant, kind):
    margin = 0.5
    x, y = _batch(seed=zlib.crc32(f"{miner}{variant}{kind}".encode()) % 100)
    dist = EuclideanDistance() if kind == "euclidean" else CosineDistance()
    loss_fn = TripletMarginLoss(margin=margin, distance=dist, miner=miner, variant=variant)
    got = loss_fn(x, y).item()
    d = dist_matrix(x.numpy(), kind)
    trips = _naive_triplets(d, y.tolist(), miner, margin)
    assert trips, "test batch must contain triplets"
    values = [triplet_value(d[a][p], d[a][n], margin, variant) for a, p, n in trips]
    reduction = "mean_nonzero" if miner == "batch_all" else "mean"
    assert loss_fn.reduction == reduction
    assert got == pytest.approx(reduce(values, reduction), abs=1e-10)
    assert loss_fn.last_stats["num_triplets"] == len(trips)
    assert loss_fn.last_stats["num_active"] == sum(v > 0 for v in values)


def test_miner_none_is_all_triplets_and_explicit_indices():
    x, y = _batch(5)
    a = TripletMarginLoss(miner=None)(x, y)
    b = TripletMarginLoss(miner="batch_all")(x, y)
    assert a.item() == pytest.approx(b.item())
    loss = TripletMarginLoss(margin=0.3, miner="batch_hard", reduction="sum")
    d = dist_matrix(x.numpy(), "euclidean")
    idx = ([0, 1], [int(np.flatnonzero(y == y[0])[1]), int(np.flatnonzero(y == y[1])[1])],
           [int(np.flatnonzero(y != y[0])[0]), int(np.flatnonzero(y != y[1])[0])])
    want = sum(max(0, d[a][p] - d[a][n] + 0.3) for a, p, n in zip(*idx))
    assert loss(x, y, indices_tuple=tuple(torch.tensor(i) for i in idx)).item() == pytest.approx(want)
    with pytest.raises(ValueError, match="indices_tuple"):
        loss(x, y, indices_tuple=(torch.tensor([0]), torch.tensor([99]), torch.tensor([1])))


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, x):
        return self.net(x)


def _param_grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _explicit_dist(u, v):
    """Euclidean distance of two single embeddings after L2 normalisation, written out."""
    u = u / torch.sqrt((u * u).sum())
    v = v / torch.sqrt((v * v).sum())
    return torch.sqrt(((u - v) ** 2).sum())


@pytest.mark.parametrize("miner", ["batch_all", "batch_hard"])
def test_batched_equals_per_triplet_forwards_in_value_and_parameter_gradients(miner):
    """The batched loss (one forward per image, triplets read from the B x B matrix) has the same
    value and the same gradients w.r.t. the network parameters as a loop over explicit triplets
    that runs a separate forward for every triplet member."""
    torch.manual_seed(0)
    model = TinyMLP().double()
    g = torch.Generator().manual_seed(1)
    P, K = 3, 3
    images = torch.randn(P * K, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(P).repeat_interleave(K)
    margin = 0.4

    model.zero_grad()
    loss_b = TripletMarginLoss(margin=margin, miner=miner)(model(images), labels)
    loss_b.backward()
    grads_b = _param_grads(model)

    # explicit version: mining on per-image forwards (no grad), then one forward per triplet member
    with torch.no_grad():
        feats = [model(images[i:i + 1])[0] for i in range(P * K)]
        d = [[float(_explicit_dist(feats[i], feats[j])) if i != j else 0.0 for j in range(P * K)] for i in range(P * K)]
    trips = triplets_all(labels.tolist()) if miner == "batch_all" else triplets_batch_hard(d, labels.tolist())
    model.zero_grad()
    terms = []
    for a, p, n in trips:
        fa, fp, fn = model(images[a:a + 1])[0], model(images[p:p + 1])[0], model(images[n:n + 1])[0]
        terms.append(torch.relu(_explicit_dist(fa, fp) - _explicit_dist(fa, fn) + margin))
    if miner == "batch_all":
        n_active = sum(float(t.detach()) > 0 for t in terms)
        assert 0 < n_active < len(terms)  # the reduction matters in this test
        loss_e = sum(terms) / n_active
    else:
        loss_e = sum(terms) / len(terms)
    loss_e.backward()
    grads_e = _param_grads(model)

    assert loss_b.item() == pytest.approx(loss_e.item(), abs=1e-12)
    for gb, ge in zip(grads_b, grads_e):
        torch.testing.assert_close(gb, ge, atol=1e-12, rtol=1e-9)
    assert any(gb.abs().sum() > 0 for gb in grads_b)


@pytest.mark.parametrize("labels", [[3, 3, 3, 3], [0, 1, 2, 3]], ids=["one_identity", "all_singletons"])
@pytest.mark.parametrize("miner", ["batch_hard", "batch_all", "semi_hard"])
@pytest.mark.parametrize("variant", ["hinge", "soft", "improved"])
def test_no_valid_triplet_gives_attached_zero(labels, miner, variant):
    x = torch.randn(4, 5, requires_grad=True)
    loss_fn = TripletMarginLoss(miner=miner, variant=variant)
    loss = loss_fn(x, torch.tensor(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad == 0)
    assert loss_fn.last_stats["empty"] is True
    assert loss_fn.last_stats["num_triplets"] == 0


@pytest.mark.parametrize("kind", [EuclideanDistance(), CosineDistance()])
@pytest.mark.parametrize("miner", ["batch_hard", "batch_all"])
def test_all_equal_features_finite(kind, miner):
    x = torch.ones(6, 5, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = TripletMarginLoss(margin=0.3, distance=kind, miner=miner)(x, y)
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_miner_with_own_distance_is_used():
    x, y = _batch(7, p=4, k=2)
    miner = BatchHardMiner(distance=CosineDistance())
    loss_fn = TripletMarginLoss(margin=0.2, miner=miner)  # mine with cosine, loss with Euclidean
    got = loss_fn(x, y).item()
    dc, de = dist_matrix(x.numpy(), "cosine"), dist_matrix(x.numpy(), "euclidean")
    trips = triplets_batch_hard(dc, y.tolist())
    want = np.mean([max(0.0, de[a][p] - de[a][n] + 0.2) for a, p, n in trips])
    assert got == pytest.approx(want, abs=1e-10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        TripletMarginLoss(variant="cubic")
    with pytest.raises(ValueError, match="margin"):
        TripletMarginLoss(margin=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        TripletMarginLoss(reduction="median")
    with pytest.raises(ValueError, match="labels"):
        TripletMarginLoss()(torch.randn(4, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="embeddings"):
        TripletMarginLoss()(torch.randn(4, 3, 2), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("weight,threshold", [(1.0, 0.0), (0.5, 0.8)])
def test_improved_pull_options_match_naive_loop(weight, threshold):
    """The improved variant's pull weight and threshold (Cheng et al.'s beta, tau2) reach every
    batch-hard triplet as the definition says; negative values are refused."""
    x, y = _batch(seed=7)
    dist = EuclideanDistance()
    loss_fn = TripletMarginLoss(margin=0.3, distance=dist, variant="improved",
                                pull_weight=weight, pull_threshold=threshold)
    got = loss_fn(x, y).item()
    d = dist_matrix(x.numpy(), "euclidean")
    trips = _naive_triplets(d, y.tolist(), "batch_hard", 0.3)
    values = [triplet_value(d[a][p], d[a][n], 0.3, "improved", weight, threshold) for a, p, n in trips]
    assert got == pytest.approx(reduce(values, "mean"), abs=1e-10)
    with pytest.raises(ValueError, match="pull_weight"):
        TripletMarginLoss(variant="improved", pull_weight=-1.0)
