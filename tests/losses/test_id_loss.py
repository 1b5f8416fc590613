import math

import pytest
import torch
import torch.nn.functional as F

from reid_core.losses.id_loss import CrossEntropyLabelSmooth, IDHead, IDLoss, label_smoothing_cross_entropy


def naive_ls_ce(logits, labels, eps):
    out = []
    for z, y in zip(logits.tolist(), labels.tolist()):
        C = len(z)
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        logp = [v - lse for v in z]
        q = [(1 - eps) * (1.0 if c == y else 0.0) + eps / C for c in range(C)]
        out.append(-sum(qc * lc for qc, lc in zip(q, logp)))
    return sum(out) / len(out)


def naive_ce(logits, labels):
    return naive_ls_ce(logits, labels, 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_loop(eps):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    got = CrossEntropyLabelSmooth(eps)(z, y).item()
    assert got == pytest.approx(naive_ls_ce(z, y, eps), abs=1e-12)
    # agrees with PyTorch's own label smoothing (same definition)
    assert got == pytest.approx(F.cross_entropy(z, y, label_smoothing=eps).item(), abs=1e-12)


def test_default_epsilon_is_point_one():
    assert CrossEntropyLabelSmooth().epsilon == 0.1 and IDLoss().ce.epsilon == 0.1


def test_attributes_combined_as_documented():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    a1 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    t1 = torch.tensor([0, 1, 1, 0, 1])
    a2 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t2 = torch.tensor([2, -1, 0, -1, 1])  # -1 = unknown, ignored
    a3 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    t3 = torch.tensor([-1, -1, -1, -1, -1])  # nothing known: contributes 0 but counts in the mean
    lam = 0.7
    loss_fn = IDLoss(epsilon=0.1, lambda_id=lam)
    got = loss_fn(z, y, [a1, a2, a3], [t1, t2, t3]).item()
    known2 = [0, 2, 4]
    attr = (naive_ce(a1, t1) + naive_ce(a2[known2], t2[known2]) + 0.0) / 3
    assert got == pytest.approx(lam * naive_ls_ce(z, y, 0.1) + attr, abs=1e-12)
    assert loss_fn.last_stats["num_attributes"] == 3
    assert loss_fn(z, y).item() == pytest.approx(lam * naive_ls_ce(z, y, 0.1), abs=1e-12)


def test_validation_errors():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="labels"):
        label_smoothing_cross_entropy(z, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="labels"):
        label_smoothing_cross_entropy(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="epsilon"):
        CrossEntropyLabelSmooth(1.0)
    with pytest.raises(ValueError, match="attribute"):
        IDLoss()(z, torch.tensor([0, 1, 2]), [torch.randn(3, 2)], None)
    with pytest.raises(ValueError, match=r"attribute_targets\[0\]"):
        IDLoss()(z, torch.tensor([0, 1, 2]), [torch.randn(3, 2)], [torch.tensor([0, 2, 1])])


def test_id_head():
    torch.manual_seed(0)
    head = IDHead(8, 5)
    feat = torch.randn(4, 8)
    bn_feat, logits = head(feat, return_feat=True)
    assert bn_feat.shape == (4, 8) and logits.shape == (4, 5)
    assert not head.bn.bias.requires_grad
    assert head.classifier.bias is None
    head.eval()
    torch.testing.assert_close(head(feat), head.classifier(head.bn(feat)))
