import math

import numpy as np
import pytest
import torch

from reid_core.losses.aligned_reid import (
    AlignedTripletLoss,
    MutualLearningLoss,
    local_distance_matrix,
    local_distance_pairs,
    metric_mutual_loss,
    mutual_kl_loss,
    shortest_path,
    squash,
)

from .reference import dist_matrix, euclid, monotone_paths, normalize_row, triplets_batch_hard


def brute_force_path(m):
    h, w = len(m), len(m[0])
    return min(sum(m[i][j] for i, j in cells) for cells in monotone_paths(h, w))


def naive_local_distance(u, v, normalize=True):
    """u, v: (H, C) arrays. Paper definition: squashed stripe distances, shortest monotone path."""
    if normalize:
        u, v = [normalize_row(r) for r in u], [normalize_row(r) for r in v]
    m = []
    for a in u:
        row = []
        for b in v:
            d = euclid(a, b)
            row.append((math.exp(d) - 1) / (math.exp(d) + 1))
        m.append(row)
    return brute_force_path(m)


def test_squash_is_paper_formula():
    d = torch.tensor([0.0, 0.3, 1.0, 2.5, 30.0], dtype=torch.float64)
    want = [(math.exp(v) - 1) / (math.exp(v) + 1) for v in d.tolist()]
    np.testing.assert_allclose(squash(d).numpy(), want, rtol=1e-14, atol=1e-15)
    assert torch.isfinite(squash(torch.tensor([1e4]))).all()


def test_monotone_path_enumeration_is_complete():
    assert len(list(monotone_paths(4, 4))) == math.comb(6, 3)
    assert len(list(monotone_paths(5, 5))) == math.comb(8, 4)


