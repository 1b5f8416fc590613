"""k-reciprocal re-ranking for evaluation (Zhong et al., CVPR 2017), without N x N matrices.

Definition (what :func:`re_ranking` computes)
---------------------------------------------
All ``N = Nq + Ng`` query and gallery samples form one set, as in Zhong et al.'s code.

* ``d(i, j) = ||x_i - x_j||^2`` on L2-normalised features (``2 - 2 cos``), then normalised per
  row by its largest value over **all** N samples: ``dn(i, j) = d(i, j) / max_l d(i, l)``
  (Zhong et al. divide by the column maximum and transpose, which for a symmetric matrix is
  the same). Some re-implementations square Euclidean distances once more before this; we do
  not: the input distance is the squared Euclidean one, used once.
* Rankings over all N samples (self first). k-reciprocal sets use ``k1 + 1`` entries (self
  included) and the expansion sets ``round(k1/2) + 1``, as in the original code; the expansion,
  Gaussian encoding (``exp(-dn)`` normalised over the expanded set), query expansion over the
  ``k2`` first entries and Jaccard distance are those of :mod:`reid_core.cluster.jaccard`.
* ``final(q, g) = (1 - lambda) * J(q, g) + lambda * dn(q, g)`` for queries ``q`` and gallery ``g``.

Memory: the neighbour search is chunked and the encodings are sparse, so apart from the
returned dense ``(Nq, Ng)`` matrix nothing grows as ``N^2``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reid_core.cluster.jaccard import jaccard_from_encoding, k_reciprocal_encoding
from reid_core.cluster.knn import knn_search, normalize_features
from reid_core.device import pick_device

__all__ = ["re_ranking"]


def re_ranking(
    q_feat: Any,
    g_feat: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    device: str = "cpu",
    chunk_size: int = 1024,
    progress: bool = False,
) -> np.ndarray:
    """Re-ranked query-gallery distance matrix ``(Nq, Ng)`` float32 (smaller = more similar).

    ``q_feat`` (Nq, D), ``g_feat`` (Ng, D): features (L2-normalised here). ``k1``, ``k2``,
    ``lambda_value`` as in Zhong et al. (defaults 20, 6, 0.3). ``lambda_value=1`` returns the
    normalised original distance, ``0`` the pure Jaccard distance.
    """
    q = normalize_features(q_feat, "q_feat")
    g = normalize_features(g_feat, "g_feat")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feat and g_feat have different dimensions: {q.shape[1]} vs {g.shape[1]}")
    k1, k2 = int(k1), int(k2)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    lam = float(lambda_value)
    nq = q.shape[0]
    x = np.concatenate([q, g], axis=0)
    n = x.shape[0]
    m1 = min(k1 + 1, n)
    m2 = min(int(np.around(k1 / 2)) + 1, m1)
    kq = min(k2, n)
    knn = knn_search(x, max(m1, m2, kq), "exact", chunk_size=chunk_size, device=device,
                     return_row_max=True, progress=progress)
    row_max = knn.row_max.astype(np.float64)
    scale = np.where(row_max > 0, 1.0 / np.where(row_max > 0, row_max, 1.0), 1.0)
    v = k_reciprocal_encoding(knn, x, m1, m2, kq, row_scale=scale)
    jac = jaccard_from_encoding(v[:nq], v[nq:], progress=progress)
    out = np.ones((nq, n - nq), dtype=np.float32)
    coo = jac.tocoo()
    out[coo.row, coo.col] = coo.data
    out *= 1.0 - lam
    # original distance, normalised by the query row's maximum over all N samples
    dev = pick_device(device)
    gt = torch.from_numpy(g).to(dev)
    with torch.no_grad():
        for s in range(0, nq, chunk_size):
            qt = torch.from_numpy(q[s : s + chunk_size]).to(dev)
            d = torch.clamp(2.0 - 2.0 * (qt @ gt.T), min=0.0).cpu().numpy().astype(np.float64)
            out[s : s + len(d)] += (lam * d * scale[s : s + len(d), None]).astype(np.float32)
    return out
