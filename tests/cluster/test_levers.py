"""Label-free clustering levers: camera normalisation, density eps, splitting, health warnings.

Each vectorised function is checked against a plain loop written from its definition (float64),
plus the edge cases (no camera ids, one identity, all outliers, nothing to split)."""
import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from reid_core.cluster.camera import camera_normalize, has_camera_ids
from reid_core.cluster.pseudo_labels import (
    clustering_health,
    cluster_features,
    eps_from_density,
    split_large_clusters,
)


def test_camera_normalize_matches_loop():
    g = np.random.default_rng(0)
    x = g.normal(size=(30, 5))
    cams = g.integers(-1, 3, size=30)
    out = camera_normalize(x, cams, strength=0.8)
    unit = [v / np.linalg.norm(v) for v in x]
    for i in range(30):
        members = [unit[j] for j in range(30) if cams[j] == cams[i]]
        v = unit[i] - 0.8 * np.mean(members, axis=0)
        np.testing.assert_allclose(out[i], v / np.linalg.norm(v), atol=1e-5)
    assert out.dtype == np.float32


def test_camera_normalize_edge_cases():
    x = np.random.default_rng(1).normal(size=(6, 4))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(camera_normalize(x, None), unit, atol=1e-6)  # no camera ids
    np.testing.assert_allclose(camera_normalize(x, np.arange(6) % 2, strength=0.0), unit, atol=1e-6)
    # a camera with a single image: its centred feature is zero, it keeps its own direction
    out = camera_normalize(x, np.array([0, 0, 0, 0, 0, 1]))
    np.testing.assert_allclose(out[5], unit[5], atol=1e-6)
    assert not has_camera_ids(np.full(6, -1)) and not has_camera_ids(None) and has_camera_ids([0, 1, -1])
    with pytest.raises(ValueError, match="camids"):
        camera_normalize(x, np.zeros(5, int))
    with pytest.raises(ValueError, match="strength"):
        camera_normalize(x, np.zeros(6, int), strength=2)


