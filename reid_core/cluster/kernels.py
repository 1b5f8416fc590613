"""Compiled (numba, ``cache=True``) loops of the clustering step, built on first use.

Each getter returns the compiled function, or ``None`` when numba is not installed (callers then
take a numpy/torch path). The machine code is cached on disk (``__pycache__`` next to this file,
or numba's user cache dir, or ``NUMBA_CACHE_DIR``), so only the very first process compiles;
:func:`reid_core.cluster.jaccard.warm_up_kernel` compiles all of them at install time so that
no compile lands inside a timed or clustered call.

All kernels are ``nogil``: callers split rows into blocks and run them in threads.
"""
from __future__ import annotations

import numpy as np

__all__ = ["encoding_kernel", "pair_dots_kernel", "pair_once_kernel", "topk_update_kernel", "bf16_key", "key_to_float", "numba_available"]

_CACHE: dict[str, object] = {}


def numba_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def bf16_key(bits: np.ndarray) -> np.ndarray:
    """Order-preserving integer keys of bf16 bit patterns (int16 view): ``a < b`` as floats iff
    ``key(a) < key(b)`` (NaN aside; -0 sorts just below +0)."""
    u = bits.view(np.uint16).astype(np.int32)
    return np.where(u & 0x8000, 0xFFFF - u, u | 0x8000)


