"""ISE losses against plain loops (float64), ablation switches and the baseline identity."""
import math

import pytest
import torch
import torch.nn.functional as F

from reid_core.cluster.ise import lambda_schedule
from reid_core.losses.cluster_memory import ClusterMemory
from reid_core.losses.ise_loss import ISELoss, label_preserving_loss


def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def naive_lp(real, support, labels, support_labels, temp):
    """Written from the definition: hardest positive support, hardest support per other identity."""
    total = 0.0
    for i in range(len(real)):
        f = _unit(real[i].tolist())
        sims = [sum(a * b for a, b in zip(f, _unit(s.tolist()))) / temp for s in support]
        yi = int(labels[i])
        pos = min(s for s, l in zip(sims, support_labels.tolist()) if l == yi)
        negs = []
        for other in sorted(set(support_labels.tolist()) - {yi}):
            negs.append(max(s for s, l in zip(sims, support_labels.tolist()) if l == other))
        num = math.exp(pos)
        den = num + sum(math.exp(n) for n in negs)
        total += -math.log(num / den)
    return total / len(real)


def naive_memory_loss(x, y, M, temp):
    total = 0.0
    for i in range(len(x)):
        xi = _unit(x[i].tolist())
        logits = [sum(a * b for a, b in zip(xi, M[c].tolist())) / temp for c in range(len(M))]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[int(y[i])]
    return total / len(x)


def _pk_batch(P=4, K=3, D=6, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    mem = ClusterMemory(D, C, temp=0.05, momentum=0.2, mode="hard").double()
    mem.features = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=1)
    ids = torch.randperm(C, generator=g)[:P]
    labels = ids.repeat_interleave(K)
    feats = mem.features[labels] + 0.5 * torch.randn(P * K, D, generator=g, dtype=torch.float64)
    return mem, feats * 4.0, labels


def test_lp_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(9, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 3, 3, 7, 7, 7, 7])
    support = torch.randn(18, 5, generator=g, dtype=torch.float64)
    support_labels = labels.repeat_interleave(2)
    out = label_preserving_loss(real, support, labels, support_labels, temp=0.6)
    assert out.item() == pytest.approx(naive_lp(real, support, labels, support_labels, 0.6), rel=1e-10)


def test_lp_non_pk_batch_and_single_identity():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([4, 1, 4, 2, 1])  # unordered, unequal group sizes
    support = torch.randn(5, 4, generator=g, dtype=torch.float64)
    out = label_preserving_loss(real, support, labels, labels, temp=0.3)
    assert out.item() == pytest.approx(naive_lp(real, support, labels, labels, 0.3), rel=1e-10)
    one = torch.zeros(5, dtype=torch.long)
    real.requires_grad_(True)
    z = label_preserving_loss(real, support, one, one)
    assert z.item() == 0.0
    z.backward()
    assert torch.isfinite(real.grad).all()


def test_lp_missing_positive_raises():
    with pytest.raises(ValueError, match="support_labels"):
        label_preserving_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 0]))


