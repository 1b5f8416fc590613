"""Sparse k-reciprocal Jaccard distance (Zhong et al., CVPR 2017), as Cluster-Contrast uses it.

Definition (what :func:`compute_jaccard_distance` computes)
-----------------------------------------------------------
``d(i, j) = ||x_i - x_j||^2`` on L2-normalised features (``2 - 2 cos``). ``F(i, m)`` is the list of
the ``m`` nearest samples of ``i``, ``i`` itself first (see :mod:`reid_core.cluster.knn`).

1. k-reciprocal set: ``R(i, m) = {j in F(i, m) : i in F(j, m)}``.
2. Expansion: ``E(i) = R(i, m1)`` united with every ``R(c, m2)``, ``c in R(i, m1)``, for which
   ``|R(c, m2) & R(i, m1)| > 2/3 |R(c, m2)|`` (tested exactly as ``3 * overlap > 2 * size``).
3. Gaussian encoding: ``V[i, j] = exp(-d(i, j)) / sum_{l in E(i)} exp(-d(i, l))`` for ``j in E(i)``,
   else 0 (a softmax of ``-d`` over the expanded set). Each row sums to 1.
4. Query expansion: ``V_qe[i] = mean of V[l]`` over the ``k2`` first entries of ``F(i)`` (``i``
   included). Rows still sum to 1.
5. Jaccard distance ``J(i, k) = 1 - sum_j min(V_qe[i,j], V_qe[k,j]) / sum_j max(V_qe[i,j], V_qe[k,j])``.
   Because ``min + max = a + b`` and every row sums to 1, ``sum max = 2 - sum min``, so
   ``J = 1 - m / (2 - m)`` with ``m = sum_j min(...)``: the form Cluster-Contrast computes
   (the test suite checks both forms against each other). Values are clipped to ``[0, 1]``
   and the diagonal is exactly 0.

List lengths (kept identical to the reference code so published ``eps`` values keep their meaning):
Cluster-Contrast searches ``k1`` neighbours (self included) and then slices ``[:k1 + 1]`` and
``[:round(k1 / 2) + 1]``; the first slice is cut short by the array width, so
``m1 = k1`` and ``m2 = round(k1 / 2) + 1`` (``np.around``: halves to even). Zhong et al.'s
re-ranking ranks all samples, so there ``m1 = k1 + 1``; :mod:`reid_core.evaluation.rerank`
uses that.

Sparse implementation
---------------------
Only the k-neighbourhoods are ever non-zero, so every step works on index lists:

* reciprocity and the 2/3 overlap test are membership tests of ``i * N + j`` keys in sorted key
  arrays (``np.searchsorted``), all pairs at once;
* ``V`` is a CSR matrix with ``|E(i)|`` entries per row (distances looked up in the k-NN table,
  recomputed from the features only for expansion members outside it);
* ``V_qe = A @ V / k2`` with ``A`` the sparse k2-NN indicator;
* ``sum_j min`` is non-zero only for pairs of rows sharing a column: an inverted index (the CSC
  form of ``V_qe``) expands every entry ``(i, j, a)`` into the entries ``(k, j, b)`` of column
  ``j`` and sums ``min(a, b)`` per ``(i, k)``. Two kernels compute exactly that: a numba loop
  (default when numba is importable; one length-N accumulator per thread, row blocks in
  parallel threads, compiled once and cached on disk) and a pure-numpy one (``np.bincount``
  into a block-sized accumulator, blocks sized by work). The work is ``sum_j |column j|^2``.
  Workspace is bounded; the stored output is every overlapping pair, which for structured
  features is ``O(N * k^2)`` but for unstructured ones (random vectors: about 80 % of all
  pairs at N = 12,936) approaches ``N^2``: pass ``max_distance`` (DBSCAN's ``eps``) to store only
  the pairs that can matter.
* with ``max_distance`` (the clustering case) a third kernel, :func:`pair_once_jaccard`, visits
  every unordered pair once and skips partners that cannot reach the cut-off (prefix bound on
  row weights), then mirrors the result: same output, 3-4x less CPU on random data.
* with numba, steps 2-3 run as one compiled pass per row (:func:`reid_core.cluster.kernels.encoding_kernel`).

Output
------
``scipy.sparse.csr_matrix`` (N, N), float32, sorted indices. Stored entries are the pairs whose
encodings overlap (``m > 0``); the diagonal is stored as an **explicit 0**. Pairs that are not
stored have distance 1. ``sklearn.cluster.DBSCAN(metric="precomputed")`` treats only stored
entries as neighbour candidates, which is exactly right for ``eps < 1``. Beware of scipy
operations that drop explicit zeros (``eliminate_zeros``, arithmetic such as ``dist * 1``):
use :func:`sparse_distance_to_dense` or the matrix as returned.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .kernels import encoding_kernel, numba_available
from .knn import KnnResult, knn_search, normalize_features, pair_similarities

__all__ = [
    "compute_jaccard_distance",
    "k_reciprocal_encoding",
    "jaccard_from_encoding",
    "reciprocal_sets",
    "sparse_distance_to_dense",
    "pair_once_jaccard",
    "cutoff_overlap",
    "JACCARD_BACKENDS",
]


def _ranges(indptr: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR rows ``sel``: (owner, pos) with ``pos`` every storage position of those rows
    (in order) and ``owner[t]`` the index into ``sel`` that position belongs to."""
    starts = indptr[sel]
    counts = indptr[sel + 1] - starts
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(sel), dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    pos = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, counts)
    return owner, pos


