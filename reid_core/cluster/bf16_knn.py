"""Exact k-NN with a bf16 pre-filter: bf16 matrix products pick candidates, fp32 decides.

What it returns is what the fp32 ``"exact"`` backend of :mod:`reid_core.cluster.knn` returns (the
same neighbour sets, ties within fp32 rounding aside), in about half the CPU time on CPUs with
native bf16 products (AVX512-BF16, AMX).

Algorithm
---------
1. ``x`` (unit rows, fp32) is rounded to bf16: ``x = h + l`` with ``h = bf16(x)`` and the residual
   ``l = x - h`` (exact in fp32).
2. Row blocks of the Gram matrix ``h h^T`` are computed with bf16 matrix products, each symmetric
   block pair once (block ``b`` against itself and every later row); every row keeps the
   ``c + 1`` largest approximate products with other rows, ``c = k - 1 + margin``.
3. For row ``i`` the candidates whose approximate score could still beat the ``(k-1)``-th are
   re-scored exactly (fp32 dot products of the original rows) and the ``k - 1`` best are kept
   (plus ``i`` itself at position 0).
4. Certificate: with ``a_x`` the largest approximate score of a row that was *not* re-scored and
   ``s_k`` the ``(k-1)``-th re-scored fp32 score, the row is accepted when
   ``s_k - U_i(a_x) > 3 e32`` (``U_i`` and ``e32`` below). Otherwise the row is searched again
   exactly (one fp32 product of the row with all rows), so the result never depends on the bound
   being lucky, only on it being *true*.

Error bound (why the certificate is sound)
------------------------------------------
Let ``u = 2^-8`` (unit round-off of bf16: 8 significand bits, round to nearest even),
``u32 = 2^-24``, ``D`` the dimension and ``g = D u32 / (1 - D u32)``. For rows ``i, j``:

* input rounding: ``x_i . x_j - h_i . h_j = h_i . l_j + l_i . h_j + l_i . l_j``, so by
  Cauchy-Schwarz ``|x_i . x_j - h_i . h_j| <= |h_i| |l_j| + |l_i| |h_j| + |l_i| |l_j|``
  (with ``|l| <= u |x|`` per element this is at most ``2u + u^2``, about ``0.0078`` for unit
  rows; the per-row norms of ``l`` actually measured are about 5x smaller, and those are used);
* accumulation: the products of two bf16 numbers are exact in fp32, and any order of ``D - 1``
  fp32 additions of them errs by at most ``g sum_d |h_id h_jd| <= g |h_i| |h_j|``; flushing
  denormal products to zero (AVX512-BF16 does) adds at most ``D 2^-126``;
* output rounding: torch returns the bf16 product as bf16, ``a = bf16(s)``, so
  ``|s - a| <= u |a| / (1 - u)``.

Hence ``|x_i . x_j - a_ij| <= B_i + u |a_ij| / (1 - u)``, where
``B_i = |h_i| L + |l_i| H + |l_i| L + g |h_i| H + D 2^-126`` with ``H = max_j |h_j|`` and
``L = max_j |l_j|``. ``U_i(a) = a + u|a|/(1-u) + B_i`` (an upper bound of the true product of
any pair whose approximate score is ``a``) is increasing in ``a``, so every row ranked below
``a_x`` has a true product ``<= U_i(a_x)``. fp32 dot products of unit rows (here and in the exact
backend) are within ``e32 = g (1 + 1e-6)^2`` of the true value, which gives the ``3 e32`` in the
certificate: every row left out has an fp32 score (in any summation order) below the fp32 score
the exact backend gives each kept row. The bound assumes fp32 accumulation and round-to-nearest
conversions in the bf16 kernel (oneDNN's); ``tests/cluster/test_bf16_knn.py`` checks the
observed errors against it.

Measured on random unit vectors (12,936 x 2048, ``k`` 30, ``margin`` 48, AMD EPYC with
AVX512-BF16): ``B_i`` at most 0.0037 (the worst case ``2u`` would be 0.0078), about 53
candidates re-scored per row, 3 of 12,936 rows searched again; 4.0 CPU seconds against 8.3 for
the fp32 search (the bf16 products themselves are about 1.9 of them). Clustered data gives the
same sets at about the same cost.

Per-row top lists are kept in min-heaps by a compiled kernel (:mod:`reid_core.cluster.kernels`)
that reads each block's bf16 products as integer keys (:func:`~reid_core.cluster.kernels.bf16_key`);
without numba, torch top-k and merges do the same.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["bf16_knn", "prefilter_available", "resolve_prefilter", "error_bound_terms", "PREFILTER_OPTIONS",
           "AUTO_MIN_ROWS"]

U_BF16 = 2.0 ** -8
U_FP32 = 2.0 ** -24
#: the options of the exact backend's pre-filter (``search_option`` of ``knn_search(..., "exact")``)
PREFILTER_OPTIONS = ("prefilter", "margin", "block")
#: with ``prefilter="auto"``, fewer rows than this use the plain fp32 search (nothing to gain)
AUTO_MIN_ROWS = 4096


def prefilter_available() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX, from ``/proc/cpuinfo``)."""
    from reid_core.device import cpu_supports_bf16

    return cpu_supports_bf16()