def test_camera_normalize_removes_a_camera_offset():
    """Two people, two cameras with a strong per-camera offset: without normalisation the nearest
    neighbour of every image is the other person in the same camera; with it, the same person."""
    g = np.random.default_rng(2)
    people = g.normal(size=(2, 16))
    offset = 3 * g.normal(size=(2, 16))
    x, pid, cam = [], [], []
    for p, c in itertools.product(range(2), range(2)):
        for _ in range(5):
            x.append(people[p] + offset[c] + 0.05 * g.normal(size=16))
            pid.append(p)
            cam.append(c)
    x, pid, cam = np.array(x), np.array(pid), np.array(cam)

    def cross_camera_nn_same_person(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = f @ f.T
        hits = []
        for i in range(len(f)):
            other = np.flatnonzero(cam != cam[i])
            hits.append(pid[other[np.argmax(s[i, other])]] == pid[i])
        return np.mean(hits)

    raw, fixed = x / np.linalg.norm(x, axis=1, keepdims=True), camera_normalize(x, cam)
    assert cross_camera_nn_same_person(fixed) == 1.0
    # and the within-camera confusion is gone: mean same-camera other-person similarity drops
    def same_cam_other_pid(f):
        s = f @ f.T
        return np.mean([s[i, j] for i in range(len(f)) for j in range(len(f)) if cam[i] == cam[j] and pid[i] != pid[j]])
    assert same_cam_other_pid(fixed) < same_cam_other_pid(raw) - 0.3


def test_eps_from_density_matches_sorted_pairs():
    g = np.random.default_rng(3)
    n = 12
    d = g.uniform(0, 1, size=(n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    pairs = sorted(d[i, j] for i in range(n) for j in range(i + 1, n))
    rho = 0.1
    m = int(round(rho * n * (n - 1) / 2))
    assert eps_from_density(d, rho, eps_max=1.0, eps_min=1e-6) == pytest.approx(np.mean(pairs[:m]))
    # sparse: only pairs below 0.5 stored, missing ones mean 1
    sd = sp.csr_matrix(np.where(d < 0.5, d, 0))
    sd.setdiag(0)
    stored = sorted(v for v in pairs if v < 0.5)
    big = 0.9
    m = int(round(big * n * (n - 1) / 2))
    expected = (sum(stored) + (m - len(stored))) / m if len(stored) < m else np.mean(stored[:m])
    assert eps_from_density(sd, big, eps_max=1.0, eps_min=1e-6) == pytest.approx(expected)
    assert eps_from_density(d, rho, eps_max=0.01, eps_min=0.005) == 0.01  # clipped
    with pytest.raises(ValueError, match="rho"):
        eps_from_density(d, 0.0)


def _blobs(sizes, spread, gap, seed=0):
    """1-D points: groups of ``sizes`` with ``spread`` inside a group and ``gap`` between groups."""
    g = np.random.default_rng(seed)
    pts, centre = [], 0.0
    for s in sizes:
        pts += list(centre + spread * np.arange(s) + g.uniform(0, 1e-3, s))
        centre = pts[-1] + gap
    x = np.array(pts)
    return np.abs(x[:, None] - x[None, :])


def test_split_large_clusters_cuts_a_chain():
    # two groups of 8 points 0.1 apart, joined by a gap of 0.16: eps 0.2 chains them into one cluster
    d = _blobs([8, 8], spread=0.1, gap=0.16)
    labels = cluster_features(d, "dbscan", eps=0.2, min_samples=2)
    assert len(set(labels)) == 1
    split = split_large_clusters(d, labels, max_size=10, eps=0.2, min_samples=2, shrink=0.7)
    assert sorted(np.bincount(split[split >= 0])) == [8, 8]
    assert (split[:8] == split[0]).all() and (split[8:] == split[8]).all() and split[0] != split[8]
    # the same on a sparse matrix (missing = 1)
    split_sparse = split_large_clusters(sp.csr_matrix(np.where(d <= 0.3, d, 0)), labels, 10, 0.2, 2, 0.7)
    np.testing.assert_array_equal(split_sparse, split)


def test_split_large_clusters_edge_cases():
    d = _blobs([5, 5], spread=0.1, gap=1.0)
    labels = cluster_features(d, "dbscan", eps=0.15, min_samples=2)
    # nothing above max_size: unchanged
    np.testing.assert_array_equal(split_large_clusters(d, labels, 5, 0.15, 2), labels)
    # all outliers: unchanged
    out = np.full(10, -1)
    np.testing.assert_array_equal(split_large_clusters(d, out, 2, 0.15, 2), out)
    # one identity, evenly spread: a tighter eps cannot cut it, it stays whole
    one = _blobs([10], spread=0.1, gap=1.0)
    lab = cluster_features(one, "dbscan", eps=0.15, min_samples=2)
    kept = split_large_clusters(one, lab, 4, 0.15, 2, shrink=0.9, min_eps=0.12)
    np.testing.assert_array_equal(kept, np.zeros(10, dtype=np.int64))  # eps floor reached: kept whole
    with pytest.raises(ValueError, match="max_size"):
        split_large_clusters(d, labels, 1, 0.15)


def test_split_reassigns_left_over_members():
    """Members that the tighter DBSCAN leaves alone join the nearest part instead of being dropped."""
    d = _blobs([6, 1, 6], spread=0.1, gap=0.17)  # a lone point between two groups
    labels = cluster_features(d, "dbscan", eps=0.2, min_samples=2)
    assert len(set(labels)) == 1
    with_reassign = split_large_clusters(d, labels, 8, 0.2, 3, shrink=0.8)
    without = split_large_clusters(d, labels, 8, 0.2, 3, shrink=0.8, reassign=False)
    assert (with_reassign >= 0).sum() > (without >= 0).sum()
    assert len(set(with_reassign[with_reassign >= 0])) == 2


def test_clustering_health_warnings():
    healthy = np.repeat(np.arange(20), 5)
    assert clustering_health(healthy)["warnings"] == []
    chained = healthy.copy()
    chained[:40] = 0  # one cluster with 40% of the images
    h = clustering_health(chained)
    assert h["largest_share"] == pytest.approx(0.4) and "chaining" in h["warnings"][0]
    outliers = np.full(100, -1)
    outliers[:5] = 0
    outliers[5:8] = 1
    assert any("outliers" in w for w in clustering_health(outliers)["warnings"])
    # collapse between rounds: 20 clusters of 5 -> 10 clusters, the largest grew
    collapsed = np.repeat(np.arange(10), 10)
    h = clustering_health(collapsed, previous=healthy)
    assert h["cluster_ratio"] == pytest.approx(0.5) and any("collapsing" in w for w in h["warnings"])
    # fewer clusters that did not grow is not a collapse (e.g. outliers dropped)
    fewer = np.where(healthy < 10, healthy, -1)
    assert not any("collapsing" in w for w in clustering_health(fewer, previous=healthy)["warnings"])


def test_stage_warns_on_degenerate_clustering(tmp_path):
    """The clustering stage raises DegenerateClusteringWarning (and records the health in its
    sidecar) for one cluster swallowing everything, and for a collapse against the previous round."""
    import pandas as pd

    from reid_core.cluster.pseudo_labels import DegenerateClusteringWarning
    from reid_core.io.features_io import write_features
    from reid_core.pipeline import RunConfig, cache
    from reid_core.pipeline.stages import build_pseudo_labels

    g = np.random.default_rng(0)
    n = 60
    ids = np.arange(n)
    same = np.tile(g.normal(size=(1, 16)), (n, 1)) + 1e-3 * g.normal(size=(n, 16))  # one blob
    write_features(tmp_path / "f.parquet", ids, same.astype(np.float32), 1)
    prev = pd.DataFrame({"image_id": ids, "label": np.repeat(np.arange(15), 4), "round": 0})
    prev.to_parquet(tmp_path / "prev.parquet")
    cfg = RunConfig(k1=10, k2=3, min_samples=4)
    with pytest.warns(DegenerateClusteringWarning) as caught:
        out = build_pseudo_labels(tmp_path / "f.parquet", cfg, 1, tmp_path / "pl.parquet", progress=False,
                                  previous_labels_path=tmp_path / "prev.parquet")
    messages = " ".join(str(w.message) for w in caught)
    assert "chaining" in messages and "collapsing" in messages
    meta = cache.read_meta(out)
    assert meta["health_largest_share"] > 0.5 and meta["health_cluster_ratio"] < 0.7
    assert len(meta["health_warnings"]) == 2
    # well separated people: no warning
    people = np.repeat(g.normal(size=(15, 16)) * 3, 4, axis=0) + 0.01 * g.normal(size=(n, 16))
    write_features(tmp_path / "g.parquet", ids, people.astype(np.float32), 1)
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error", DegenerateClusteringWarning)
        build_pseudo_labels(tmp_path / "g.parquet", cfg, 1, tmp_path / "pl2.parquet", progress=False,
                            previous_labels_path=tmp_path / "prev.parquet")
