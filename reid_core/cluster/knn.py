"""k-nearest-neighbour search on L2-normalised features, without an N x N matrix.

Distances are squared Euclidean distances between L2-normalised rows,
``d(i, j) = ||x_i - x_j||^2 = 2 - 2 cos(x_i, x_j)`` (clamped at 0), the distance Cluster-Contrast
uses for its k-reciprocal encoding. Rankings by this distance and by cosine similarity agree.

Conventions shared by every backend (the k-reciprocal code relies on them):

* row ``i`` of the result lists its neighbours nearest first, and **the sample itself is always
  at position 0** with distance exactly 0 (even when duplicates tie with it);
* neighbours at equal distance are ordered by index (ties across the k-th place are
  implementation-defined, as in every top-k);
* indices are ``int64``, distances ``float32``.

Backends
--------
``"exact"``
    Chunked fp32 matrix products with ``torch`` on the device given (CPU or CUDA). The Gram
    matrix is symmetric, so only the blocks on and above the diagonal are computed: each row
    block is multiplied with the rows from its own start to the end, the block's own rows take
    their top-k from it, and the transposed part updates the running top-k of the later rows.
    Memory: ``O(N * k + chunk_size * N)``.
    On CPUs with native bf16 products (AVX512-BF16, AMX) and from 4,096 rows on, the same
    neighbours are found faster by a bf16 pre-filter with exact fp32 re-scoring and a proven
    error bound (:mod:`reid_core.cluster.bf16_knn`); ``search_option={"prefilter": "none"}``
    selects the plain fp32 search, ``"bf16"`` forces the pre-filter (``"auto"`` is the default);
    ``margin`` (48) and ``block`` (1024) tune it.
``"faiss"``
    Exact search with faiss ``IndexFlatIP`` (inner product = cosine on normalised rows). Same
    neighbours as ``"exact"`` up to fp32 rounding of near-ties; faster on many cores, and on a GPU
    when faiss was built with CUDA support (``faiss-gpu``) and ``device`` is a CUDA device.
``"faiss-ivf"``
    Approximate: inverted lists (``IndexIVFFlat``, inner product). ``nlist`` defaults to about
    ``4 sqrt(N)`` (at most ``N / 39`` so every list gets training points), ``nprobe`` to
    ``max(32, nlist / 8)``; the coarse k-means runs ``train_niter`` (25) iterations on at most
    ``train_points_per_list`` (256) x ``nlist`` rows (a seeded sample). At 2048-d on a CPU that
    training costs as much as the search; fewer iterations or points cost recall (measured:
    10 iterations on 64 points per list and half the lists, recall@30 0.93 instead of 0.95 on
    12,936 clustered vectors).
``"faiss-hnsw"``
    Approximate graph search (``IndexHNSWFlat``, inner product): ``M`` 32, ``efConstruction`` 80,
    ``efSearch`` ``max(128, 2k)``.
``"pynndescent"``
    Approximate graph search (NN-descent).

Every approximate backend (and ``"faiss"``) returns candidate neighbours whose similarities are
then recomputed in fp32 from the features here, so only *which* neighbours are found can differ
from ``"exact"``; :func:`knn_recall` / :func:`sampled_recall` measure that. Options of a backend
(``nlist``, ``nprobe``, ``M``, ``ef_search``, ``ef_construction``, ``n_neighbors`` ...) go in
``search_option``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reid_core.device import pick_device

from .bf16_knn import PREFILTER_OPTIONS, bf16_knn, resolve_prefilter

__all__ = ["KnnResult", "knn_search", "knn_recall", "sampled_recall", "exact_neighbours_of", "normalize_features",
           "pair_similarities", "faiss_gpu_available", "KNN_METHODS", "APPROXIMATE_METHODS"]

KNN_METHODS = ("exact", "faiss", "faiss-ivf", "faiss-hnsw", "pynndescent")
#: backends whose neighbour lists may miss true neighbours (their recall is worth measuring)
APPROXIMATE_METHODS = ("faiss-ivf", "faiss-hnsw", "pynndescent")


@dataclass
class KnnResult:
    """Neighbour lists of every sample (see module docstring for the conventions).

    ``row_max`` (only when asked for) is each row's largest distance to *any* sample,
    ``max_j d(i, j)``, which Zhong et al.'s re-ranking uses to normalise distances.
    """

    indices: np.ndarray  # (N, k) int64
    distances: np.ndarray  # (N, k) float32
    row_max: np.ndarray | None = None  # (N,) float32


def normalize_features(features: Any, name: str = "features") -> np.ndarray:
    """Validate a 2-D feature array and return it L2-normalised as C-contiguous float32.

    Raises ``ValueError`` naming ``name`` for a wrong shape, non-finite values or all-zero rows.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().float().numpy()
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{name} contains NaN or inf (first bad row {bad})")
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"{name} has an all-zero row ({bad}); cannot L2-normalise it")
    return x / norms[:, None]


