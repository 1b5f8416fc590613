"""Retrieval metrics for person re-ID: CMC (rank-k), mAP and mINP, Market-1501 protocol.

Protocol (per query ``q`` with identity ``pid_q`` and camera ``cam_q``):

* **Junk**: gallery images with pid ``-1`` are ignored (removed from every ranking).
* **Same identity, same camera**: gallery images with ``pid == pid_q`` taken by ``cam_q`` are
  ignored (they are too easy). This filter applies only when ``camera_filter=True`` *and* both
  camera ids are known; a camera id of ``-1`` (unknown) on either side disables it for that pair,
  so data without camera ids is evaluated without camera filtering.
* **Distractors** (pid ``0`` in Market-1501) are ordinary negatives.
* Correct matches are the remaining gallery images with ``pid == pid_q``. A query with no correct
  match is **skipped** and counted in ``n_skipped``; metrics average over the ``n_valid`` others.
  (A query with pid ``-1`` can only "match" junk, so it is always skipped.)

Metrics, with ranks counted in the filtered ranking (1-based):

* CMC: ``cmc[k-1]`` = fraction of valid queries whose first correct match is within the top ``k``.
  ``rank1``/``rank5``/``rank10`` are the same quantity for k = 1, 5, 10 (independent of ``max_rank``).
* AP: mean over the correct matches of the precision at their rank (no interpolation);
  ``mAP`` = mean AP over valid queries.
* INP (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook"):
  ``INP = |G| / R_hard`` with ``|G|`` the number of correct matches and ``R_hard`` the rank of the
  hardest (last) correct match; ``mINP`` = mean INP over valid queries.

**Tie policy.** Gallery items are ordered by distance ascending; equal distances are ordered by
gallery index ascending (index in the gallery as given, before junk removal). This is exactly
``np.argsort(dist, kind="stable")``, so results are deterministic and do not depend on the sort
algorithm or the chunking. (The implementation never argsorts a full row: it sorts the row's values
and places each correct match by binary search, counting equal values with a smaller gallery index
explicitly; see :func:`_rank_chunk`. :func:`stable_rank_order` gives the full order if needed.)

**Empty input.** With no queries (or no valid query) the result has ``n_queries``/``n_valid`` counts,
all metric values ``nan`` and a ``cmc`` array of ``nan``; no exception is raised.

Memory: distances are processed ``chunk_size`` queries at a time; no array larger than
``chunk_size x n_gallery`` is created (apart from the user's own ``distmat`` and, with
``rerank=True``, the re-ranked matrix, which re-ranking needs in full).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

__all__ = ["evaluate_rank", "evaluate_features", "iter_distance_chunks", "distance_matrix", "stable_rank_order"]

_METRIC_KEYS = ("mAP", "mINP", "rank1", "rank5", "rank10")


# ----------------------------------------------------------------------------- input checks
def _as_ids(x: Any, n: int, name: str, default: int | None = None) -> np.ndarray:
    """Convert an id vector (pids or camids) to int64, checking its length and missing values."""
    if x is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return np.full(n, default, dtype=np.int64)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, (pd.Series, pd.Index)):
        if x.isna().any():
            raise ValueError(f"{name} has missing values; use -1 for unknown")
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has missing (NaN/inf) values; use -1 for unknown")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer ids")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise ValueError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _check_chunk_size(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


# ----------------------------------------------------------------------------- ordering
def stable_rank_order(dist: np.ndarray) -> np.ndarray:
    """Per-row gallery order: distance ascending, ties by column index ascending.

    Equal to ``np.argsort(dist, axis=1, kind="stable")`` (``-0.0`` and ``0.0`` count as equal).
    float32 input uses one sort of a composite int64 key ``(order-preserving distance bits << 32) |
    column``; other dtypes use an unstable argsort and redo only the rows that contain ties with a
    stable argsort. ``dist`` must not contain NaN.
    """
    dist = np.asarray(dist)
    if dist.ndim != 2:
        raise ValueError(f"dist must be 2-D, got shape {dist.shape}")
    n_rows, n_cols = dist.shape
    if n_cols == 0 or n_rows == 0:
        return np.zeros((n_rows, n_cols), dtype=np.int64)
    if dist.dtype == np.float32 and n_cols < 2**31:
        d = dist + np.float32(0.0)  # copy; also turns -0.0 into +0.0 so they tie like in argsort
        bits = d.view(np.int32)
        # Flip the 31 magnitude bits of negative floats: the signed int32 then orders like the float.
        bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)
        key = bits.astype(np.int64)
        del d, bits
        key <<= 32
        key |= np.arange(n_cols, dtype=np.int64)[None, :]
        key.sort(axis=1)
        key &= np.int64(0xFFFFFFFF)
        return key
    order = np.argsort(dist, axis=1)  # fast, unstable
    sorted_vals = np.take_along_axis(dist, order, axis=1)
    tied_rows = np.flatnonzero((sorted_vals[:, 1:] == sorted_vals[:, :-1]).any(axis=1))
    if tied_rows.size:
        order[tied_rows] = np.argsort(dist[tied_rows], axis=1, kind="stable")
    return order


# ----------------------------------------------------------------------------- per-chunk metrics
class _Gallery:
    """Junk-free gallery ids plus a pid -> gallery-rows index (rows ascending within each pid)."""

    def __init__(self, pids: np.ndarray, cams: np.ndarray) -> None:
        self.pids, self.cams = pids, cams
        self.n = int(pids.size)
        self.by_pid = np.argsort(pids, kind="stable")
        self.uniq, self.start, self.count = np.unique(pids[self.by_pid], return_index=True, return_counts=True)

    def matches(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (query row, gallery column) pairs with equal pid; row-major, columns ascending."""
        loc = np.searchsorted(self.uniq, q_pids)
        loc_c = np.minimum(loc, max(self.uniq.size - 1, 0))
        found = (loc < self.uniq.size) & (self.uniq[loc_c] == q_pids) if self.uniq.size else np.zeros(q_pids.size, bool)
        cnt = np.where(found, self.count[loc_c] if self.uniq.size else 0, 0)
        rows = np.repeat(np.arange(q_pids.size, dtype=np.int64), cnt)
        offset = np.arange(rows.size, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        first = self.start[loc_c] if self.uniq.size else np.zeros(q_pids.size, np.int64)
        cols = self.by_pid[np.repeat(first, cnt) + offset] if rows.size else np.zeros(0, np.int64)
        return rows, cols.astype(np.int64, copy=False)


def _count_ahead(
    dm: np.ndarray, sorted_dm: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """For each entry (row, col) of ``dm``: number of entries of that row ahead of it in the order
    (distance, column) ascending. Uses the row-sorted values: strictly smaller values come from a
    batched binary search; equal values with a smaller column are counted directly, only for the
    (rare) entries whose value occurs more than once in their row."""
    n_rows, n_cols = dm.shape
    vals = dm[rows, cols]
    ordinal = np.arange(rows.size, dtype=np.int64) - np.searchsorted(rows, rows)  # position within row
    width = int(ordinal.max()) + 1
    padded = np.full((n_rows, width), np.inf, dtype=dm.dtype)
    padded[rows, ordinal] = vals
    seq = torch.from_numpy(sorted_dm)
    qry = torch.from_numpy(padded)
    left = torch.searchsorted(seq, qry, right=False).numpy()[rows, ordinal]
    right = torch.searchsorted(seq, qry, right=True).numpy()[rows, ordinal]
    ahead = left.astype(np.int64)
    tied = np.flatnonzero(right - left > 1)
    batch = max(1, n_rows)  # bound the (batch, n_cols) comparison to the chunk's size
    col_idx = np.arange(n_cols, dtype=np.int64)[None, :]
    for b in range(0, tied.size, batch):
        t = tied[b : b + batch]
        eq = dm[rows[t]] == vals[t][:, None]
        eq &= col_idx < cols[t][:, None]
        ahead[t] += eq.sum(axis=1)
    return ahead


def _rank_chunk(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    gallery: _Gallery,
    camera_filter: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Metrics for one chunk of queries against a junk-free gallery.

    Returns per-query ``n_good`` (number of correct matches), ``first_pos`` (1-based filtered rank
    of the first correct match, 0 if none), ``ap`` and ``inp`` (0 where ``n_good == 0``).

    Vectorised over the chunk, without a full argsort: the (few) same-identity pairs come from the
    gallery's pid index; ignored ones (same camera) are set to +inf in a copy of the chunk, whose
    rows are then value-sorted (``np.sort``). A correct match's filtered rank is 1 + the number of
    kept entries ahead of it under the tie policy (:func:`_count_ahead`); sorting the matches by
    (query, rank) gives each its ordinal among the correct matches, and AP, INP and the first-match
    rank follow with ``bincount``.
    """
    n_q, n_g = dist.shape
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)
    dist = np.ascontiguousarray(dist)  # e.g. rows of a Fortran-ordered matrix
    if np.isnan(dist).any():
        raise ValueError("distmat contains NaN")
    rows, cols = gallery.matches(q_pids)
    ignored = np.zeros(rows.size, dtype=bool)
    if camera_filter and rows.size:
        qc, gc = q_cams[rows], gallery.cams[cols]
        ignored = (qc != -1) & (gc != -1) & (qc == gc)
    good = ~ignored
    n_good = np.bincount(rows[good], minlength=n_q).astype(np.int64)
    first_pos = np.zeros(n_q, dtype=np.int64)
    ap = np.zeros(n_q, dtype=np.float64)
    inp = np.zeros(n_q, dtype=np.float64)
    if not good.any():
        return n_good, first_pos, ap, inp

    dm = dist
    if ignored.any():
        dm = dist.copy()  # never modify the caller's matrix
        dm[rows[ignored], cols[ignored]] = np.inf
    sorted_dm = np.sort(dm, axis=1)
    g_rows, g_cols = rows[good], cols[good]
    ahead = _count_ahead(dm, sorted_dm, g_rows, g_cols)
    del sorted_dm
    if ignored.any():
        # An ignored entry (+inf) can only tie with a correct match at +inf: remove it from the count.
        at_inf = np.flatnonzero(np.isposinf(dist[g_rows, g_cols]))
        if at_inf.size:
            ign_key = rows[ignored] * n_g + cols[ignored]  # ascending (row-major)
            ahead[at_inf] -= np.searchsorted(ign_key, g_rows[at_inf] * n_g + g_cols[at_inf]) - np.searchsorted(
                ign_key, g_rows[at_inf] * n_g
            )
    pos = ahead + 1
    perm = np.argsort(g_rows * (n_g + 1) + pos, kind="stable")  # (query, rank) order
    r, pos = g_rows[perm], pos[perm]

    starts = np.zeros(n_q, dtype=np.int64)
    np.cumsum(n_good[:-1], out=starts[1:])
    ordinal = np.arange(r.size, dtype=np.int64) - starts[r] + 1  # 1..n_good within a query
    prec_sum = np.bincount(r, weights=ordinal / pos, minlength=n_q)
    has = n_good > 0
    ap[has] = prec_sum[has] / n_good[has]
    first_pos[has] = pos[starts[has]]
    inp[has] = n_good[has] / pos[starts[has] + n_good[has] - 1]
    return n_good, first_pos, ap, inp


def _summarise(
    n_good: np.ndarray,
    first_pos: np.ndarray,
    ap: np.ndarray,
    inp: np.ndarray,
    max_rank: int,
    return_per_query: bool,
) -> dict:
    n_queries = int(n_good.size)
    valid = n_good > 0
    n_valid = int(valid.sum())
    out: dict[str, Any] = {}
    if n_valid:
        fp = first_pos[valid]
        out["cmc"] = np.array([(fp <= k).mean() for k in range(1, max_rank + 1)], dtype=np.float64)
        out["mAP"] = float(ap[valid].mean())
        out["mINP"] = float(inp[valid].mean())
        for k in (1, 5, 10):
            out[f"rank{k}"] = float((fp <= k).mean())
    else:
        out["cmc"] = np.full(max_rank, np.nan)
        for key in _METRIC_KEYS:
            out[key] = float("nan")
    out["n_queries"] = n_queries
    out["n_valid"] = n_valid
    out["n_skipped"] = n_queries - n_valid
    if return_per_query:
        out["per_query"] = pd.DataFrame(
            {
                "query_index": np.arange(n_queries, dtype=np.int64),
                "valid": valid,
                "n_matches": n_good,
                "first_rank": np.where(valid, first_pos, -1),
                "ap": np.where(valid, ap, np.nan),
                "inp": np.where(valid, inp, np.nan),
            }
        )
    return out


class _Collector:
    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, part: tuple[np.ndarray, ...]) -> None:
        self.parts.append(part)

    def result(self, max_rank: int, return_per_query: bool) -> dict:
        if self.parts:
            cols = [np.concatenate(c) for c in zip(*self.parts)]
        else:
            cols = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)]
        return _summarise(*cols, max_rank=max_rank, return_per_query=return_per_query)


# ----------------------------------------------------------------------------- public API
def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any = None,
    g_camids: Any = None,
    max_rank: int = 10,
    *,
    camera_filter: bool = True,
    chunk_size: int = 512,
    return_per_query: bool = False,
    progress: bool = False,
) -> dict:
    """CMC / mAP / mINP from a query x gallery distance matrix (smaller = more similar).

    ``distmat``: (Nq, Ng) array or tensor (a ``np.memmap`` works: it is read one chunk of rows at a
    time). ``q_camids``/``g_camids`` may be ``None`` (unknown, no camera filtering).
    Returns a dict with ``cmc`` (length ``max_rank``), ``mAP``, ``mINP``, ``rank1``, ``rank5``,
    ``rank10`` (fractions in [0, 1]), ``n_queries``, ``n_valid``, ``n_skipped``; with
    ``return_per_query=True`` also ``per_query`` (DataFrame: query_index, valid, n_matches,
    first_rank, ap, inp). See the module docstring for the protocol and the tie policy.
    """
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    if not hasattr(distmat, "shape") or len(distmat.shape) != 2:
        distmat = np.asarray(distmat)
        if distmat.ndim != 2:
            raise ValueError(f"distmat must be 2-D (n_query, n_gallery), got shape {distmat.shape}")
    n_q, n_g = distmat.shape
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    chunk_size = _check_chunk_size(chunk_size)
    q_pids = _as_ids(q_pids, n_q, "q_pids")
    g_pids = _as_ids(g_pids, n_g, "g_pids")
    q_cams = _as_ids(q_camids, n_q, "q_camids", default=-1)
    g_cams = _as_ids(g_camids, n_g, "g_camids", default=-1)

    keep = np.flatnonzero(g_pids != -1)  # junk is removed for every query
    all_kept = keep.size == n_g
    gallery = _Gallery(g_pids[keep], g_cams[keep])
    coll = _Collector()
    starts = range(0, n_q, chunk_size)
    for s in tqdm(starts, desc="evaluate", disable=not progress, total=len(starts)):
        e = min(s + chunk_size, n_q)
        block = np.asarray(distmat[s:e])
        if block.dtype.kind != "f":
            block = block.astype(np.float64)
        if not all_kept:
            block = block[:, keep]
        coll.add(_rank_chunk(block, q_pids[s:e], q_cams[s:e], gallery, camera_filter))
    return coll.result(max_rank, return_per_query)


def _to_tensor(x: Any, name: str, check: bool = True) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(_as_numpy(x, name)))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if check and t.numel():
        lo, hi = torch.aminmax(t)  # one pass, no (N, D) temporary; NaN propagates
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf")
    return t


def iter_distance_chunks(
    q_feat: Any,
    g_feat: Any,
    metric: str = "cosine",
    chunk_size: int = 512,
    device: str | torch.device = "auto",
    _check: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, dist_block)`` with ``dist_block`` of shape (<=chunk_size, Ng).

    ``metric="cosine"``: ``1 - <q/|q|, g/|g|>`` (rows are re-normalised; a zero row has distance 1
    to everything). ``metric="euclidean"``: *squared* Euclidean distance, clamped at 0 (same
    ranking as the Euclidean distance, without the extra ties the square root's rounding creates).
    Computation is in float64 when either input is float64, else float32, on ``device``.
    """
    from reid_core.device import pick_device

    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    chunk_size = _check_chunk_size(chunk_size)
    dev = pick_device(device)
    q = _to_tensor(q_feat, "q_feat", check=_check)
    g = _to_tensor(g_feat, "g_feat", check=_check)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feat has dim {q.shape[1]} but g_feat has dim {g.shape[1]}")
    dtype = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
    g = g.to(device=dev, dtype=dtype)
    if metric == "cosine":
        g = torch.nn.functional.normalize(g, dim=1)
    else:
        g_sq = (g * g).sum(dim=1)
    with torch.no_grad():
        for s in range(0, q.shape[0], chunk_size):
            qc = q[s : s + chunk_size].to(device=dev, dtype=dtype)
            if metric == "cosine":
                qc = torch.nn.functional.normalize(qc, dim=1)
                d = qc @ g.T
                d.neg_().add_(1.0)
            else:
                d = qc @ g.T
                d.mul_(-2.0).add_((qc * qc).sum(dim=1, keepdim=True)).add_(g_sq[None, :]).clamp_(min=0.0)
            yield s, d.cpu().numpy()


def distance_matrix(q_feat: Any, g_feat: Any, metric: str = "cosine", device: str | torch.device = "auto") -> np.ndarray:
    """Full (Nq, Ng) distance matrix (same definitions as :func:`iter_distance_chunks`); small inputs only."""
    blocks = [d for _, d in iter_distance_chunks(q_feat, g_feat, metric=metric, chunk_size=4096, device=device)]
    if not blocks:
        n_g = g_feat.shape[0]
        return np.zeros((0, n_g), dtype=np.float32)
    return np.concatenate(blocks, axis=0)


def evaluate_features(
    q_feat: Any,
    g_feat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any = None,
    g_camids: Any = None,
    metric: str = "cosine",
    chunk_size: int = 512,
    rerank: bool = False,
    *,
    max_rank: int = 10,
    camera_filter: bool = True,
    device: str | torch.device = "auto",
    rerank_params: dict | None = None,
    return_per_query: bool = False,
    progress: bool = False,
) -> dict:
    """Evaluate query/gallery features; same result dict as :func:`evaluate_rank`.

    Distances are computed ``chunk_size`` queries at a time (see :func:`iter_distance_chunks`) and
    ranked immediately, so memory stays ``O(chunk_size x Ng)``. Junk gallery rows (pid -1) are
    dropped before the distances are computed. With ``rerank=True`` the k-reciprocal re-ranked
    matrix from ``reid_core.evaluation.rerank.re_ranking`` (defaults ``k1=20, k2=6,
    lambda_value=0.3``, override with ``rerank_params``) is computed on the full gallery and
    evaluated with :func:`evaluate_rank`; that needs the full (Nq, Ng) matrix in memory.
    """
    q_t = _to_tensor(q_feat, "q_feat")
    g_t = _to_tensor(g_feat, "g_feat")
    n_q, n_g = q_t.shape[0], g_t.shape[0]
    if q_t.shape[1] != g_t.shape[1]:
        raise ValueError(f"q_feat has dim {q_t.shape[1]} but g_feat has dim {g_t.shape[1]}")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    chunk_size = _check_chunk_size(chunk_size)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    q_pids = _as_ids(q_pids, n_q, "q_pids")
    g_pids = _as_ids(g_pids, n_g, "g_pids")
    q_cams = _as_ids(q_camids, n_q, "q_camids", default=-1)
    g_cams = _as_ids(g_camids, n_g, "g_camids", default=-1)

    if rerank:
        from reid_core.evaluation.rerank import re_ranking  # lazy: optional, heavier module

        params = {"k1": 20, "k2": 6, "lambda_value": 0.3}
        params.update(rerank_params or {})
        dist = re_ranking(q_t.cpu().numpy(), g_t.cpu().numpy(), **params)
        return evaluate_rank(
            dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, camera_filter=camera_filter,
            chunk_size=chunk_size, return_per_query=return_per_query, progress=progress,
        )

    keep = np.flatnonzero(g_pids != -1)
    if keep.size != n_g:
        g_t = g_t[torch.from_numpy(keep)]
    gallery = _Gallery(g_pids[keep], g_cams[keep])
    coll = _Collector()
    n_chunks = (n_q + chunk_size - 1) // chunk_size
    chunks = iter_distance_chunks(q_t, g_t, metric=metric, chunk_size=chunk_size, device=device, _check=False)
    for s, block in tqdm(chunks, desc="evaluate", total=n_chunks, disable=not progress):
        e = s + block.shape[0]
        coll.add(_rank_chunk(block, q_pids[s:e], q_cams[s:e], gallery, camera_filter))
    return coll.result(max_rank, return_per_query)