def resolve_prefilter(option: Any, n: int, device: torch.device, want_row_max: bool) -> bool:
    """Whether the exact search uses the bf16 pre-filter: ``"bf16"`` always (on a CPU device; it
    cannot give ``row_max``), ``"none"`` never, ``"auto"`` (default) on CPUs with native bf16 for
    at least :data:`AUTO_MIN_ROWS` rows."""
    if option not in ("auto", "bf16", "none"):
        raise ValueError(f"search_option prefilter must be 'auto', 'bf16' or 'none', got {option!r}")
    if option == "none" or want_row_max or device.type != "cpu":
        if option == "bf16" and (want_row_max or device.type != "cpu"):
            raise ValueError("prefilter='bf16' runs on the CPU and cannot return row_max; use prefilter='none'")
        return False
    if option == "bf16":
        return True
    return n >= AUTO_MIN_ROWS and prefilter_available()


def _accumulation_gamma(d: int) -> float:
    return d * U_FP32 / (1.0 - d * U_FP32)


def error_bound_terms(x: torch.Tensor, xh: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, float]:
    """``(B, e32)`` of the module docstring: ``B[i]`` bounds ``|x_i . x_j - h_i . h_j|`` plus the
    fp32 accumulation of the bf16 product, for every ``j``; ``e32`` bounds the error of an fp32
    dot product of two unit rows."""
    n, d = x.shape
    hn = np.empty(n)
    ln = np.empty(n)
    for s in range(0, n, chunk):
        h = xh[s : s + chunk].float()
        lo = x[s : s + chunk] - h  # exact in fp32 (h is x rounded to 8 significand bits)
        hn[s : s + chunk] = torch.linalg.vector_norm(h, dim=1).double().numpy()
        ln[s : s + chunk] = torch.linalg.vector_norm(lo, dim=1).double().numpy()
    # fp32 norms of D terms err by far less than 1e-4 relative: round them up by that
    hn *= 1.0 + 1e-4
    ln *= 1.0 + 1e-4
    g = _accumulation_gamma(d)
    big_h, big_l = float(hn.max()), float(ln.max())
    b = hn * big_l + ln * big_h + ln * big_l + g * hn * big_h + d * 2.0 ** -126
    # x rows are fp32-normalised: |x| <= 1 + 1e-6
    e32 = g * (1.0 + 1e-6) ** 2
    return b, e32