def test_full_ise_matches_naive_loops():
    mem, feats, labels = _pk_batch()
    t, T, k = 30, 100, 2
    ise = ISELoss(mem, lambda0=1.0, k=k, lp_weight=0.1, lp_temp=0.6)
    M = mem.features.clone()
    loss, stats = ise(feats, labels, t, T, update=False)
    lam = lambda_schedule(t, T, 1.0)
    # naive supports: k nearest other centroids by cosine, then normalize(f + lam/2 (c_nn - c_y))
    sup, sup_labels = [], []
    for i in range(len(feats)):
        f = _unit(feats[i].tolist())
        yi = int(labels[i])
        sims = sorted(((sum(a * b for a, b in zip(f, M[c].tolist())), c) for c in range(len(M)) if c != yi),
                      key=lambda s: -s[0])
        for _, c in sims[:k]:
            sup.append(_unit([f[d] + lam / 2 * (float(M[c][d]) - float(M[yi][d])) for d in range(len(f))]))
            sup_labels.append(yi)
    sup = torch.tensor(sup, dtype=torch.float64)
    sup_labels = torch.tensor(sup_labels)
    exp_mem = naive_memory_loss(torch.cat([feats, sup]), torch.cat([labels, sup_labels]), M, 0.05)
    exp_lp = naive_lp(feats, sup, labels, sup_labels, 0.6)
    assert stats["loss_memory"] == pytest.approx(exp_mem, rel=1e-9)
    assert stats["loss_lp"] == pytest.approx(exp_lp, rel=1e-9)
    assert loss.item() == pytest.approx(exp_mem + 0.1 * exp_lp, rel=1e-9)
    assert stats["lambda"] == pytest.approx(lam)
    cos = [sum(a * b for a, b in zip(_unit(feats[i // k].tolist()), sup[i].tolist())) for i in range(len(sup))]
    assert stats["mean_cos_support"] == pytest.approx(sum(cos) / len(cos), rel=1e-9)
    assert torch.equal(mem.features, M)  # update=False leaves the memory alone


def test_ise_off_is_exactly_the_plain_memory_loss():
    mem, feats, labels = _pk_batch(seed=3)
    plain = mem(feats, labels)
    loss, stats = ISELoss(mem, use_interp=False, use_lp=False)(feats, labels, 10, 100, update=False)
    assert torch.equal(loss, plain)
    assert math.isnan(stats["loss_lp"]) and math.isnan(stats["lambda"])


def test_ablation_switches():
    mem, feats, labels = _pk_batch(seed=4)
    plain = mem(feats, labels).item()
    lp_only, s1 = ISELoss(mem, use_interp=False, use_lp=True)(feats, labels, 50, 100, update=False)
    # LP only: memory term sees the real samples only
    assert s1["loss_memory"] == pytest.approx(plain, rel=1e-12)
    assert lp_only.item() == pytest.approx(plain + 0.1 * s1["loss_lp"], rel=1e-12)
    interp, s2 = ISELoss(mem, use_interp=True, use_lp=False)(feats, labels, 50, 100, update=False)
    assert math.isnan(s2["loss_lp"]) and interp.item() == pytest.approx(s2["loss_memory"])
    assert s2["loss_memory"] != pytest.approx(plain)
    # at t = 0 supports equal the real samples: interpolation-only equals the plain loss
    at0, _ = ISELoss(mem, use_interp=True, use_lp=False)(feats, labels, 0, 100, update=False)
    assert at0.item() == pytest.approx(plain, rel=1e-10)


def test_gradients_and_memory_update():
    mem, feats, labels = _pk_batch(seed=5)
    feats = feats.clone().requires_grad_(True)
    before = mem.features.clone()
    loss, _ = ISELoss(mem)(feats, labels, 40, 100)
    loss.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert not mem.features.requires_grad
    changed = (mem.features - before).abs().sum(1) > 0
    assert changed[labels.unique()].all() and not changed[[c for c in range(6) if c not in labels.tolist()]].any()


def test_update_with_support_choice():
    mem_a, feats, labels = _pk_batch(seed=6)
    mem_b = ClusterMemory(6, 6, mode="hard", momentum=0.2).double()
    mem_b.features = mem_a.features.clone()
    ISELoss(mem_a, update_with_support=True)(feats, labels, 90, 100)
    ISELoss(mem_b, update_with_support=False)(feats, labels, 90, 100)
    assert not torch.allclose(mem_a.features, mem_b.features)


def test_real_only_update_equals_memory_update():
    mem, feats, labels = _pk_batch(seed=7)
    ref = ClusterMemory(6, 6, mode="hard", momentum=0.2).double()
    ref.features = mem.features.clone()
    ISELoss(mem, update_with_support=False)(feats, labels, 90, 100)
    ref.update(feats, labels)
    torch.testing.assert_close(mem.features, ref.features)


def test_bad_arguments():
    mem = ClusterMemory(4, 2)
    with pytest.raises(ValueError, match="k"):
        ISELoss(mem, k=0)
    with pytest.raises(ValueError, match="memory"):
        ISELoss("memory")
    with pytest.raises(ValueError, match="clusters"):
        ISELoss(mem, k=2)(torch.randn(2, 4), torch.tensor([0, 1]), 0, 10)
