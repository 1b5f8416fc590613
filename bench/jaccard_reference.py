"""The Cluster-Contrast Jaccard distance as its reference code computes it: the yardstick of
``bench/jaccard.py --vs-reference``.

Written here from the algorithm (Zhong et al., CVPR 2017, as Cluster-Contrast applies it to
pseudo-labelling), keeping the reference's data layout and loop structure, since those are what
cost time and memory:

1. exact k-NN of every row (``k1`` neighbours, itself included) with faiss ``IndexFlatL2`` on the
   CPU (or torch fp32 products when faiss is missing);
2. for each row, its k-reciprocal set at ``k1`` and, for every member, the member's set at
   ``round(k1 / 2)``; members whose set overlaps the row's by more than 2/3 of its size expand it;
3. a dense ``N x N`` float32 matrix ``V``: row ``i`` holds the softmax of ``-d(i, j)`` over the
   expanded set, ``d = 2 - 2 x_i . x_j``;
4. query expansion: row ``i`` of a second dense ``V`` is the mean of the rows of its ``k2``
   nearest neighbours;
5. an inverted index (for each column, the rows where ``V`` is non-zero) and, row by row, the sum
   of ``min(V[i, j], V[k, j])`` over shared columns, giving a dense ``N x N`` Jaccard matrix
   ``1 - m / (2 - m)``.

It returns the dense float32 matrix (the diagonal is ~0). Memory: three ``N x N`` float32 arrays
at once (about 2 GB at N = 12,936), which is why it is the baseline for memory too.
"""
from __future__ import annotations

import numpy as np


def _knn_rank(x: np.ndarray, k: int) -> np.ndarray:
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        _, rank = index.search(x, k)
        return rank.astype(np.int64)
    import torch

    xt = torch.from_numpy(x)
    rank = np.empty((len(x), k), dtype=np.int64)
    for s in range(0, len(x), 1024):
        sim = xt[s : s + 1024] @ xt.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = float("inf")
        rank[s : s + 1024] = torch.topk(sim, k, dim=1).indices.numpy()
    return rank


def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    hits = np.where(backward == i)[0]
    return forward[hits]


def reference_jaccard(features: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense (N, N) float32 Jaccard distance of the rows of ``features`` (L2-normalised here)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = x.shape[0]
    rank = _knn_rank(x, k1)
    half = int(np.around(k1 / 2))
    nn_k1 = [_reciprocal(rank, i, k1) for i in range(n)]
    nn_half = [_reciprocal(rank, i, half) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        recip = nn_k1[i]
        expansion = recip
        for c in recip:
            cand = nn_half[c]
            if len(np.intersect1d(cand, recip)) > 2.0 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        dist = 2.0 - 2.0 * (x[expansion] @ x[i])
        w = np.exp(-(dist - dist.min()))  # softmax of -dist (shifted for stability; same values)
        v[i, expansion] = w / w.sum()
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(axis=0)
        v = v_qe
        del v_qe
    inv_index = [np.where(v[:, j] != 0)[0] for j in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        m = np.zeros(n, dtype=np.float32)
        cols = np.where(v[i] != 0)[0]
        for j in cols:
            rows = inv_index[j]
            m[rows] += np.minimum(v[i, j], v[rows, j])
        jac[i] = 1.0 - m / (2.0 - m)
    np.clip(jac, 0.0, 1.0, out=jac)
    return jac
