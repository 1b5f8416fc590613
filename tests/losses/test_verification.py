import math

import pytest
import torch

from reid_core.losses.id_loss import label_smoothing_cross_entropy
from reid_core.losses.verification import IDVerificationLoss, VerificationHead, VerificationLoss


def naive_pair_ce(head, f, i, j, same):
    w = head.fc.weight.detach().tolist()
    b = head.fc.bias.detach().tolist()
    u, v = f[i].tolist(), f[j].tolist()
    fused = [(a - c) ** 2 if head.fusion == "square" else abs(a - c) for a, c in zip(u, v)]
    z = [sum(wk * x for wk, x in zip(w[k], fused)) + b[k] for k in range(2)]
    m = max(z)
    lse = m + math.log(sum(math.exp(t - m) for t in z))
    return lse - z[1 if same else 0]


@pytest.mark.parametrize("fusion", ["square", "abs"])
@pytest.mark.parametrize("balance", [True, False])
def test_matches_naive_loop(fusion, balance):
    torch.manual_seed(0)
    head = VerificationHead(4, fusion=fusion).double()
    f = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss_fn = VerificationLoss(head, balance=balance)
    got = loss_fn(f, y).item()
    pos, neg = [], []
    for i in range(6):
        for j in range(i + 1, 6):
            same = int(y[i]) == int(y[j])
            (pos if same else neg).append(naive_pair_ce(head, f, i, j, same))
    want = 0.5 * sum(pos) / len(pos) + 0.5 * sum(neg) / len(neg) if balance else (sum(pos) + sum(neg)) / (len(pos) + len(neg))
    assert got == pytest.approx(want, abs=1e-12)
    assert loss_fn.last_stats["num_pos_pairs"] == 3 and loss_fn.last_stats["num_neg_pairs"] == 12


def test_head_is_symmetric_and_explicit_pairs():
    torch.manual_seed(1)
    head = VerificationHead(5).double()
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(head(a, b), head(b, a))
    f = torch.cat([a, b])
    y = torch.tensor([0, 1, 2, 0, 1, 3])
    got = VerificationLoss(head, balance=False)(f, y, pairs=([0, 2], [3, 5])).item()
    want = (naive_pair_ce(head, f, 0, 3, True) + naive_pair_ce(head, f, 2, 5, False)) / 2
    assert got == pytest.approx(want, abs=1e-12)


def test_one_identity_and_single_image():
    torch.manual_seed(2)
    head = VerificationHead(3).double()
    f = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    loss_fn = VerificationLoss(head)
    loss = loss_fn(f, torch.tensor([5, 5, 5]))  # only positive pairs: plain mean over them
    want = sum(naive_pair_ce(head, f.detach(), i, j, True) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    assert loss.item() == pytest.approx(want, abs=1e-12)
    single = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(single, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and loss_fn.last_stats["empty"] and torch.all(single.grad == 0)


def test_id_plus_verification():
    torch.manual_seed(3)
    obj = IDVerificationLoss(4, epsilon=0.1, lambda_id=0.5, lambda_verif=2.0).double()
    f = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    got = obj(f, logits, y)
    want = 0.5 * label_smoothing_cross_entropy(logits, y, 0.1) + 2.0 * VerificationLoss(obj.verif.head)(f, y)
    assert got.item() == pytest.approx(want.item(), abs=1e-12)
    got.backward()
    assert f.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
    assert set(obj.last_stats) >= {"loss_id", "loss_verif", "num_pos_pairs", "accuracy"}


def test_validation():
    with pytest.raises(ValueError, match="fusion"):
        VerificationHead(4, fusion="concat")
    with pytest.raises(ValueError, match="features"):
        VerificationLoss(VerificationHead(4))(torch.randn(4), torch.tensor([0, 1, 2, 3]))
