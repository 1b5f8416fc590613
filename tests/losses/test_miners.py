import pytest
import torch

from reid_core.losses.distances import CosineDistance, EuclideanDistance
from reid_core.losses.miners import (
    AllPairsMiner,
    BatchAllMiner,
    BatchHardMiner,
    BatchSemiHardMiner,
    PairMarginMiner,
    all_triplets_indices,
    get_triplet_miner,
)

from .reference import dist_matrix, pairs_all, triplets_all, triplets_batch_hard, triplets_semi_hard


def _batch(seed=0, p=3, k=3, d=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p * k, d, generator=g, dtype=torch.float64)
    labels = torch.arange(p).repeat_interleave(k)
    perm = torch.randperm(p * k, generator=g)
    return x[perm], labels[perm]


def _as_set(t):
    return set(zip(*(v.tolist() for v in t)))


def test_all_triplets_match_loop():
    x, y = _batch()
    assert _as_set(all_triplets_indices(y)) == set(triplets_all(y.tolist()))
    assert _as_set(BatchAllMiner()(x, y)) == set(triplets_all(y.tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dist,kind", [(EuclideanDistance(), "euclidean"), (CosineDistance(), "cosine")])
def test_batch_hard_matches_loop(seed, dist, kind):
    x, y = _batch(seed, p=4, k=3)
    d = dist_matrix(x.numpy(), kind)
    got = BatchHardMiner(distance=dist)(x, y)
    assert sorted(_as_set(got)) == sorted(triplets_batch_hard(d, y.tolist()))


@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
def test_semi_hard_matches_loop(margin):
    x, y = _batch(3, p=3, k=4)
    d = dist_matrix(x.numpy(), "euclidean")
    got = BatchSemiHardMiner(margin=margin)(x, y)
    want = set(triplets_semi_hard(d, y.tolist(), margin))
    assert _as_set(got) == want
    if margin == 2.0:
        assert len(want) > 0


def test_pair_miners_match_loop():
    x, y = _batch(4)
    pos, neg = pairs_all(y.tolist())
    a1, p, a2, n = AllPairsMiner()(x, y)
    assert set(zip(a1.tolist(), p.tolist())) == set(pos)
    assert set(zip(a2.tolist(), n.tolist())) == set(neg)
    d = dist_matrix(x.numpy(), "euclidean")
    a1, p, a2, n = PairMarginMiner(pos_margin=0.8, neg_margin=1.2)(x, y)
    assert set(zip(a1.tolist(), p.tolist())) == {(i, j) for i, j in pos if d[i][j] > 0.8}
    assert set(zip(a2.tolist(), n.tolist())) == {(i, j) for i, j in neg if d[i][j] < 1.2}


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["one_identity", "singletons"])
@pytest.mark.parametrize("miner", [BatchHardMiner(), BatchAllMiner(), BatchSemiHardMiner(margin=5.0)])
def test_no_valid_triplet_gives_empty_tuple(labels, miner):
    x = torch.randn(4, 3)
    a, p, n = miner(x, torch.tensor(labels))
    assert a.numel() == p.numel() == n.numel() == 0
    assert miner.last_stats["num_triplets"] == 0


def test_batch_hard_skips_singleton_anchor_only():
    x = torch.randn(5, 3)
    y = torch.tensor([0, 0, 1, 1, 2])  # identity 2 is a singleton: no positive
    a, p, n = BatchHardMiner()(x, y)
    assert sorted(a.tolist()) == [0, 1, 2, 3]
    assert all(y[p] == y[a]) and all(y[n] != y[a]) and all(p != a)


def test_get_triplet_miner_and_label_errors():
    assert isinstance(get_triplet_miner("semi_hard", 0.2), BatchSemiHardMiner)
    assert get_triplet_miner(None) is None
    with pytest.raises(ValueError, match="miner"):
        get_triplet_miner("hardest")
    with pytest.raises(ValueError, match="labels"):
        BatchHardMiner()(torch.randn(4, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="labels"):
        BatchHardMiner()(torch.randn(4, 3), torch.tensor([0.0, 1.0, 1.0, 0.0]))
