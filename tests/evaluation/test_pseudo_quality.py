"""Pseudo-label quality against naive O(n^2) pair loops and entropy sums written from the definitions."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from reid_core.evaluation import pair_counts, pseudo_label_quality


def naive_pairs(pred, gt):
    """(tp, fp, fn, tn) over all unordered pairs; pred None = outlier (in no cluster)."""
    tp = fp = fn = tn = 0
    n = len(pred)
    for i in range(n):
        for j in range(i + 1, n):
            same_pred = pred[i] is not None and pred[i] == pred[j]
            same_gt = gt[i] == gt[j]
            if same_pred and same_gt:
                tp += 1
            elif same_pred:
                fp += 1
            elif same_gt:
                fn += 1
            else:
                tn += 1
    return tp, fp, fn, tn


def naive_ari(pred, gt):
    tp, fp, fn, tn = naive_pairs(pred, gt)
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def naive_nmi(u, v):
    """MI / mean(H(u), H(v)) with natural logs (arithmetic normalisation)."""
    n = len(u)
    cu, cv, cuv = Counter(u), Counter(v), Counter(zip(u, v))
    mi = sum(c / n * math.log((c / n) / ((cu[a] / n) * (cv[b] / n))) for (a, b), c in cuv.items())
    hu = -sum(c / n * math.log(c / n) for c in cu.values())
    hv = -sum(c / n * math.log(c / n) for c in cv.values())
    return mi / ((hu + hv) / 2)


def singletons(labels):
    return [("out", i) if l == -1 else l for i, l in enumerate(labels)]


@pytest.mark.parametrize("seed", range(5))
def test_random_against_naive(seed):
    rng = np.random.default_rng(seed)
    n = 120
    gt = rng.integers(0, 10, n)
    labels = np.where(rng.random(n) < 0.7, gt % 6, rng.integers(0, 6, n))  # correlated with gt
    labels[rng.random(n) < 0.2] = -1
    out = pseudo_label_quality(labels, gt)
    lab, g = labels.tolist(), gt.tolist()

    assert out["n_outliers"] == int((labels == -1).sum())
    assert out["n_clusters"] == len(set(lab) - {-1})
    assert out["n_samples"] == n and out["n_scored"] == n
    assert out["coverage"] == pytest.approx(1 - out["n_outliers"] / n)

    tp, fp, fn, _ = naive_pairs([None if l == -1 else l for l in lab], g)
    assert out["pair_precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
    assert out["pair_recall"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert out["pair_f"] == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    pc = pair_counts(labels, gt)
    assert (pc["tp"], pc["pred_pairs"], pc["true_pairs"]) == (tp, tp + fp, tp + fn)

    # main keys: outliers as singletons, over all samples
    s = singletons(lab)
    assert out["ari"] == pytest.approx(naive_ari(s, g), abs=1e-10)
    assert out["nmi"] == pytest.approx(naive_nmi(s, g), abs=1e-10)
    # *_clustered: non-outliers only
    keep = [i for i in range(n) if lab[i] != -1]
    assert out["ari_clustered"] == pytest.approx(naive_ari([lab[i] for i in keep], [g[i] for i in keep]), abs=1e-10)
    assert out["nmi_clustered"] == pytest.approx(naive_nmi([lab[i] for i in keep], [g[i] for i in keep]), abs=1e-10)
    assert out["ari"] != pytest.approx(out["ari_clustered"])  # the two variants differ


def test_perfect_labelling():
    gt = np.repeat(np.arange(5), 4) + 100
    labels = np.repeat(np.arange(5)[::-1], 4)  # same partition, other names
    out = pseudo_label_quality(labels, gt)
    for key in ("nmi", "ari", "nmi_clustered", "ari_clustered", "pair_precision", "pair_recall", "pair_f"):
        assert out[key] == pytest.approx(1.0), key


def test_all_outliers_returns_nan_with_counts():
    out = pseudo_label_quality(np.full(10, -1), np.arange(10) % 3)
    assert out["n_clusters"] == 0 and out["n_outliers"] == 10 and out["coverage"] == 0.0
    for key in ("nmi", "ari", "nmi_clustered", "ari_clustered", "pair_precision", "pair_recall", "pair_f"):
        assert math.isnan(out[key]), key


def test_one_cluster():
    gt = np.array([0, 0, 1, 1, 1, 2])
    out = pseudo_label_quality(np.zeros(6, dtype=int), gt)
    tp, fp, fn, _ = naive_pairs([0] * 6, gt.tolist())
    assert out["n_clusters"] == 1 and out["n_outliers"] == 0
    assert out["pair_recall"] == 1.0
    assert out["pair_precision"] == pytest.approx(tp / (tp + fp)) == pytest.approx(4 / 15)
    assert out["ari"] == pytest.approx(0.0, abs=1e-12)
    assert out["nmi"] == pytest.approx(0.0, abs=1e-12)


def test_gt_with_one_identity():
    gt = np.full(8, 7)
    out = pseudo_label_quality(np.array([0, 0, 0, 1, 1, -1, -1, 1]), gt)
    assert out["pair_precision"] == 1.0
    assert out["pair_recall"] == pytest.approx((3 + 3) / 28)
    assert out["ari"] == pytest.approx(0.0, abs=1e-12)
    # one identity, one cluster, no outliers: identical partitions (sklearn convention: 1.0)
    out = pseudo_label_quality(np.zeros(4, dtype=int), np.full(4, 3))
    assert out["nmi"] == 1.0 and out["ari"] == 1.0 and out["pair_f"] == 1.0


def test_singleton_clusters_have_no_predicted_pairs():
    out = pseudo_label_quality(np.arange(6), np.array([0, 0, 1, 1, 2, 2]))
    assert math.isnan(out["pair_precision"]) and out["pair_recall"] == 0.0 and math.isnan(out["pair_f"])


def test_unknown_gt_is_left_out():
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 5, 60)
    labels = rng.integers(-1, 4, 60)
    gt_unknown = gt.copy()
    gt_unknown[:15] = -1
    out = pseudo_label_quality(labels, gt_unknown)
    sub = pseudo_label_quality(labels[15:], gt[15:])
    assert out["n_samples"] == 60 and out["n_scored"] == 45
    assert out["n_outliers"] == int((labels == -1).sum())  # counts describe the whole labelling
    for key in ("nmi", "ari", "pair_precision", "pair_recall", "pair_f", "coverage"):
        assert out[key] == sub[key], key
    # pandas nullable ground truth: NA counts as unknown
    gt_na = pd.Series(gt, dtype="Int64")
    gt_na[:15] = pd.NA
    assert pseudo_label_quality(pd.Series(labels), gt_na)["ari"] == out["ari"]


def test_bad_input():
    with pytest.raises(ValueError, match="gt_pids"):
        pseudo_label_quality([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        pseudo_label_quality([0, -2, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="labels"):
        pseudo_label_quality([[0, 1]], [[0, 1]])
    with pytest.raises(ValueError, match="labels"):
        pseudo_label_quality([0.5, 1.0], [0, 1])
