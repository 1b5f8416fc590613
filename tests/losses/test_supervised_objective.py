"""reid_core.supervised.Objective terms added for the claims table: offline mining, SoftTriple K=1."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reid_core.losses.softtriple_loss import SoftTripleLoss
from reid_core.supervised import Objective

from .reference import dist_matrix, triplets_batch_hard


def _batch(seed=0, P=3, K=3, D=6):
    g = torch.Generator().manual_seed(seed)
    live = torch.randn(P * K, D, generator=g, dtype=torch.float64)
    snap = torch.randn(P * K, D, generator=g, dtype=torch.float64)
    y = torch.arange(P).repeat_interleave(K)
    return live, snap, y


def test_offline_triplet_mines_on_snapshot_and_scores_live_embeddings():
    live, snap, y = _batch()
    obj = Objective("triplet_offline", feat_dim=6)
    loss, stats = obj({"feat": live, "bn_feat": live, "snapshot_feat": snap}, y)
    d_live, d_snap = dist_matrix(live.numpy()), dist_matrix(snap.numpy())
    trips = triplets_batch_hard(d_snap, y.tolist())  # mined with the snapshot ...
    want = np.mean([max(0.0, d_live[a][p] - d_live[a][n] + 0.3) for a, p, n in trips])  # ... scored live
    assert loss.item() == pytest.approx(want, abs=1e-6)  # Objective computes in float32
    online = np.mean([max(0.0, d_live[a][p] - d_live[a][n] + 0.3) for a, p, n in triplets_batch_hard(d_live, y.tolist())])
    assert abs(online - want) > 1e-3  # the data tells offline from online mining
    # with an up-to-date snapshot, offline mining is online batch-hard
    same, _ = obj({"feat": live, "bn_feat": live, "snapshot_feat": live.clone()}, y)
    assert same.item() == pytest.approx(online, abs=1e-6)
    assert obj.needs_snapshot and not Objective("triplet", feat_dim=6).needs_snapshot


def test_offline_triplet_gradient_flows_only_to_live_features():
    live, snap, y = _batch(seed=3)
    live.requires_grad_(True)
    snap.requires_grad_(True)
    loss, _ = Objective("triplet_offline", feat_dim=6)({"feat": live, "bn_feat": live, "snapshot_feat": snap}, y)
    loss.backward()
    assert live.grad is not None and live.grad.abs().sum() > 0
    assert snap.grad is None


def test_offline_triplet_without_snapshot_and_one_identity():
    live, _, _ = _batch()
    with pytest.raises(ValueError, match="snapshot_feat"):
        Objective("triplet_offline", feat_dim=6)({"feat": live, "bn_feat": live}, torch.zeros(9, dtype=torch.long))
    # one identity: no negative for any anchor -> zero loss, no error
    loss, _ = Objective("triplet_offline", feat_dim=6)({"feat": live, "bn_feat": live, "snapshot_feat": live},
                                                       torch.zeros(9, dtype=torch.long))
    assert loss.item() == 0.0


def test_softtriple_k1_has_one_centre_a_class():
    obj = Objective("softtriple_k1", feat_dim=6, num_classes=4)
    fn = obj.losses["softtriple_k1"]
    assert isinstance(fn, SoftTripleLoss)
    assert sum(p.numel() for p in fn.parameters()) == 6 * 4 * 1
    assert sum(p.numel() for p in Objective("softtriple", feat_dim=6, num_classes=4).parameters()) == 6 * 4 * 10


def test_verification_weight_scales_only_the_verification_term():
    live, _, y = _batch(seed=3, P=3, K=3, D=6)
    live = live.float()  # the objective computes in float32
    logits = torch.randn(9, 3, generator=torch.Generator().manual_seed(4))
    out = {"feat": live, "bn_feat": live, "logits": logits}
    torch.manual_seed(0)
    full = Objective("id+verification", feat_dim=6, num_classes=3)
    torch.manual_seed(0)
    tenth = Objective("id+verification", feat_dim=6, num_classes=3, verification_weight=0.1)
    loss_full, stats_full = full(out, y)
    loss_tenth, stats_tenth = tenth(out, y)
    # same head weights (same seed), so the unweighted terms agree and only the sum changes
    assert stats_full == pytest.approx(stats_tenth)
    assert stats_full["loss_verification"] > 0
    expected = stats_full["loss_id"] + 0.1 * stats_full["loss_verification"]
    assert loss_tenth.item() == pytest.approx(expected, rel=1e-6)
    assert loss_full.item() == pytest.approx(stats_full["loss_id"] + stats_full["loss_verification"], rel=1e-6)
    with pytest.raises(ValueError, match="verification_weight"):
        Objective("id+verification", feat_dim=6, num_classes=3, verification_weight=-1.0)