@pytest.mark.parametrize("shape", [(4, 4), (5, 5), (3, 5), (1, 4), (1, 1)])
def test_shortest_path_matches_brute_force(shape):
    g = torch.Generator().manual_seed(sum(shape))
    m = torch.rand(6, *shape, generator=g, dtype=torch.float64)
    got = shortest_path(m)
    want = [brute_force_path(mi.tolist()) for mi in m]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_shortest_path_gradient_is_indicator_of_best_path():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(1, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    shortest_path(m).sum().backward()
    mat = m.detach()[0].tolist()
    best = min(monotone_paths(5, 5), key=lambda cells: sum(mat[i][j] for i, j in cells))
    want = torch.zeros(5, 5, dtype=torch.float64)
    for i, j in best:
        want[i, j] = 1.0
    torch.testing.assert_close(m.grad[0], want)


@pytest.mark.parametrize("H", [4, 5])
@pytest.mark.parametrize("normalize", [True, False])
def test_local_distance_pairs_matches_definition(H, normalize):
    g = torch.Generator().manual_seed(H)
    x = torch.randn(5, H, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, H, 3, generator=g, dtype=torch.float64)
    got = local_distance_pairs(x, y, normalize=normalize)
    want = [naive_local_distance(x[i].tolist(), y[i].tolist(), normalize) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_all_equal_stripes_give_zero_distance_with_finite_grad():
    # (a path visits 2H - 1 cells, so two identical images with *different* stripes are not at 0)
    x = torch.ones(3, 4, 6, requires_grad=True)
    y = torch.ones(3, 4, 6, requires_grad=True)
    d = local_distance_pairs(x, y)
    assert torch.all(d == 0)
    d.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    z = torch.randn(2, 4, 6)
    assert torch.all(local_distance_pairs(z, z) > 0)


def test_local_distance_matrix_chunks_and_numpy():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    gal = torch.randn(7, 4, 3, generator=g, dtype=torch.float64)
    want = np.array([[naive_local_distance(q[i].tolist(), gal[j].tolist()) for j in range(7)] for i in range(5)])
    for chunk, gchunk in [(2, 3), (64, 2048), (1, 1)]:
        got = local_distance_matrix(q, gal, chunk=chunk, gallery_chunk=gchunk)
        assert isinstance(got, torch.Tensor) and got.shape == (5, 7)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    got_np = local_distance_matrix(q.numpy(), gal.numpy(), chunk=2)
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_allclose(got_np, want, atol=1e-12)
    with pytest.raises(ValueError, match="g_local"):
        local_distance_matrix(q, torch.randn(3, 4))


def _aligned_batch(seed=0, P=3, K=3, H=4, C=3, D=5):
    g = torch.Generator().manual_seed(seed)
    glob = torch.randn(P * K, D, generator=g, dtype=torch.float64)
    loc = torch.randn(P * K, H, C, generator=g, dtype=torch.float64)
    y = torch.arange(P).repeat_interleave(K)
    return glob, loc, y


def test_aligned_triplet_matches_naive():
    glob, loc, y = _aligned_batch()
    loss_fn = AlignedTripletLoss(margin=0.3, local_margin=0.2, global_weight=1.0, local_weight=0.5)
    got = loss_fn(glob, loc, y).item()
    d = dist_matrix(glob.numpy(), "euclidean")
    trips = triplets_batch_hard(d, y.tolist())  # mined on the GLOBAL distance only
    lg = np.mean([max(0.0, d[a][p] - d[a][n] + 0.3) for a, p, n in trips])
    ld = lambda i, j: naive_local_distance(loc[i].tolist(), loc[j].tolist())  # noqa: E731
    ll = np.mean([max(0.0, ld(a, p) - ld(a, n) + 0.2) for a, p, n in trips])
    assert ll > 0 and lg > 0
    assert got == pytest.approx(lg + 0.5 * ll, abs=1e-12)
    assert loss_fn.last_stats["loss_local"] == pytest.approx(ll, abs=1e-12)
    assert loss_fn.last_stats["num_triplets"] == 9


def test_aligned_triplet_mean_scale_matches_naive():
    """local_scale="mean": the path length divided by its 2H - 1 cells, margin applied after."""
    glob, loc, y = _aligned_batch(seed=2, H=4)
    loss_fn = AlignedTripletLoss(margin=0.3, local_margin=0.1, global_weight=0.0, local_weight=1.0, local_scale="mean")
    got = loss_fn(glob, loc, y).item()
    d = dist_matrix(glob.numpy(), "euclidean")
    ld = lambda i, j: naive_local_distance(loc[i].tolist(), loc[j].tolist()) / 7.0  # noqa: E731  (2 * 4 - 1 cells)
    want = np.mean([max(0.0, ld(a, p) - ld(a, n) + 0.1) for a, p, n in triplets_batch_hard(d, y.tolist())])
    assert want > 0
    assert got == pytest.approx(want, abs=1e-12)
    # the raw sum differs: the test data separates the two scales
    raw = AlignedTripletLoss(margin=0.3, local_margin=0.1, global_weight=0.0, local_scale="sum")(glob, loc, y).item()
    assert abs(raw - got) > 1e-3
    with pytest.raises(ValueError, match="local_scale"):
        AlignedTripletLoss(local_scale="max")


def test_local_loss_uses_global_mining():
    """Swapping in local features that would mine differently must not change the indices used."""
    glob, loc, y = _aligned_batch(seed=1)
    loss_fn = AlignedTripletLoss(margin=0.3, global_weight=0.0)
    got = loss_fn(glob, loc, y).item()
    d = dist_matrix(glob.numpy(), "euclidean")
    ld = lambda i, j: naive_local_distance(loc[i].tolist(), loc[j].tolist())  # noqa: E731
    by_global = np.mean([max(0.0, ld(a, p) - ld(a, n) + 0.3) for a, p, n in triplets_batch_hard(d, y.tolist())])
    dl = [[ld(i, j) for j in range(9)] for i in range(9)]
    by_local = np.mean([max(0.0, dl[a][p] - dl[a][n] + 0.3) for a, p, n in triplets_batch_hard(dl, y.tolist())])
    assert got == pytest.approx(by_global, abs=1e-12)
    assert abs(by_global - by_local) > 1e-6  # the test data distinguishes the two choices


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["one_identity", "singletons"])
def test_aligned_triplet_empty(labels):
    glob = torch.randn(4, 5, requires_grad=True)
    loc = torch.randn(4, 3, 2, requires_grad=True)
    loss_fn = AlignedTripletLoss()
    loss = loss_fn(glob, loc, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and loss_fn.last_stats["empty"]
    assert torch.all(glob.grad == 0) and torch.all(loc.grad == 0)


def test_aligned_triplet_all_equal_features_finite():
    glob = torch.ones(4, 5, requires_grad=True)
    loc = torch.ones(4, 3, 2, requires_grad=True)
    loss = AlignedTripletLoss(margin=0.3)(glob, loc, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(0.6, abs=1e-5)
    loss.backward()
    assert torch.isfinite(glob.grad).all() and torch.isfinite(loc.grad).all()


def naive_kl(p_logits, q_logits):
    """mean_i KL(softmax(q_i) || softmax(p_i))."""
    total = 0.0
    for zp, zq in zip(p_logits.tolist(), q_logits.tolist()):
        sp = [math.exp(v) for v in zp]
        sq = [math.exp(v) for v in zq]
        p = [v / sum(sp) for v in sp]
        q = [v / sum(sq) for v in sq]
        total += sum(qc * math.log(qc / pc) for pc, qc in zip(p, q))
    return total / len(p_logits)


def test_mutual_losses_match_naive_and_stop_gradient():
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert mutual_kl_loss(z1, z2).item() == pytest.approx(naive_kl(z1.detach(), z2.detach()), abs=1e-12)
    d1 = torch.rand(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    d2 = torch.rand(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    want = sum((d1[i, j].item() - d2[i, j].item()) ** 2 for i in range(4) for j in range(4)) / 16
    mm = metric_mutual_loss(d1, d2)
    assert mm.item() == pytest.approx(want, abs=1e-12)
    (mutual_kl_loss(z1, z2) + mm).backward()
    assert z2.grad is None and d2.grad is None  # partner side is a constant
    torch.testing.assert_close(d1.grad, 2 * (d1 - d2).detach() / 16)


@pytest.mark.parametrize("with_local", [False, True])
def test_mutual_learning_symmetric_gives_each_network_its_own_gradient(with_local):
    g = torch.Generator().manual_seed(6)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    z1, z2, f1, f2 = mk(6, 3), mk(6, 3), mk(6, 5), mk(6, 5)
    l1, l2 = (mk(6, 4, 2), mk(6, 4, 2)) if with_local else (None, None)
    loss_fn = MutualLearningLoss(kl_weight=0.7, metric_weight=0.3)
    loss_fn(z1, z2, f1, f2, l1, l2).backward()
    # network 1's own objective alone (partner constant) must give the same gradient to network 1
    one_sided = MutualLearningLoss(kl_weight=0.7, metric_weight=0.3, symmetric=False)
    leaves = [t.detach().clone().requires_grad_(True) for t in (z1, f1)]
    locs = (l1.detach().clone().requires_grad_(True), l2.detach()) if with_local else (None, None)
    one_sided(leaves[0], z2.detach(), leaves[1], f2.detach(), *locs).backward()
    torch.testing.assert_close(z1.grad, leaves[0].grad)
    torch.testing.assert_close(f1.grad, leaves[1].grad)
    if with_local:
        torch.testing.assert_close(l1.grad, locs[0].grad)
    # and the value of the one-sided metric term is the naive mean squared difference
    d1 = dist_matrix(f1.detach().numpy(), "euclidean")
    d2 = dist_matrix(f2.detach().numpy(), "euclidean")
    mm = ((d1 - d2) ** 2).mean()
    if with_local:
        dl1 = np.array([[naive_local_distance(l1[i].tolist(), l1[j].tolist()) for j in range(6)] for i in range(6)])
        dl2 = np.array([[naive_local_distance(l2[i].tolist(), l2[j].tolist()) for j in range(6)] for i in range(6)])
        mm += ((dl1 - dl2) ** 2).mean()
    assert one_sided.last_stats["loss_metric"] == pytest.approx(mm, abs=1e-10)
    assert one_sided.last_stats["loss_kl"] == pytest.approx(naive_kl(z1.detach(), z2.detach()), abs=1e-12)
