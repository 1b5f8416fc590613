"""k-NN backends behind one interface: faiss (exact, IVF, HNSW) against exact search and a plain
float64 loop, the sampled recall the clustering stage records, and its low-recall warning."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from reid_core.cluster import knn as knn_mod
from reid_core.cluster.knn import KnnResult, exact_neighbours_of, knn_recall, knn_search, sampled_recall

pytest.importorskip("faiss")


def naive_neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of every row by squared distance of L2-normalised float64 rows, self first,
    ties by index: a plain double loop."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    idx = np.zeros((n, k), dtype=np.int64)
    dist = np.zeros((n, k))
    for i in range(n):
        d = [(0.0 if j == i else float(np.sum((x[i] - x[j]) ** 2)), 0 if j == i else 1, j) for j in range(n)]
        d.sort(key=lambda t: (t[1], t[0], t[2]))
        idx[i] = [t[2] for t in d[:k]]
        dist[i] = [t[0] for t in d[:k]]
    return idx, dist


def clustered(n: int, d: int, n_centres: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d))
    return centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, d))


def naive_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = total = 0
    for a, e in zip(approx, exact):
        for j in e[1:]:
            total += 1
            hits += int(j in set(a[1:].tolist()))
    return hits / total


@pytest.fixture(scope="module")
def small64():
    rng = np.random.default_rng(3)
    return rng.standard_normal((150, 12))  # float64; random data has no ties at 1e-6


def test_exact_faiss_equals_exact_torch_and_a_plain_loop(small64):
    k = 10
    ref_idx, ref_dist = naive_neighbours(small64, k)
    # the reference's ranking gaps are far above fp32 rounding, so every correct backend must agree exactly
    assert np.diff(ref_dist[:, 1:], axis=1).min() > 1e-5
    for method in ("exact", "faiss"):
        res = knn_search(small64, k, method)
        np.testing.assert_array_equal(res.indices, ref_idx, err_msg=method)
        np.testing.assert_allclose(res.distances, ref_dist, atol=2e-6, err_msg=method)
        assert res.indices.dtype == np.int64 and res.distances.dtype == np.float32


@pytest.mark.parametrize("method", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_faiss_recall_on_clustered_data(method):
    x = clustered(4000, 64, 200, 0.35)
    k = 30
    exact = knn_search(x, k, "exact")
    approx = knn_search(x, k, method)
    rec = knn_recall(approx.indices, exact.indices, k)
    assert rec >= 0.95, (method, rec)
    assert (approx.indices[:, 0] == np.arange(len(x))).all() and (approx.distances[:, 0] == 0).all()
    # distances are recomputed from the features: a found neighbour has its exact distance
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(0, len(x), 97)
    d64 = ((xn[rows, None, :] - xn[approx.indices[rows]]) ** 2).sum(-1)
    np.testing.assert_allclose(approx.distances[rows], d64, atol=2e-6)


def test_faiss_options_are_checked_and_a_narrow_ivf_search_loses_recall():
    x = np.random.default_rng(1).standard_normal((3000, 32))  # no structure: one probed list misses most neighbours
    with pytest.raises(ValueError, match="not options"):
        knn_search(x, 10, "faiss-ivf", search_option={"efSearch": 3})
    exact = knn_search(x, 20, "exact")
    narrow = knn_search(x, 20, "faiss-ivf", search_option={"nlist": 64, "nprobe": 1})
    assert knn_recall(narrow.indices, exact.indices) < 0.9


def test_exact_neighbours_of_same_for_every_chunk(small64, monkeypatch):
    """The block size is a memory knob only: 1 row, 3 rows, the default and a block budget that
    forces 2 rows a block all give the plain loop's neighbours; a chunk below 1 is refused."""
    k = 8
    ref_idx, _ = naive_neighbours(small64, k)
    x = knn_mod.normalize_features(small64)
    rows = np.array([0, 3, 7, 42, 99, 149])
    for chunk in (1, 3, None):
        np.testing.assert_array_equal(exact_neighbours_of(x, rows, k, chunk_size=chunk), ref_idx[rows])
    monkeypatch.setattr(knn_mod, "RECALL_BLOCK_BYTES", 2 * 4 * x.shape[0])
    np.testing.assert_array_equal(exact_neighbours_of(x, rows, k), ref_idx[rows])
    with pytest.raises(ValueError, match="chunk_size"):
        exact_neighbours_of(x, rows, k, chunk_size=0)