def _upper(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """U_i(a): the largest true product a pair with approximate score ``a`` can have (float64)."""
    return a + a.abs() * (U_BF16 / (1.0 - U_BF16)) + b


def _lower(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a - a.abs() * (U_BF16 / (1.0 - U_BF16)) - b


def _exact_rows(xt: torch.Tensor, rows: np.ndarray, k: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """fp32 top-k of ``rows`` against all rows (self forced first): the fallback re-search."""
    n = xt.shape[0]
    sims = np.empty((len(rows), k))
    idx = np.empty((len(rows), k), dtype=np.int64)
    for s in range(0, len(rows), chunk):
        r = torch.from_numpy(rows[s : s + chunk])
        sim = xt[r] @ xt.T
        sim[torch.arange(len(r)), r] = math.inf
        v, i = torch.topk(sim, min(k, n), dim=1)
        sims[s : s + chunk] = v.double().numpy()
        idx[s : s + chunk] = i.numpy()
    return sims, idx


def _candidates(xh: torch.Tensor, width: int, block: int, progress: bool,
                n_threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` largest bf16 products of every row with the *other* rows, sorted descending
    (values as fp32, indices int64); each block pair of the symmetric Gram matrix computed once,
    folded into per-row heaps by a compiled kernel (no top-k / merge passes over the blocks)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from .kernels import key_to_float, topk_update_kernel

    kernel = topk_update_kernel()
    if kernel is None:  # pragma: no cover - numba comes with pynndescent
        return _candidates_torch(xh, width, block, progress)
    n = xh.shape[0]
    heap_k = np.zeros((n, width), dtype=np.int32)
    heap_i = np.full((n, width), -1, dtype=np.int64)
    cnt = np.zeros(n, dtype=np.int64)
    n_threads = n_threads or max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    starts = range(0, n, block)
    try:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="bf16 kNN", disable=not progress, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for s in starts:
            e = min(s + block, n)
            s16 = (xh[s:e] @ xh[s:].T).view(torch.int16).numpy()  # (b, n - s) bf16 bits
            # split the owners so each thread folds about the same number of entries
            re = np.linspace(s, e, n_threads + 1).astype(np.int64)
            ce = np.linspace(e, n, n_threads + 1).astype(np.int64)
            list(pool.map(lambda t: kernel(s16, s, re[t], re[t + 1], ce[t], ce[t + 1], heap_k, heap_i, cnt),
                          range(n_threads)))
    order = np.argsort(-heap_k, axis=1, kind="stable")
    keys = np.take_along_axis(heap_k, order, axis=1)
    best_v = torch.from_numpy(key_to_float(keys).reshape(n, width))
    best_i = torch.from_numpy(np.take_along_axis(heap_i, order, axis=1))
    return best_v, best_i


def _candidates_torch(xh: torch.Tensor, width: int, block: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_candidates` without numba: torch top-k of every block and merges."""
    n = xh.shape[0]
    best_v = torch.full((n, width), -math.inf)
    best_i = torch.full((n, width), -1, dtype=torch.long)

    def merge(s: int, e: int, cand_v: torch.Tensor, cand_i: torch.Tensor) -> None:
        v = torch.cat([best_v[s:e], cand_v], dim=1)
        i = torch.cat([best_i[s:e], cand_i], dim=1)
        top_v, pos = torch.topk(v, width, dim=1)
        best_v[s:e] = top_v
        best_i[s:e] = torch.gather(i, 1, pos)

    neg = torch.tensor(-math.inf, dtype=torch.bfloat16)
    for s in range(0, n, block):
        e = min(s + block, n)
        b = e - s
        sim = xh[s:e] @ xh[s:].T  # (b, n - s) bf16
        ar = torch.arange(b)
        sim[ar, ar] = neg  # never its own candidate
        top_v, pos = torch.topk(sim, min(width, n - s), dim=1)
        merge(s, e, top_v.float(), pos + s)
        if e < n:
            t = sim[:, b:].T.contiguous()  # (n - e, b): later rows against this block
            top_v, pos = torch.topk(t, min(width, b), dim=1)
            merge(e, n, top_v.float(), pos + s)
    return best_v, best_i


def _rescore(xt: torch.Tensor, cand: np.ndarray, start: np.ndarray, stop: np.ndarray, out: np.ndarray,
             n_threads: int | None = None) -> None:
    """``out[i, t] = x_i . x_cand[i, t]`` in fp32 for ``start[i] <= t < stop[i]`` (in place)."""
    from .kernels import pair_dots_kernel

    kernel = pair_dots_kernel()
    n = cand.shape[0]
    if kernel is None:  # pragma: no cover - numba comes with pynndescent
        for i in np.flatnonzero(stop > start):
            j = torch.from_numpy(cand[i, start[i] : stop[i]])
            out[i, start[i] : stop[i]] = (xt[j] @ xt[i]).double().numpy()
        return
    import os
    from concurrent.futures import ThreadPoolExecutor

    x = xt.numpy()
    vals = np.full(out.shape, np.nan, dtype=np.float32)
    n_threads = n_threads or max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    edges = np.linspace(0, n, 4 * n_threads + 1).astype(np.int64)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        list(pool.map(lambda b: kernel(x, edges[b], edges[b + 1], cand, start, stop, vals), range(len(edges) - 1)))
    cols = np.arange(out.shape[1])[None, :]
    sel = (cols >= start[:, None]) & (cols < stop[:, None])
    out[sel] = vals[sel]


def bf16_knn(x: np.ndarray, k: int, margin: int = 48, block: int = 1024,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The ``k`` nearest rows of every row of the L2-normalised fp32 ``x`` (itself included),
    exactly, with the bf16 pre-filter of the module docstring.

    Returns ``(sim, idx, info)``: ``sim`` (N, k) float64 fp32 similarities (self: +inf), ``idx``
    (N, k) int64 (self first, then by similarity), ``info`` with ``n_fallback`` (rows searched
    again exactly), ``bound_max`` (largest ``B_i``) and ``rescored_per_row``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = min(int(k), n)
    margin, block = int(margin), int(block)
    if margin < 0 or block < 1:
        raise ValueError(f"need margin >= 0 and block >= 1, got margin={margin}, block={block}")
    kk = k - 1  # neighbours other than the row itself
    rows = np.arange(n, dtype=np.int64)
    xt = torch.from_numpy(x)
    info: dict[str, Any] = {"n_fallback": 0, "bound_max": 0.0, "rescored_per_row": 0.0}
    if kk == 0:
        return np.full((n, 1), np.inf), rows[:, None].copy(), info
    c = min(kk + margin, n - 1)
    width = min(c + 1, n - 1)  # the (c+1)-th tells the best score left out
    with torch.no_grad():
        xh = xt.to(torch.bfloat16)
        bnd, e32 = error_bound_terms(xt, xh)
        info["bound_max"] = float(bnd.max())
        best_v, best_i = _candidates(xh, width, block, progress)
        del xh
        av = best_v.double()
        bt = torch.from_numpy(bnd)[:, None]
        cand = best_i.numpy()
        # phase 1: exact scores of the k-1 best approximate candidates
        sims = np.full((n, width), -np.inf)
        zero = np.zeros(n, dtype=np.int64)
        _rescore(xt, cand, zero, np.full(n, kk, dtype=np.int64), sims)
        s_kk = sims[:, :kk].min(axis=1)  # the true (k-1)-th score is at least this (up to e32)
        # phase 2: every other candidate whose approximate score could beat it (a prefix: U increases)
        up = _upper(av, bt).numpy()
        counts = kk + (up[:, kk:c] >= (s_kk - 4 * e32)[:, None]).sum(axis=1)
        _rescore(xt, cand, np.full(n, kk, dtype=np.int64), counts, sims)
        # best approximate score not re-scored: position counts[i] (-inf when nothing was left out)
        has_x = counts < width
        a_x = av[np.arange(n), np.minimum(counts, width - 1)]
        u_x = np.where(has_x, _upper(a_x, torch.from_numpy(bnd)).numpy(), -np.inf)
        del best_v, av, up
        order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        top_s = np.take_along_axis(sims, order, axis=1)
        top_i = np.take_along_axis(cand, order, axis=1)
        ok = top_s[:, kk - 1] - u_x > 3 * e32
        bad = np.flatnonzero(~ok)
        info["n_fallback"] = int(len(bad))
        info["rescored_per_row"] = float(counts.mean())
        sim_out = np.concatenate([np.full((n, 1), np.inf), top_s], axis=1)
        idx_out = np.concatenate([rows[:, None], top_i], axis=1)
        if len(bad):
            fs, fi = _exact_rows(xt, bad, k)
            sim_out[bad] = fs
            idx_out[bad] = fi
    return sim_out, idx_out, info