def key_to_float(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`bf16_key`, as float32 (every bf16 value is exact in fp32)."""
    key = np.asarray(key, dtype=np.int64)
    u = np.where(key & 0x8000, key & 0x7FFF, 0xFFFF - key).astype(np.uint32)
    return (u << np.uint32(16)).view(np.float32)


def topk_update_kernel():
    """``kernel(s16, s, row_lo, row_hi, col_lo, col_hi, heap_k, heap_i, cnt)``: fold one block of
    the symmetric Gram matrix into per-row min-heaps of the ``w`` largest scores.

    ``s16`` (b, n - s) holds bf16 bit patterns (int16) of the products of rows ``s .. s+b`` with
    rows ``s .. n``. Rows ``r`` in ``[row_lo, row_hi)`` (inside the block) take their row of
    ``s16`` (all columns but their own); rows ``r`` in ``[col_lo, col_hi)`` (after the block) take
    their column (the block's rows as candidates). ``heap_k`` (n, w) int32 keys
    (:func:`bf16_key`), ``heap_i`` (n, w) int64 candidate rows, ``cnt`` (n,) filled sizes.
    A candidate equal to a full heap's minimum is not taken (ties at the cut are arbitrary)."""
    if "topk_update" in _CACHE:
        return _CACHE["topk_update"]
    if not numba_available():  # pragma: no cover
        _CACHE["topk_update"] = None
        return None
    import numba

    # (one function, the heap insertion written out in it: a jitted helper captured from this
    # closure would make numba's on-disk cache miss, i.e. recompile in every process)
    @numba.njit(nogil=True, cache=True)
    def topk_update(s16, s, row_lo, row_hi, col_lo, col_hi, heap_k, heap_i, cnt):  # pragma: no cover
        ncol = s16.shape[1]
        b = s16.shape[0]
        w = heap_k.shape[1]
        tile = 256
        # owners: rows of the block first (their row of s16), then the later rows (their column), tiled
        n_row = max(0, row_hi - row_lo)
        n_col_tiles = max(0, (col_hi - col_lo + tile - 1) // tile)
        for unit in range(n_row + n_col_tiles):
            if unit < n_row:
                r_a = row_lo + unit
                r_b = r_a + 1
                p_a = 0
                p_b = ncol
            else:
                r_a = col_lo + (unit - n_row) * tile
                r_b = min(r_a + tile, col_hi)
                p_a = 0
                p_b = b
            for p in range(p_a, p_b):
                for r in range(r_a, r_b):
                    if unit < n_row:  # row side: candidate column p of row r
                        if p == r - s:
                            continue
                        u = np.int32(s16[r - s, p]) & 0xFFFF
                        j = s + p
                    else:  # column side: candidate block row p of row r
                        u = np.int32(s16[p, r - s]) & 0xFFFF
                        j = s + p
                    key = 0xFFFF - u if u & 0x8000 else u | 0x8000
                    c = cnt[r]
                    if c < w:  # heap not full: sift up
                        pos = c
                        while pos > 0:
                            parent = (pos - 1) >> 1
                            if heap_k[r, parent] <= key:
                                break
                            heap_k[r, pos] = heap_k[r, parent]
                            heap_i[r, pos] = heap_i[r, parent]
                            pos = parent
                        heap_k[r, pos] = key
                        heap_i[r, pos] = j
                        cnt[r] = c + 1
                    elif key > heap_k[r, 0]:  # replace the minimum, sift down
                        pos = 0
                        while True:
                            child = 2 * pos + 1
                            if child >= w:
                                break
                            if child + 1 < w and heap_k[r, child + 1] < heap_k[r, child]:
                                child += 1
                            if heap_k[r, child] >= key:
                                break
                            heap_k[r, pos] = heap_k[r, child]
                            heap_i[r, pos] = heap_i[r, child]
                            pos = child
                        heap_k[r, pos] = key
                        heap_i[r, pos] = j

    _CACHE["topk_update"] = topk_update
    return topk_update


def encoding_kernel():
    """``kernel(r0, r1, idx, dist, x, p1, r1s, p2, r2s, scale, has_scale)``: steps 2-3 of
    :mod:`reid_core.cluster.jaccard` for rows ``[r0, r1)``: the expanded set ``E(i)`` (the
    k-reciprocal set ``R(i, m1)`` (``p1``/``r1s``, CSR) plus every ``R(c, m2)`` (``p2``/``r2s``)
    of a member ``c`` that shares more than 2/3 of itself with ``R(i, m1)``), in column order, and
    the softmax weights of ``-d`` over it (``d`` from the k-NN table, else ``2 - 2 x_i . x_j`` in
    fp32, clamped at 0; times ``scale[i]`` when ``has_scale``). Returns ``(counts, cols, weights)``."""
    if "encoding" in _CACHE:
        return _CACHE["encoding"]
    if not numba_available():  # pragma: no cover
        _CACHE["encoding"] = None
        return None
    import numba

    @numba.njit(nogil=True, cache=True)
    def encoding(r0, r1, idx, dist, x, p1, r1s, p2, r2s, scale, has_scale):  # pragma: no cover - compiled
        n, width = idx.shape
        dim = x.shape[1]
        in_r1 = np.full(n, -1, dtype=np.int64)  # in_r1[j] == i: j in R(i, m1)
        in_e = np.full(n, -1, dtype=np.int64)  # in_e[j] == i: j in E(i)
        in_knn = np.full(n, -1, dtype=np.int64)  # in_knn[j] == i: j at position knn_pos[j] of row i's list
        knn_pos = np.zeros(n, dtype=np.int64)
        ebuf = np.empty(n, dtype=np.int64)
        cap = max(1024, (r1 - r0) * 64)
        out_cols = np.empty(cap, dtype=np.int64)
        out_w = np.empty(cap, dtype=np.float64)
        counts = np.zeros(r1 - r0, dtype=np.int64)
        pos = 0
        for i in range(r0, r1):
            ne = 0
            for q in range(p1[i], p1[i + 1]):
                j = r1s[q]
                in_r1[j] = i
                if in_e[j] != i:
                    in_e[j] = i
                    ebuf[ne] = j
                    ne += 1
            for q in range(p1[i], p1[i + 1]):
                c = r1s[q]
                size = p2[c + 1] - p2[c]
                overlap = 0
                for t in range(p2[c], p2[c + 1]):
                    if in_r1[r2s[t]] == i:
                        overlap += 1
                if 3 * overlap > 2 * size:
                    for t in range(p2[c], p2[c + 1]):
                        j = r2s[t]
                        if in_e[j] != i:
                            in_e[j] = i
                            ebuf[ne] = j
                            ne += 1
            members = np.sort(ebuf[:ne])
            for t in range(width):
                in_knn[idx[i, t]] = i
                knn_pos[idx[i, t]] = t
            if pos + ne > cap:
                cap = max(2 * cap, pos + ne)
                nc = np.empty(cap, dtype=np.int64)
                nw = np.empty(cap, dtype=np.float64)
                nc[:pos] = out_cols[:pos]
                nw[:pos] = out_w[:pos]
                out_cols = nc
                out_w = nw
            total = 0.0
            for t in range(ne):
                j = members[t]
                if in_knn[j] == i:
                    d = np.float64(dist[i, knn_pos[j]])
                else:
                    acc = np.float32(0.0)
                    for q in range(dim):
                        acc += x[i, q] * x[j, q]
                    d = 2.0 - 2.0 * np.float64(acc)
                    if d < 0.0:
                        d = 0.0
                if has_scale:
                    d *= scale[i]
                w = np.exp(-d)
                out_cols[pos + t] = j
                out_w[pos + t] = w
                total += w
            for t in range(ne):
                out_w[pos + t] /= total
            pos += ne
            counts[i - r0] = ne
        return counts, out_cols[:pos], out_w[:pos]

    _CACHE["encoding"] = encoding
    return encoding


def pair_dots_kernel():
    """``kernel(x, r0, r1, cand, start, stop, out)``: for rows ``i`` in ``[r0, r1)`` and
    ``t`` in ``[start[i], stop[i])``, ``out[i, t] = x[i] . x[cand[i, t]]`` accumulated in fp32
    (any order: ``fastmath`` lets numba vectorise it)."""
    if "pair_dots" in _CACHE:
        return _CACHE["pair_dots"]
    if not numba_available():  # pragma: no cover
        _CACHE["pair_dots"] = None
        return None
    import numba

    @numba.njit(nogil=True, fastmath=True, cache=True)
    def pair_dots(x, r0, r1, cand, start, stop, out):  # pragma: no cover - compiled
        d = x.shape[1]
        for i in range(r0, r1):
            for t in range(start[i], stop[i]):
                j = cand[i, t]
                acc = np.float32(0.0)
                for q in range(d):
                    acc += x[i, q] * x[j, q]
                out[i, t] = acc

    _CACHE["pair_dots"] = pair_dots
    return pair_dots


def pair_once_kernel():
    """See :func:`reid_core.cluster.jaccard.pair_once_jaccard`."""
    if "pair_once" in _CACHE:
        return _CACHE["pair_once"]
    if not numba_available():  # pragma: no cover
        _CACHE["pair_once"] = None
        return None
    import numba

    @numba.njit(nogil=True, cache=True)
    def pair_once(r0, r1, a_ptr, a_idx, a_val, c_ptr, c_idx, c_val, n, m_min, max_dist):  # pragma: no cover
        acc = np.zeros(n, dtype=np.float64)  # partial sum of min over the columns walked, partners k > i
        live = np.zeros(n, dtype=np.bool_)  # partner met and still able to reach m_min
        touched = np.empty(n, dtype=np.int64)
        dense = np.zeros(n, dtype=np.float64)  # row i scattered by column (for the verification merges)
        cap = max(1024, (r1 - r0) * 8)
        out_cols = np.empty(cap, dtype=np.int64)
        out_vals = np.empty(cap, dtype=np.float32)
        counts = np.zeros(r1 - r0, dtype=np.int64)
        pos = 0
        slack = 1e-9
        for i in range(r0, r1):
            p0 = a_ptr[i]
            p1 = a_ptr[i + 1]
            length = p1 - p0
            vals = a_val[p0:p1].astype(np.float64)
            order = np.argsort(-vals, kind="mergesort")
            rem = 0.0
            for t in range(length):
                rem += vals[t]
            nt = 0
            t = 0
            # 1. columns of row i by decreasing weight; new partners while one could still reach m_min
            while t < length and rem >= m_min - slack:
                j = a_idx[p0 + order[t]]
                a = vals[order[t]]
                lo = c_ptr[j]
                hi = c_ptr[j + 1]
                while lo < hi:  # first entry of the sorted column with row > i
                    mid = (lo + hi) >> 1
                    if c_idx[mid] <= i:
                        lo = mid + 1
                    else:
                        hi = mid
                for q in range(lo, c_ptr[j + 1]):
                    k = c_idx[q]
                    if not live[k]:
                        live[k] = True
                        touched[nt] = k
                        nt += 1
                    b = c_val[q]
                    acc[k] += a if a < b else b
                rem -= a
                t += 1
            # 2. the rest of the walk only updates partners already met; now and then drop those that
            #    cannot reach m_min any more, and merge rows instead once few are left
            verify = False
            if t < length:
                rest = 0  # entries of the columns still to walk (the cost of finishing the walk)
                for u in range(t, length):
                    j = a_idx[p0 + order[u]]
                    rest += c_ptr[j + 1] - c_ptr[j]
                rest //= 2  # about half of them are partners k > i
                since = 0
                next_check = 8
                while t < length:
                    if since >= next_check:
                        since = 0
                        next_check *= 2
                        nl = 0
                        for u in range(nt):
                            k = touched[u]
                            if acc[k] + rem >= m_min - slack:
                                touched[nl] = k
                                nl += 1
                            else:
                                live[k] = False
                                acc[k] = 0.0
                        nt = nl
                        if nt * length <= rest:  # cheaper to merge the survivors' rows than to walk on
                            verify = True
                            break
                    j = a_idx[p0 + order[t]]
                    a = vals[order[t]]
                    lo = c_ptr[j]
                    hi = c_ptr[j + 1]
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if c_idx[mid] <= i:
                            lo = mid + 1
                        else:
                            hi = mid
                    for q in range(lo, c_ptr[j + 1]):
                        k = c_idx[q]
                        if live[k]:
                            b = c_val[q]
                            acc[k] += a if a < b else b
                    rest -= (c_ptr[j + 1] - c_ptr[j]) // 2
                    rem -= a
                    t += 1
                    since += 1
            if verify:
                for p in range(p0, p1):
                    dense[a_idx[p]] = a_val[p]
                for u in range(nt):
                    k = touched[u]
                    m = 0.0
                    for q in range(a_ptr[k], a_ptr[k + 1]):
                        av = dense[a_idx[q]]
                        if av > 0.0:
                            bv = np.float64(a_val[q])
                            m += av if av < bv else bv
                    acc[k] = m
                for p in range(p0, p1):
                    dense[a_idx[p]] = 0.0
            # 3. keep the partners within the cut-off, emit them in column order
            if nt * 16 > n:  # (no cut-off: most partners stay) scan instead of sorting
                nl = 0
                for k in range(i + 1, n):
                    if live[k]:
                        touched[nl] = k
                        nl += 1
                nt = nl
            nl = 0
            for u in range(nt):
                k = touched[u]
                m = acc[k]
                acc[k] = 0.0
                live[k] = False
                if m < m_min - slack:
                    continue
                d = 1.0 - m / (2.0 - m)
                if d < 0.0:
                    d = 0.0
                elif d > 1.0:
                    d = 1.0
                if d > max_dist:
                    continue
                touched[nl] = k
                dense[k] = d  # (dense is all zero again here; borrowed as the value by column)
                nl += 1
            srt = np.sort(touched[:nl])
            start = pos
            if pos + nl > cap:
                cap = max(2 * cap, pos + nl)
                nc = np.empty(cap, dtype=np.int64)
                nv = np.empty(cap, dtype=np.float32)
                nc[:pos] = out_cols[:pos]
                nv[:pos] = out_vals[:pos]
                out_cols = nc
                out_vals = nv
            for u in range(nl):
                k = srt[u]
                out_cols[pos] = k
                out_vals[pos] = dense[k]
                dense[k] = 0.0
                pos += 1
            counts[i - r0] = pos - start
        return counts, out_cols[:pos], out_vals[:pos]

    _CACHE["pair_once"] = pair_once
    return pair_once