def test_exact_neighbours_of_and_sampled_recall_match_plain_loops(small64):
    k = 8
    ref_idx, _ = naive_neighbours(small64, k)
    rows = np.array([0, 7, 42, 149])
    np.testing.assert_array_equal(exact_neighbours_of(knn_mod.normalize_features(small64), rows, k), ref_idx[rows])
    # damage the lists: replace the last 3 neighbours of every other row by far-away rows
    bad = ref_idx.copy()
    rng = np.random.default_rng(0)
    for i in range(0, len(bad), 2):
        far = [j for j in rng.permutation(len(bad)) if j not in ref_idx[i]][:3]
        bad[i, -3:] = far
    res = KnnResult(indices=bad, distances=np.zeros(bad.shape, np.float32))
    out = sampled_recall(small64, res, k, n_sample=1000)
    assert out["n_sample"] == len(small64) and out["k"] == k
    assert out["recall"] == pytest.approx(naive_recall(bad, ref_idx), abs=1e-12)
    assert out["recall"] == pytest.approx(1 - 0.5 * 3 / (k - 1), abs=1e-12)
    sub = sampled_recall(small64, res, k, n_sample=50, seed=1)
    assert sub["n_sample"] == 50 and 0.5 < sub["recall"] < 1.0


def test_clustering_stage_records_recall_and_warns_when_it_is_low(tmp_path):
    from reid_core.io.features_io import write_features
    from reid_core.pipeline import cache, stages
    from reid_core.pipeline.config import RunConfig

    x = clustered(1200, 32, 60, 0.5, seed=2).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    feats = write_features(tmp_path / "features.parquet", np.arange(len(x)), x, 1)

    good = RunConfig(knn="faiss-hnsw", k1=20, min_samples=4)
    out = stages.build_pseudo_labels(feats, good, 1, tmp_path / "good.parquet", progress=False)
    meta = cache.read_meta(out)
    assert meta["knn_recall"] >= 0.95 and meta["knn_recall_k"] == 20 and meta["knn_recall_sample"] == 1000

    noise = np.random.default_rng(2).standard_normal((1200, 32)).astype(np.float32)
    noise_feats = write_features(tmp_path / "noise.parquet", np.arange(len(noise)), noise, 1)
    bad = RunConfig(knn="faiss-ivf", k1=20, min_samples=4, knn_options={"nlist": 30, "nprobe": 1})
    with pytest.warns(stages.LowKnnRecallWarning, match="recall@k1"):
        out = stages.build_pseudo_labels(noise_feats, bad, 1, tmp_path / "bad.parquet", progress=False)
    assert cache.read_meta(out)["knn_recall"] < 0.9

    with warnings.catch_warnings():
        warnings.simplefilter("error", stages.LowKnnRecallWarning)
        out = stages.build_pseudo_labels(feats, RunConfig(k1=20, min_samples=4), 1, tmp_path / "exact.parquet",
                                         progress=False)
    assert "knn_recall" not in cache.read_meta(out)  # exact search: nothing to measure


def test_exact_faiss_gives_the_same_pseudo_labels_as_exact():
    from reid_core.pipeline.stages import compute_pseudo_labels
    from reid_core.pipeline.config import RunConfig

    x = clustered(600, 24, 40, 0.4, seed=4).astype(np.float32)
    a, _ = compute_pseudo_labels(x, None, RunConfig(k1=15, min_samples=3))
    b, info = compute_pseudo_labels(x, None, RunConfig(k1=15, min_samples=3, knn="faiss"))
    np.testing.assert_array_equal(a, b)
    assert info["knn_recall"] == 1.0


def test_config_knows_the_backends_and_the_cli_reaches_the_new_fields():
    from reid_core.cli import build_parser, config_from_args
    from reid_core.pipeline.config import KNN_METHODS, RunConfig

    assert KNN_METHODS == knn_mod.KNN_METHODS
    with pytest.raises(ValueError, match="RunConfig.knn"):
        RunConfig(knn="annoy")
    args = build_parser().parse_args(["config", "--knn", "faiss-ivf", "--knn-options", '{"nprobe": 64}',
                                      "--knn-recall-sample", "500"])
    cfg = config_from_args(args)
    assert (cfg.knn, cfg.knn_options, cfg.knn_recall_sample) == ("faiss-ivf", {"nprobe": 64}, 500)
    assert "knn_options" not in RunConfig().cluster_params()  # digests of existing runs unchanged
    assert RunConfig(knn_options={"nprobe": 64}).cluster_params()["knn_options"] == {"nprobe": 64}