def _sort_rows(sim: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by descending similarity, ties by index (deterministic)."""
    order = np.lexsort((idx, -sim), axis=-1)
    return np.take_along_axis(sim, order, axis=1), np.take_along_axis(idx, order, axis=1)


def pair_similarities(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``x[rows[t]] . x[cols[t]]`` for every pair t (fp32), in chunks (no (P, D) array at once)."""
    out = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), chunk):
        a = x[rows[s : s + chunk]]
        b = x[cols[s : s + chunk]]
        out[s : s + chunk] = np.einsum("pd,pd->p", a, b)
    return out


def _finish(sim: np.ndarray, idx: np.ndarray, row_max: np.ndarray | None) -> KnnResult:
    """Shared tail: self first with distance 0, sort, sims -> squared distances."""
    n = sim.shape[0]
    rows = np.arange(n)
    # self always first: give it +inf similarity, whatever it had
    is_self = idx == rows[:, None]
    sim = np.where(is_self, np.inf, sim)
    sim, idx = _sort_rows(sim, idx)
    dist = np.maximum(2.0 - 2.0 * sim, 0.0).astype(np.float32)
    dist[:, 0] = 0.0
    return KnnResult(indices=idx.astype(np.int64), distances=dist, row_max=row_max)


def _exact_knn(x: np.ndarray, k: int, chunk_size: int, device: torch.device, want_row_max: bool, progress: bool):
    n = x.shape[0]
    xt = torch.from_numpy(x).to(device)
    best_v = torch.full((n, k), -math.inf, device=device)
    best_i = torch.full((n, k), -1, dtype=torch.long, device=device)
    row_min = torch.full((n,), math.inf, device=device) if want_row_max else None

    def merge(rows: slice, cand_v: torch.Tensor, cand_i: torch.Tensor) -> None:
        v = torch.cat([best_v[rows], cand_v], dim=1)
        i = torch.cat([best_i[rows], cand_i], dim=1)
        top_v, pos = torch.topk(v, k, dim=1)
        best_v[rows] = top_v
        best_i[rows] = torch.gather(i, 1, pos)

    starts = range(0, n, chunk_size)
    try:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="exact kNN", disable=not progress, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    with torch.no_grad():
        for s in starts:
            e = min(s + chunk_size, n)
            b = e - s
            sim = xt[s:e] @ xt[s:].T  # (b, n - s), fp32
            if row_min is not None:
                row_min[s:e] = torch.minimum(row_min[s:e], sim.min(dim=1).values)
                if e < n:
                    row_min[e:] = torch.minimum(row_min[e:], sim[:, b:].min(dim=0).values)
            ar = torch.arange(b, device=device)
            sim[ar, ar] = math.inf  # self first
            cols = torch.arange(s, n, device=device)
            kk = min(k, n - s)
            top_v, pos = torch.topk(sim, kk, dim=1)
            merge(slice(s, e), top_v, cols[pos])
            if e < n:
                t = sim[:, b:].T  # (n - e, b): later rows vs this block's rows
                kk = min(k, b)
                top_v, pos = torch.topk(t, kk, dim=1)
                merge(slice(e, n), top_v, pos + s)
    sim_np = best_v.cpu().numpy().astype(np.float64)
    idx_np = best_i.cpu().numpy()
    row_max = None
    if row_min is not None:
        row_max = np.maximum(2.0 - 2.0 * row_min.cpu().numpy().astype(np.float64), 0.0).astype(np.float32)
    return sim_np, idx_np, row_max