def _isin_sorted(needles: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(needles), dtype=bool)
    pos = np.searchsorted(sorted_keys, needles)
    np.minimum(pos, len(sorted_keys) - 1, out=pos)
    return sorted_keys[pos] == needles


def reciprocal_sets(knn_idx: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal sets ``R(i, m)`` of every row as CSR ``(indptr, indices)`` (rank order kept)."""
    n = knn_idx.shape[0]
    f = np.ascontiguousarray(knn_idx[:, :m], dtype=np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), f.shape[1])
    cols = f.ravel()
    forward = np.sort(rows * n + cols)
    mask = _isin_sorted(cols * n + rows, forward)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[mask], minlength=n), out=indptr[1:])
    return indptr, cols[mask]


def k_reciprocal_encoding(
    knn: KnnResult,
    features: np.ndarray,
    m1: int,
    m2: int,
    k2: int,
    row_scale: np.ndarray | None = None,
    backend: str = "auto",
    n_threads: int | None = None,
) -> sp.csr_matrix:
    """Steps 1-4 of the module docstring: the query-expanded encoding ``V_qe`` (CSR, float32).

    ``backend``: ``"numba"`` (steps 2-3 in one compiled pass per row), ``"numpy"`` (vectorised
    key arrays), ``"auto"`` (numba when installed).

    ``knn`` must hold at least ``max(m1, m2, k2)`` neighbours per row; ``features`` are the
    L2-normalised rows (used for distances to expansion members outside the k-NN lists).
    ``row_scale`` (optional, (N,)) multiplies row ``i``'s distances before ``exp(-d)`` (the
    re-ranking normalisation by the row maximum).
    """
    idx, dist = knn.indices, knn.distances
    n, width = idx.shape
    if max(m1, m2, k2) > width:
        raise ValueError(f"k-NN lists have {width} entries, need {max(m1, m2, k2)}")
    if not (1 <= m2 <= m1):
        raise ValueError(f"need 1 <= m2 <= m1, got m1={m1}, m2={m2}")
    # 1. reciprocal sets at both levels
    p1, r1 = reciprocal_sets(idx, m1)
    p2, r2 = reciprocal_sets(idx, m2)
    kernel = encoding_kernel() if backend in ("auto", "numba") else None
    if backend == "numba" and kernel is None:
        raise ImportError("backend='numba' needs the numba package")
    if kernel is not None:
        # 2.-3. one compiled pass per row (row blocks in threads)
        v = _encoding_numba(kernel, idx, dist, features, p1, r1, p2, r2, row_scale, n_threads)
        return _query_expand(v, idx, k2)
    pi = np.repeat(np.arange(n, dtype=np.int64), np.diff(p1))  # pairs (i, c), c in R(i, m1)
    pc = r1
    keys1 = np.sort(pi * n + pc)
    # 2. overlap |R(c, m2) & R(i, m1)| for every pair, and the expansion
    owner, pos = _ranges(p2, pc)
    members = r2[pos]
    cand = pi[owner] * n + members
    overlap = np.bincount(owner, weights=_isin_sorted(cand, keys1), minlength=len(pc))
    size2 = np.diff(p2)[pc]
    accept = 3 * overlap > 2 * size2
    ekeys = np.unique(np.concatenate([keys1, cand[accept[owner]]]))
    del owner, pos, members, cand
    erows = ekeys // n
    ecols = ekeys % n
    # 3. distances: from the k-NN table where possible, else from the features
    kkeys = (np.arange(n, dtype=np.int64)[:, None] * n + idx).ravel()
    order = np.argsort(kkeys, kind="stable")
    kkeys_sorted = kkeys[order]
    kd = dist.ravel()[order]
    loc = np.searchsorted(kkeys_sorted, ekeys)
    np.minimum(loc, len(kkeys_sorted) - 1, out=loc)
    found = kkeys_sorted[loc] == ekeys
    d = np.empty(len(ekeys), dtype=np.float64)
    d[found] = kd[loc[found]]
    miss = ~found
    if miss.any():
        sims = pair_similarities(features, erows[miss], ecols[miss]).astype(np.float64)
        d[miss] = np.maximum(2.0 - 2.0 * sims, 0.0)
    if row_scale is not None:
        d *= np.asarray(row_scale, dtype=np.float64)[erows]
    w = np.exp(-d)
    w /= np.bincount(erows, weights=w, minlength=n)[erows]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(erows, minlength=n), out=indptr[1:])
    v = sp.csr_matrix((w, ecols, indptr), shape=(n, n))
    return _query_expand(v, idx, k2)


def _encoding_numba(kernel, idx, dist, features, p1, r1, p2, r2, row_scale, n_threads):
    import os
    from concurrent.futures import ThreadPoolExecutor

    n = idx.shape[0]
    x = np.ascontiguousarray(features, dtype=np.float32)
    has_scale = row_scale is not None
    scale = np.asarray(row_scale, dtype=np.float64) if has_scale else np.ones(1)
    n_threads = n_threads or max(1, min(os.cpu_count() or 1, 32))
    edges = np.linspace(0, n, max(1, min(n, 4 * n_threads)) + 1).astype(np.int64)
    ix = np.ascontiguousarray(idx, dtype=np.int64)
    dd = np.ascontiguousarray(dist, dtype=np.float32)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        parts = list(pool.map(lambda b: kernel(edges[b], edges[b + 1], ix, dd, x, p1, r1, p2, r2, scale, has_scale),
                              range(len(edges) - 1)))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate([p[0] for p in parts]), out=indptr[1:])
    cols = np.concatenate([p[1] for p in parts])
    w = np.concatenate([p[2] for p in parts])
    return sp.csr_matrix((w, cols, indptr), shape=(n, n))


def _query_expand(v: sp.csr_matrix, idx: np.ndarray, k2: int) -> sp.csr_matrix:
    """Step 4: ``V_qe = A @ V / k2`` (mean over the k2 first neighbours), float32 CSR, sorted."""
    n = v.shape[0]
    if k2 > 1:
        a_cols = np.ascontiguousarray(idx[:, :k2]).ravel()
        a_ptr = np.arange(0, n * k2 + 1, k2, dtype=np.int64)
        a = sp.csr_matrix((np.full(n * k2, 1.0 / k2), a_cols, a_ptr), shape=(n, n))
        v = a @ v
    v = v.tocsr()
    v.sort_indices()
    return sp.csr_matrix((v.data.astype(np.float32), v.indices, v.indptr), shape=(n, n))


#: kernels of :func:`jaccard_from_encoding`
JACCARD_BACKENDS = ("auto", "pair-once", "numba", "numpy")

# ----------------------------------------------------------------------------- compiled kernel
_NUMBA_KERNEL = None


def _numba_kernel():
    """The inverted-index min-sum loop compiled with numba (``nogil``, so row blocks run in
    parallel threads); ``None`` when numba is not installed (the numpy path is used)."""
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is not None:
        return _NUMBA_KERNEL or None
    try:
        import numba
    except ImportError:  # pragma: no cover - numba comes with pynndescent
        _NUMBA_KERNEL = False
        return None

    @numba.njit(nogil=True, cache=True)
    def kernel(r0, r1, a_ptr, a_idx, a_val, c_ptr, c_idx, c_val, nb, max_dist, square):  # pragma: no cover - compiled
        acc = np.zeros(nb, dtype=np.float64)
        seen = np.zeros(nb, dtype=np.bool_)
        touched = np.empty(nb, dtype=np.int64)
        cap = max(1024, (r1 - r0) * 64)
        out_cols = np.empty(cap, dtype=np.int32)
        out_vals = np.empty(cap, dtype=np.float32)
        counts = np.zeros(r1 - r0, dtype=np.int64)
        pos = 0
        for i in range(r0, r1):
            nt = 0
            for p in range(a_ptr[i], a_ptr[i + 1]):
                j = a_idx[p]
                a = a_val[p]
                for q in range(c_ptr[j], c_ptr[j + 1]):
                    k = c_idx[q]
                    if not seen[k]:
                        seen[k] = True
                        touched[nt] = k
                        nt += 1
                    b = c_val[q]
                    acc[k] += a if a < b else b
            start = pos
            # emit in column order: scan the dense accumulator when most columns were touched,
            # else sort the touched list (both cheaper than sorting the output)
            if nt * 16 > nb:
                order = np.empty(nt, dtype=np.int64)
                c = 0
                for k in range(nb):
                    if seen[k]:
                        order[c] = k
                        c += 1
            else:
                order = np.sort(touched[:nt])
            for t in range(nt):
                k = order[t]
                m = acc[k]
                acc[k] = 0.0
                seen[k] = False
                d = 1.0 - m / (2.0 - m)
                if d < 0.0:
                    d = 0.0
                elif d > 1.0:
                    d = 1.0
                if square and k == i:
                    d = 0.0
                elif d > max_dist:
                    continue
                if pos == cap:
                    cap *= 2
                    nc = np.empty(cap, dtype=np.int32)
                    nv = np.empty(cap, dtype=np.float32)
                    nc[:pos] = out_cols[:pos]
                    nv[:pos] = out_vals[:pos]
                    out_cols = nc
                    out_vals = nv
                out_cols[pos] = k
                out_vals[pos] = d
                pos += 1
            counts[i - r0] = pos - start
        return counts, out_cols[:pos], out_vals[:pos]

    _NUMBA_KERNEL = kernel
    return kernel


def warm_up_kernel() -> bool:
    """Compile the numba kernel now (and write numba's on-disk cache: ``__pycache__`` next to this
    file, or numba's user-wide cache dir when that is not writable, or ``NUMBA_CACHE_DIR``), so the
    first clustering of a run does not wait for it; ``scripts/install.sh`` calls this. The first
    compile takes 15-30 s on 2 cores; later processes load the cached machine code in ~2 s.
    Returns False when numba is not installed (the numpy kernel needs no compiling)."""
    if _numba_kernel() is None:
        return False
    from .bf16_knn import bf16_knn

    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    compute_jaccard_distance(x, k1=8, k2=3, backend="numba", max_distance=0.6)  # same argument types as a run
    compute_jaccard_distance(x, k1=8, k2=3, backend="numba")
    compute_jaccard_distance(x, k1=8, k2=3, backend="pair-once", max_distance=0.6)
    bf16_knn(normalize_features(x), 8, margin=4, block=16)  # its heap and re-scoring kernels
    return True


def _row_blocks(n_rows: int, n_threads: int | None, blocks_per_thread: int, progress: bool, call):
    """Run ``call(start, stop) -> (counts, cols, vals)`` on row blocks over a thread pool (the
    numba kernels release the GIL) and concatenate the blocks' outputs in row order."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    n_threads = n_threads or max(1, min(os.cpu_count() or 1, 32))
    n_blocks = max(1, min(n_rows, blocks_per_thread * n_threads))
    edges = np.linspace(0, n_rows, n_blocks + 1).astype(np.int64)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        parts = list(tqdm(pool.map(lambda b: call(edges[b], edges[b + 1]), range(n_blocks)), total=n_blocks,
                          desc="jaccard", disable=not progress, leave=False))
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


def _csr_arrays(m: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    return m.indptr.astype(np.int64), m.indices.astype(np.int64)


def _jaccard_numba(kernel, va, csc, nb, max_dist, square, progress, n_threads):
    a_ptr, a_idx = _csr_arrays(va)
    c_ptr, c_idx = _csr_arrays(csc)
    return _row_blocks(va.shape[0], n_threads, 8, progress, lambda start, stop: kernel(
        start, stop, a_ptr, a_idx, va.data, c_ptr, c_idx, csc.data, nb, float(max_dist), bool(square)))


def cutoff_overlap(max_distance: float | None) -> float:
    """The smallest ``m = sum_j min`` whose distance ``1 - m / (2 - m)`` is ``<= max_distance``:
    ``2 (1 - eps) / (2 - eps)`` (the distance falls as ``m`` grows); 0 when every pair qualifies."""
    if max_distance is None or max_distance >= 1.0:
        return 0.0
    eps = float(max_distance)
    return 2.0 * (1.0 - eps) / (2.0 - eps)


def pair_once_jaccard(va: sp.csr_matrix, max_distance: float | None = None, n_threads: int | None = None,
                      progress: bool = False) -> sp.csr_matrix:
    """The square Jaccard of :func:`jaccard_from_encoding` (``vb = va``), each unordered pair once.

    Row ``i`` only looks for partners ``k > i`` (the columns of the inverted index are sorted, so
    a binary search skips the rest) and the result is mirrored. With a cut-off, ``m(i, k)`` must
    reach ``m_min`` (:func:`cutoff_overlap`); since ``m(i, k) <= sum`` of row ``i``'s weights on
    the columns the two rows share, row ``i`` walks its columns in decreasing weight and stops
    taking *new* partners once the weight left, ``rem``, is below ``m_min`` (a partner sharing
    none of the columns walked has ``m <= rem``). A partner met in that prefix with
    ``partial + rem < m_min`` is dropped; the others get their exact ``m`` by a merge of the two
    rows. Same stored pairs and values as the full kernel (up to float64 summation order).
    Needs numba.
    """
    from .kernels import pair_once_kernel

    kernel = pair_once_kernel()
    if kernel is None:
        raise ImportError("the pair-once Jaccard needs the numba package")
    va = sp.csr_matrix(va)
    n = va.shape[0]
    if va.shape[1] != n:
        raise ValueError(f"the pair-once Jaccard needs a square encoding (N x N), got {va.shape}")
    va.sort_indices()
    max_dist = np.inf if max_distance is None else float(max_distance)
    if not max_dist >= 0:
        raise ValueError(f"max_distance must be >= 0 or None, got {max_distance}")
    m_min = cutoff_overlap(max_distance)
    csc = sp.csc_matrix(va)
    csc.sort_indices()
    a_ptr, a_idx = _csr_arrays(va)
    c_ptr, c_idx = _csr_arrays(csc)
    a_val = va.data.astype(np.float32)
    c_val = csc.data.astype(np.float32)
    # rows early in the order do more work (more partners k > i): many small blocks balance it
    counts, up_cols, up_vals = _row_blocks(n, n_threads, 16, progress, lambda start, stop: kernel(
        start, stop, a_ptr, a_idx, a_val, c_ptr, c_idx, c_val, n, m_min, max_dist))
    up_rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    # mirror: row r = [(i, r) for i < r, ascending i] + [diagonal 0] + [(r, k) for k > r, ascending k]
    low = np.argsort(up_cols, kind="stable")  # stable: for each column, rows stay ascending
    low_counts = np.bincount(up_cols, minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(low_counts + 1 + counts, out=indptr[1:])
    nnz = int(indptr[-1])
    cols = np.empty(nnz, dtype=np.int64)
    vals = np.empty(nnz, dtype=np.float32)
    low_start = indptr[:-1]
    diag = low_start + low_counts
    # lower part: entries sorted by (column, row); their target row is the column
    lr = up_cols[low]
    lpos = low_start[lr] + (np.arange(len(low)) - np.repeat(np.cumsum(low_counts) - low_counts, low_counts))
    cols[lpos] = up_rows[low]
    vals[lpos] = up_vals[low]
    cols[diag] = np.arange(n)
    vals[diag] = 0.0
    upos = np.repeat(diag + 1, counts) + (np.arange(len(up_cols)) - np.repeat(np.cumsum(counts) - counts, counts))
    cols[upos] = up_cols
    vals[upos] = up_vals
    idx_dtype = np.int32 if max(n, nnz) < 2**31 else np.int64
    out = sp.csr_matrix((vals, cols.astype(idx_dtype), indptr.astype(idx_dtype)), shape=(n, n))
    out.has_sorted_indices = True
    return out


def jaccard_from_encoding(
    va: sp.csr_matrix,
    vb: sp.csr_matrix | None = None,
    *,
    max_distance: float | None = None,
    backend: str = "auto",
    work_budget: int = 1 << 21,
    acc_budget: int = 1 << 23,
    n_threads: int | None = None,
    progress: bool = False,
) -> sp.csr_matrix:
    """Step 5: ``J = 1 - m / (2 - m)`` for every pair (row of ``va``, row of ``vb``) whose rows
    share a column (``m = sum_j min``); sparse (na, nb) float32, missing = 1.

    ``vb=None`` means ``vb = va`` (the square, symmetric case; the diagonal is set to an explicit 0).
    ``max_distance``: keep only pairs with ``J <= max_distance`` (others read as 1, i.e. are
    dropped; the diagonal is always kept). ``None`` keeps every overlapping pair. For DBSCAN
    with ``eps <= max_distance`` the result is the same and memory is far smaller.
    ``backend``: ``"pair-once"`` (square case only: every unordered pair once, partners that
    cannot reach the cut-off skipped, :func:`pair_once_jaccard`), ``"numba"`` (compiled
    inverted-index loop over all ordered pairs, row blocks in ``n_threads`` threads),
    ``"numpy"`` (vectorised blocks; ``work_budget`` bounds the expanded pairs handled at once,
    ``acc_budget`` the block accumulator ``rows_in_block * nb``), or ``"auto"`` (pair-once for
    the square case with a ``max_distance``, else numba when importable, else numpy).
    """
    if backend not in JACCARD_BACKENDS:
        raise ValueError(f"backend must be one of {JACCARD_BACKENDS}, got {backend!r}")
    max_dist = np.inf if max_distance is None else float(max_distance)
    if not max_dist >= 0:
        raise ValueError(f"max_distance must be >= 0 or None, got {max_distance}")
    square = vb is None
    if backend == "pair-once" or (backend == "auto" and square and max_distance is not None and numba_available()):
        if not square:
            raise ValueError("backend='pair-once' computes the square case only (vb=None)")
        return pair_once_jaccard(va, max_distance=max_distance, n_threads=n_threads, progress=progress)
    vb = va if vb is None else vb
    va = sp.csr_matrix(va)
    na, nb = va.shape[0], vb.shape[0]
    if va.shape[1] != vb.shape[1]:
        raise ValueError(f"encodings have different widths: {va.shape[1]} vs {vb.shape[1]}")
    csc = sp.csc_matrix(vb)
    csc.sort_indices()
    kernel = _numba_kernel() if backend in ("auto", "numba") else None
    if backend == "numba" and kernel is None:
        raise ImportError("backend='numba' needs the numba package")
    if kernel is not None:
        counts, cols, vals = _jaccard_numba(kernel, va, csc, nb, max_dist, square, progress, n_threads)
        return _assemble(counts, cols, vals, na, nb)
    col_nnz = np.diff(csc.indptr).astype(np.int64)
    row_of_entry = np.repeat(np.arange(na, dtype=np.int64), np.diff(va.indptr))
    work = np.bincount(row_of_entry, weights=col_nnz[va.indices], minlength=na)
    cum = np.concatenate([[0.0], np.cumsum(work)])
    max_rows = max(1, acc_budget // max(nb, 1))
    out_rows, out_cols, out_vals = [], [], []
    bounds = []
    r0 = 0
    while r0 < na:
        r1 = int(np.searchsorted(cum, cum[r0] + work_budget, side="right")) - 1
        r1 = min(max(r1, r0 + 1), r0 + max_rows, na)
        bounds.append((r0, r1))
        r0 = r1
    from tqdm.auto import tqdm

    for r0, r1 in tqdm(bounds, desc="jaccard", disable=not progress, leave=False):
        e0, e1 = va.indptr[r0], va.indptr[r1]
        li = row_of_entry[e0:e1] - r0
        cols = va.indices[e0:e1].astype(np.int64)
        a = va.data[e0:e1]
        owner, pos = _ranges(csc.indptr, cols)
        mins = np.minimum(a[owner], csc.data[pos])
        key = li[owner] * nb + csc.indices[pos]
        del owner, pos
        acc = np.bincount(key, weights=mins, minlength=(r1 - r0) * nb)
        del key, mins
        nz = np.flatnonzero(acc)
        m = acc[nz]
        del acc
        r = nz // nb + r0
        c = nz % nb
        d = np.clip(1.0 - m / (2.0 - m), 0.0, 1.0)
        if square:
            d[r == c] = 0.0
        keep = (d <= max_dist) | (r == c) if square else d <= max_dist
        out_rows.append(r[keep])
        out_cols.append(c[keep])
        out_vals.append(d[keep].astype(np.float32))
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    cols = np.concatenate(out_cols) if out_cols else np.zeros(0, np.int64)
    vals = np.concatenate(out_vals) if out_vals else np.zeros(0, np.float32)
    return _assemble(np.bincount(rows, minlength=na), cols, vals, na, nb)


def _assemble(counts, cols, vals, na, nb) -> sp.csr_matrix:
    """CSR from per-row counts and row-major (cols, vals), explicit zeros kept."""
    indptr = np.zeros(na + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if max(nb, len(cols)) < 2**31 else np.int64
    indptr = indptr.astype(idx_dtype)
    out = sp.csr_matrix((vals, cols.astype(idx_dtype), indptr), shape=(na, nb))
    out.has_sorted_indices = True  # rows ascending, columns ascending within a row (flatnonzero)
    return out


def compute_jaccard_distance(
    features: Any,
    k1: int = 30,
    k2: int = 6,
    knn: str = "exact",
    search_option: dict[str, Any] | None = None,
    progress: bool = False,
    *,
    device: str = "cpu",
    chunk_size: int = 1024,
    knn_result: KnnResult | None = None,
    max_distance: float | None = None,
    backend: str = "auto",
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distance of all pairs of ``features`` (N, D).

    ``k1``/``k2`` as in Cluster-Contrast (defaults 30 and 6); ``knn``: a backend of
    :data:`~reid_core.cluster.knn.KNN_METHODS`: ``"exact"`` (chunked fp32 matrix products,
    ``chunk_size`` query rows at a time, on ``device``), ``"faiss"`` (exact), or an approximate one
    (``"faiss-ivf"``, ``"faiss-hnsw"``, ``"pynndescent"``; ``search_option`` holds the backend's
    options, see :func:`~reid_core.cluster.knn.knn_search`). ``knn_result``
    reuses a neighbour search already done (it needs ``max(k1, round(k1/2)+1, k2)`` columns).
    ``max_distance``: store only pairs with distance ``<= max_distance`` (plus the diagonal);
    for DBSCAN pass at least the largest ``eps`` you will use: same clusters, far less memory
    (random or weakly structured features can have overlapping encodings for most pairs).
    ``backend``: Jaccard kernel, see :func:`jaccard_from_encoding`.

    Returns a CSR (N, N) float32 matrix: stored entries are the pairs with overlapping
    encodings (diagonal stored as explicit 0), missing pairs have distance 1. See the module
    docstring for the exact definition.
    """
    k1, k2 = int(k1), int(k2)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if search_option is not None and not isinstance(search_option, dict):
        raise TypeError(f"search_option must be a dict of k-NN backend options or None, got {type(search_option).__name__}")
    x = normalize_features(features)
    n = x.shape[0]
    m1 = min(k1, n)
    m2 = min(int(np.around(k1 / 2)) + 1, m1)
    kq = min(k2, n)
    need = max(m1, m2, kq)
    if knn_result is None:
        knn_result = knn_search(x, need, knn, chunk_size=chunk_size, device=device,
                                search_option=search_option, progress=progress)
    elif knn_result.indices.shape != (n, knn_result.indices.shape[1]) or knn_result.indices.shape[1] < need:
        raise ValueError(f"knn_result must have shape (N={n}, >= {need}), got {knn_result.indices.shape}")
    v = k_reciprocal_encoding(knn_result, x, m1, m2, kq, backend="numpy" if backend == "numpy" else "auto")
    return jaccard_from_encoding(v, max_distance=max_distance, backend=backend, progress=progress)


def sparse_distance_to_dense(dist: sp.spmatrix | np.ndarray, fill: float = 1.0) -> np.ndarray:
    """Dense copy of a sparse distance matrix whose missing entries mean ``fill`` (stored
    explicit zeros stay 0). Only for small N: the result is (N, M) float32."""
    if not sp.issparse(dist):
        return np.asarray(dist, dtype=np.float32)
    coo = sp.coo_matrix(dist)
    out = np.full(coo.shape, fill, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out
