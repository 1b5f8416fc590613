"""Quality of pseudo-labels (clusters) against ground-truth identities.

Conventions
-----------
* ``labels``: cluster ids ``>= 0``; ``-1`` = outlier (not clustered). Other negative values are an error.
* ``gt_pids``: ground-truth identity; ``-1`` (or NaN / missing) = unknown. Samples with unknown
  ground truth are left out of every *quality* metric (they are still counted in ``n_clusters``,
  ``n_outliers`` and ``n_samples``, which describe the labelling itself).

Outlier policy
--------------
* ``nmi`` / ``ari`` (main keys): computed on **all** samples with known ground truth, each outlier
  being its own singleton cluster. This scores the whole training set, so a labelling cannot look
  good by throwing hard samples away.
* ``nmi_clustered`` / ``ari_clustered``: computed on the non-outlier samples only (how clean the
  clusters that are used for training are).
* Pair counts: a pair of samples is *predicted positive* when both are in the same (non-outlier)
  cluster, *true* when both have the same ground-truth id. ``pair_precision = TP / predicted``,
  ``pair_recall = TP / true`` (true pairs among all scored samples, outliers included, so
  discarding samples lowers recall), ``pair_f`` = harmonic mean. Computed from the contingency
  table: ``TP = sum_ij C(n_ij, 2)`` over clusters i and identities j.
* If no scored sample is clustered (all outliers) every quality metric is ``nan`` (there are no
  clusters to score; the singleton NMI of an all-outlier labelling would be high and misleading).
  A ratio with an empty denominator is ``nan``; ``pair_f`` is ``nan`` when precision or recall is.

sklearn's ``normalized_mutual_info_score`` (arithmetic mean normalisation) and
``adjusted_rand_score`` compute NMI and ARI.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = ["pseudo_label_quality", "pair_counts"]


def _labels_array(labels: Any) -> np.ndarray:
    if isinstance(labels, (pd.Series, pd.Index)):
        if labels.isna().any():
            raise ValueError("labels has missing values; use -1 for outliers")
        labels = labels.to_numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise ValueError("labels must be integer cluster ids (-1 = outlier)")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise ValueError(f"labels must be integer cluster ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < -1:
        raise ValueError(f"labels must be >= -1 (-1 = outlier), found {int(arr.min())}")
    return arr


def _gt_array(gt_pids: Any, n: int) -> np.ndarray:
    if isinstance(gt_pids, (pd.Series, pd.Index)):
        gt_pids = gt_pids.astype("Float64").fillna(-1).to_numpy(dtype=np.float64)
    arr = np.asarray(gt_pids)
    if arr.ndim != 1:
        raise ValueError(f"gt_pids must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"gt_pids has length {arr.shape[0]}, but labels has length {n}")
    if arr.dtype.kind == "f":
        arr = np.where(np.isnan(arr), -1, arr)
        if not np.all(arr == np.round(arr)):
            raise ValueError("gt_pids must be integer identities (-1 = unknown)")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise ValueError(f"gt_pids must be integer identities, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _comb2(n: np.ndarray) -> float:
    n = n.astype(np.float64)
    return float((n * (n - 1.0) / 2.0).sum())


def pair_counts(labels: Any, gt_pids: Any) -> dict:
    """Pair counts ``tp``, ``pred_pairs``, ``true_pairs`` (outliers ``-1`` form no predicted pair).

    All samples given are scored (filter unknown ground truth beforehand). Vectorised through the
    contingency table of (cluster, identity) counts.
    """
    labels = _labels_array(labels)
    gt = _gt_array(gt_pids, labels.size)
    _, gt_code, gt_sizes = np.unique(gt, return_inverse=True, return_counts=True)
    clustered = labels >= 0
    _, cluster_sizes = np.unique(labels[clustered], return_counts=True)
    # one int64 code per (cluster, identity) cell of the contingency table
    cell_code = labels[clustered] * max(len(gt_sizes), 1) + gt_code.reshape(-1)[clustered]
    _, cell = np.unique(cell_code, return_counts=True)
    return {"tp": _comb2(cell), "pred_pairs": _comb2(cluster_sizes), "true_pairs": _comb2(gt_sizes)}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def pseudo_label_quality(labels: Any, gt_pids: Any) -> dict:
    """Compare pseudo-labels with ground truth (see the module docstring for every convention).

    Returns ``nmi``, ``ari`` (outliers as singletons), ``nmi_clustered``, ``ari_clustered``
    (non-outliers only), ``pair_precision``, ``pair_recall``, ``pair_f`` (floats, ``nan`` when
    undefined), ``n_clusters``, ``n_outliers``, ``n_samples`` (whole labelling), ``n_scored``
    (samples with known ground truth) and ``coverage`` (fraction of scored samples clustered).
    """
    labels = _labels_array(labels)
    gt = _gt_array(gt_pids, labels.size)
    out: dict[str, Any] = {
        "n_clusters": int(np.unique(labels[labels >= 0]).size),
        "n_outliers": int((labels == -1).sum()),
        "n_samples": int(labels.size),
    }
    known = gt != -1
    lab, gt = labels[known], gt[known]
    clustered = lab >= 0
    n_scored = int(lab.size)
    out["n_scored"] = n_scored
    out["coverage"] = float(clustered.mean()) if n_scored else float("nan")
    nan = float("nan")
    if not clustered.any():
        out.update(nmi=nan, ari=nan, nmi_clustered=nan, ari_clustered=nan,
                   pair_precision=nan, pair_recall=nan, pair_f=nan)
        return out

    singleton = lab.copy()
    n_out = int((~clustered).sum())
    singleton[~clustered] = lab.max() + 1 + np.arange(n_out)
    out["nmi"] = float(normalized_mutual_info_score(gt, singleton))
    out["ari"] = float(adjusted_rand_score(gt, singleton))
    out["nmi_clustered"] = float(normalized_mutual_info_score(gt[clustered], lab[clustered]))
    out["ari_clustered"] = float(adjusted_rand_score(gt[clustered], lab[clustered]))

    pc = pair_counts(lab, gt)
    p = _ratio(pc["tp"], pc["pred_pairs"])
    r = _ratio(pc["tp"], pc["true_pairs"])
    if np.isnan(p) or np.isnan(r):
        f = nan
    elif p + r == 0:
        f = 0.0
    else:
        f = 2 * p * r / (p + r)
    out.update(pair_precision=p, pair_recall=r, pair_f=f)
    return out