def _candidates_to_knn(x: np.ndarray, cand: np.ndarray, k: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn candidate neighbour lists (N, c) (may hold -1 padding, self, or repeats) into the k
    nearest: self first, fp32 similarities recomputed here, repeats dropped, sorted."""
    n = x.shape[0]
    rows = np.arange(n)
    cand = np.asarray(cand, dtype=np.int64)
    idx = np.concatenate([rows[:, None], np.where(cand == rows[:, None], -1, cand)], axis=1)
    valid = idx >= 0
    r = np.repeat(rows, idx.shape[1])
    c = np.where(valid, idx, rows[:, None]).ravel()
    # pairs per chunk: two (chunk, D) fp32 gathers of at most ~64 MB each, whatever D is
    chunk = max(1024, (64 << 20) // (4 * x.shape[1]))
    sim = pair_similarities(x, r, c, chunk=chunk).reshape(idx.shape).astype(np.float64)
    sim = np.where(valid, sim, -np.inf)
    sim[:, 0] = np.inf
    sim, idx = _sort_rows(sim, idx)
    repeat = np.zeros(idx.shape, dtype=bool)
    repeat[:, 1:] = idx[:, 1:] == idx[:, :-1]  # a neighbour listed twice sorts next to itself
    if repeat.any():
        sim, idx = _sort_rows(np.where(repeat, -np.inf, sim), idx)
    if idx.shape[1] < k or np.isneginf(sim[:, :k]).any():
        raise RuntimeError(f"{what} returned fewer than k={k} neighbours for some rows; widen its search "
                           "(search_option: nprobe / ef_search / n_neighbors)")
    return sim[:, :k], idx[:, :k]


def _pynndescent_knn(x: np.ndarray, k: int, options: dict[str, Any], progress: bool):
    try:
        from pynndescent import NNDescent
    except ImportError as exc:  # pragma: no cover - pynndescent is a dependency
        raise ImportError("knn='pynndescent' needs the pynndescent package (pip install pynndescent)") from exc
    n = x.shape[0]
    opts = {"n_neighbors": min(n, max(k + 1, 15)), "metric": "euclidean", "random_state": 0,
            "verbose": bool(progress), "low_memory": True}
    opts.update(options)
    if opts["n_neighbors"] < k:
        raise ValueError(f"search_option n_neighbors={opts['n_neighbors']} is smaller than the k={k} needed")
    index = NNDescent(x, **opts)
    idx, _ = index.neighbor_graph
    return _candidates_to_knn(x, idx, k, "pynndescent")


def _import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("knn='faiss*' needs the faiss package (pip install faiss-cpu, or faiss-gpu on CUDA)") from exc
    return faiss


def faiss_gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    try:
        faiss = _import_faiss()
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def faiss_index_options(method: str, n: int, k: int, options: dict[str, Any]) -> dict[str, int]:
    """The parameters a faiss backend will use for N rows and k neighbours (defaults filled in)."""
    opts = dict(options)
    if method == "faiss-ivf":
        nlist = int(opts.pop("nlist", 0) or max(1, min(int(round(4 * math.sqrt(n))), n // 39)))
        nprobe = int(opts.pop("nprobe", 0) or max(32, nlist // 8))
        out = {"nlist": nlist, "nprobe": min(nprobe, nlist), "train_niter": int(opts.pop("train_niter", 25)),
               "train_points_per_list": int(opts.pop("train_points_per_list", 256))}
    elif method == "faiss-hnsw":
        out = {"M": int(opts.pop("M", 32)), "ef_construction": int(opts.pop("ef_construction", 80)),
               "ef_search": int(opts.pop("ef_search", 0) or max(128, 2 * k))}
    else:
        out = {}
    opts.pop("batch_rows", None)
    if opts:
        raise ValueError(f"search_option {sorted(opts)} are not options of knn={method!r}")
    return out


def _faiss_knn(x: np.ndarray, k: int, method: str, options: dict[str, Any], device: torch.device, progress: bool):
    faiss = _import_faiss()
    n, d = x.shape
    opts = faiss_index_options(method, n, k, options)
    batch_rows = int(options.get("batch_rows", 16384))
    if method == "faiss":
        index = faiss.IndexFlatIP(d)
    elif method == "faiss-ivf":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, opts["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(d, opts["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opts["ef_construction"]
    if device.type == "cuda" and method != "faiss-hnsw" and faiss_gpu_available():
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, device.index or 0, index)
    if method == "faiss-ivf":
        # k-means of the coarse quantiser: its cost (n_train x nlist x D x niter) dominates at 2048-d
        n_train = min(n, opts["train_points_per_list"] * opts["nlist"])
        train = x if n_train == n else x[np.sort(np.random.default_rng(0).choice(n, n_train, replace=False))]
        ivf = faiss.extract_index_ivf(index) if device.type == "cuda" else index
        ivf.cp.niter = opts["train_niter"]
        ivf.cp.max_points_per_centroid = opts["train_points_per_list"]
        ivf.cp.seed = 0
        index.train(train)
    index.add(x)
    if method == "faiss-ivf":
        index.nprobe = opts["nprobe"]  # CPU and GPU IVF indexes both expose it
    elif method == "faiss-hnsw":
        index.hnsw.efSearch = opts["ef_search"]
    cand = np.empty((n, k), dtype=np.int64)
    starts = range(0, n, batch_rows)
    try:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{method} kNN", disable=not progress, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    for s in starts:
        _, cand[s : s + batch_rows] = index.search(x[s : s + batch_rows], k)
    return _candidates_to_knn(x, cand, k, method)


def knn_search(
    features: Any,
    k: int,
    method: str = "exact",
    *,
    chunk_size: int = 1024,
    device: str | torch.device = "cpu",
    return_row_max: bool = False,
    search_option: dict[str, Any] | None = None,
    progress: bool = False,
) -> KnnResult:
    """The ``k`` nearest samples of every sample (itself included, at position 0).

    ``features``: (N, D) array or tensor; rows are L2-normalised here.
    ``k`` is clamped to N. ``method``: one of ``KNN_METHODS`` (see module docstring).
    ``search_option``: options of the backend: for ``"pynndescent"`` keyword arguments of
    ``pynndescent.NNDescent`` (e.g. ``{"n_neighbors": 60, "n_jobs": 2}``); for ``"faiss-ivf"``
    ``nlist`` / ``nprobe``; for ``"faiss-hnsw"`` ``M`` / ``ef_construction`` / ``ef_search``;
    for every faiss backend ``batch_rows`` (query rows per search call); for ``"exact"``
    ``prefilter`` ("auto", "bf16", "none"), ``margin``, ``block``. ``return_row_max``
    (exact only, needed by re-ranking) also returns every row's largest distance.
    """
    if method not in KNN_METHODS:
        raise ValueError(f"knn method must be one of {KNN_METHODS}, got {method!r}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x = normalize_features(features)
    n = x.shape[0]
    k = min(int(k), n)
    row_max = None
    if method == "exact":
        dev = pick_device(device)
        opts = dict(search_option or {})
        unknown = sorted(set(opts) - set(PREFILTER_OPTIONS))
        if unknown:
            raise ValueError(f"search_option {unknown} are not options of knn='exact' (it takes {PREFILTER_OPTIONS})")
        if resolve_prefilter(opts.get("prefilter", "auto"), n, dev, return_row_max):
            sim, idx, _ = bf16_knn(x, k, margin=int(opts.get("margin", 48)), block=int(opts.get("block", 1024)),
                                   progress=progress)
        else:
            sim, idx, row_max = _exact_knn(x, k, int(chunk_size), dev, return_row_max, progress)
    else:
        if return_row_max:
            raise ValueError("return_row_max needs the exact backend (it is a maximum over all samples)")
        if method == "pynndescent":
            sim, idx = _pynndescent_knn(x, k, dict(search_option or {}), progress)
        else:
            sim, idx = _faiss_knn(x, k, method, dict(search_option or {}), pick_device(device), progress)
    return _finish(sim, idx, row_max)


def knn_recall(approx: np.ndarray, exact: np.ndarray, k: int | None = None, skip_self: bool = True) -> float:
    """Recall@k of approximate neighbour lists against exact ones.

    Fraction of the exact ``k`` nearest neighbours (self excluded when ``skip_self``, as it is
    trivially found) that the approximate lists' first ``k`` entries contain.
    """
    approx = np.asarray(approx)
    exact = np.asarray(exact)
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"approx and exact have different numbers of rows: {approx.shape[0]} vs {exact.shape[0]}")
    k = min(exact.shape[1], approx.shape[1]) if k is None else int(k)
    start = 1 if skip_self else 0
    a = approx[:, start:k]
    e = exact[:, start:k]
    if e.size == 0:
        return 1.0
    hits = (e[:, :, None] == a[:, None, :]).any(axis=2)
    return float(hits.mean())


#: memory of one (rows x N) fp32 similarity block in :func:`exact_neighbours_of` when no chunk is given
RECALL_BLOCK_BYTES = 256 << 20


def exact_neighbours_of(x: np.ndarray, rows: np.ndarray, k: int, chunk_size: int | None = None) -> np.ndarray:
    """Exact k nearest samples (self first) of the samples ``rows`` of L2-normalised ``x``, by
    fp32 products of those rows with all of ``x`` (``O(len(rows) * N)`` work, ``chunk_size * N``
    memory). ``chunk_size`` defaults to as many rows as fit :data:`RECALL_BLOCK_BYTES` (1,024 at
    most): at 10^6 samples a fixed 1,024 rows made a 4 GB block. Ties are broken by index, as in
    :func:`knn_search`."""
    if chunk_size is None:
        chunk_size = max(1, min(1024, RECALL_BLOCK_BYTES // (4 * max(1, x.shape[0]))))
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    rows = np.asarray(rows, dtype=np.int64)
    k = min(int(k), x.shape[0])
    out = np.empty((len(rows), k), dtype=np.int64)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        for s in range(0, len(rows), chunk_size):
            r = torch.from_numpy(rows[s : s + chunk_size])
            sim = xt[r] @ xt.T
            sim[torch.arange(len(r)), r] = math.inf
            top_v, top_i = torch.topk(sim, k, dim=1)
            sv, si = _sort_rows(top_v.numpy().astype(np.float64), top_i.numpy())
            out[s : s + chunk_size] = si
    return out


def sampled_recall(features: Any, result: KnnResult, k: int, n_sample: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Recall@k of ``result`` against exact k-NN on ``n_sample`` rows drawn at random (seeded).

    Returns ``{"recall", "k", "n_sample"}``; all rows are used when N <= ``n_sample``. Cost: one
    (n_sample x N) product, so cheap next to the search itself.
    """
    x = normalize_features(features)
    n = x.shape[0]
    k = min(int(k), n, result.indices.shape[1])
    rows = np.arange(n) if n <= n_sample else np.sort(np.random.default_rng(seed).choice(n, int(n_sample), replace=False))
    exact = exact_neighbours_of(x, rows, k)
    return {"recall": knn_recall(result.indices[rows, :k], exact, k), "k": int(k), "n_sample": int(len(rows))}
