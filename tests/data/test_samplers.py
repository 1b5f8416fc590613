from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reid_core.data import PKBatchSampler, PKSampler


def _labels(n_ids=10, per_id=(1, 12), outliers=15, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(rng.integers(*per_id), i) for i in range(n_ids)] + [np.full(outliers, -1)])
    return rng.permutation(labels)


def _batches(s):
    flat = list(s)
    assert len(flat) == len(s)
    return [flat[i:i + s.batch_size] for i in range(0, len(flat), s.batch_size)]


@pytest.mark.parametrize("with_cams", [False, True])
def test_every_batch_is_p_distinct_ids_times_k(with_cams):
    labels = _labels()
    camids = np.random.default_rng(1).integers(0, 4, size=len(labels)) if with_cams else None
    s = PKSampler(labels, camids, p=4, k=3, num_iterations=25, seed=0)
    batches = _batches(s)
    assert len(batches) == 25 and s.batch_size == 12 and len(s) == 300
    for b in batches:
        lab = labels[b]
        assert (lab >= 0).all()
        groups = [lab[i * 3:(i + 1) * 3] for i in range(4)]
        assert all(len(set(g)) == 1 for g in groups)  # contiguous K-blocks of one identity
        assert len({g[0] for g in groups}) == 4  # P distinct identities
        # replacement only when an identity has fewer than K images
        for g_idx in range(4):
            block = b[g_idx * 3:(g_idx + 1) * 3]
            n_avail = (labels == labels[block[0]]).sum()
            assert len(set(block)) == min(3, n_avail)


def test_identities_cycle_evenly():
    labels = np.repeat(np.arange(10), 5)
    s = PKSampler(labels, p=3, k=2, num_iterations=20, seed=5)
    counts = Counter(labels[i] for i in list(s)[::2])
    assert sorted(counts) == list(range(10))
    assert max(counts.values()) - min(counts.values()) <= 1  # 60 draws over 10 ids: each 6 +- 1


def test_default_iterations_and_batch_sampler_with_dataloader():
    labels = np.repeat(np.arange(9), 4)

    class Idx(Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return i

    bs = PKBatchSampler(labels, p=4, k=2, seed=0)
    assert len(bs) == 2 and bs.batch_size == 8  # default: n_ids // p
    got = [b.tolist() for b in DataLoader(Idx(), batch_sampler=bs)]
    assert got == list(bs.sampler.batches()) and all(len(b) == 8 for b in got)
    s = PKSampler(labels, p=4, k=2, seed=0)
    flat = [b.tolist() for b in DataLoader(Idx(), sampler=s, batch_size=s.batch_size)]
    assert flat == got


def _cross_cam_fraction(batches, labels, camids, k):
    cross = total = 0
    for b in batches:
        for g in range(len(b) // k):
            block = b[g * k:(g + 1) * k]
            anchor = camids[block[0]]
            cross += sum(camids[i] != anchor for i in block[1:])
            total += k - 1
    return cross / total


def test_camera_preference_beats_random():
    # every identity: 10 images in camera 0, one each in cameras 1, 2, 3
    labels = np.repeat(np.arange(8), 13)
    camids = np.tile(np.array([0] * 10 + [1, 2, 3]), 8)
    k = 4
    with_cam = _batches(PKSampler(labels, camids, p=4, k=k, num_iterations=200, seed=0))
    no_cam = _batches(PKSampler(labels, None, p=4, k=k, num_iterations=200, seed=0))
    f_cam = _cross_cam_fraction(with_cam, labels, camids, k)
    f_rand = _cross_cam_fraction(no_cam, labels, camids, k)
    # with preference every identity has >= 3 images outside any anchor's camera (anchor in cam 0:
    # the three singles; anchor in cam 1-3: 12 images), so all K-1 others are cross-camera
    assert f_cam == 1.0
    # random K distinct images: P(other != first) = 1 - (10*9 + 0)/(13*12) = 0.423...
    assert f_rand == pytest.approx(1 - 90 / 156, abs=0.05)


def test_camera_preference_falls_back_to_same_camera_and_repeats():
    labels = np.array([0, 0, 0, 1])
    camids = np.array([2, 2, 5, 1])
    s = PKSampler(labels, camids, p=2, k=5, num_iterations=30, seed=3)
    for b in _batches(s):
        for g in range(2):
            block = b[g * 5:(g + 1) * 5]
            if labels[block[0]] == 0:
                assert set(block[:3]) == {0, 1, 2}  # all distinct images before any repeat
                if camids[block[0]] == 2:
                    assert block[1] == 2  # the other-camera image comes first
            else:
                assert block == [3] * 5  # single image identity repeated


def test_determinism_and_set_epoch():
    labels = _labels(seed=4)
    camids = np.arange(len(labels)) % 3
    a = PKSampler(labels, camids, p=3, k=4, num_iterations=10, seed=7)
    b = PKSampler(labels, camids, p=3, k=4, num_iterations=10, seed=7)
    assert list(a) == list(b) == list(a)  # same stream when re-iterated in the same epoch
    assert list(PKSampler(labels, camids, p=3, k=4, num_iterations=10, seed=8)) != list(a)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    b.set_epoch(1)
    assert list(a) == list(b)
    np.random.seed(123)
    torch.manual_seed(123)  # global RNGs are not used
    assert list(b) == list(a)


def test_fewer_identities_than_p_uses_all():
    labels = np.array([-1, 4, 4, -1, 9])
    s = PKSampler(labels, p=16, k=3, seed=0)
    assert s.p_eff == 2 and s.batch_size == 6 and s.num_iterations == 1 and len(s) == 6
    b = list(s)
    assert sorted(labels[b].tolist()) == [4, 4, 4, 9, 9, 9]
    one = PKSampler(np.array([7]), p=4, k=2)
    assert list(one) == [0, 0]


def test_tensor_inputs_and_errors():
    assert len(PKSampler(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), p=2, k=2)) == 4
    with pytest.raises(ValueError, match="no sample with a label"):
        PKSampler(np.array([-1, -1]))
    with pytest.raises(ValueError, match="no sample with a label"):
        PKSampler(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="camids"):
        PKSampler(np.array([0, 1]), camids=np.array([0]))
    with pytest.raises(ValueError, match="p, k"):
        PKSampler(np.array([0, 1]), p=0)
    with pytest.raises(ValueError, match="integers"):
        PKSampler(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="num_iterations"):
        PKSampler(np.array([0, 1]), num_iterations=0)
