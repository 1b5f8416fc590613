"""bench/jaccard.py --vs-reference at small sizes, and its reference re-implementation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from reid_core.cluster.jaccard import compute_jaccard_distance, sparse_distance_to_dense


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("jaccard")


@pytest.fixture(scope="module")
def reference(load_bench):
    return load_bench("jaccard_reference")


@pytest.mark.parametrize("data", ["random", "clustered"])
def test_reference_equals_ours(bench, reference, data):
    x = bench.unit_vectors(400, 32, data)
    ref = reference.reference_jaccard(x, k1=20, k2=6)
    ours = sparse_distance_to_dense(compute_jaccard_distance(x, k1=20, k2=6))
    assert np.abs(ref - ours).max() < 1e-5
    cut = sparse_distance_to_dense(compute_jaccard_distance(x, k1=20, k2=6, max_distance=0.6))
    within = ref <= 0.6 - 1e-6
    assert np.abs(cut[within] - ref[within]).max() < 1e-5 and (cut[ref > 0.6 + 1e-6] == 1).all()


def test_reference_knn_without_faiss(reference, monkeypatch):
    """The torch fallback of the reference's k-NN ranks like faiss (self first)."""
    import builtins

    x = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with_faiss = reference._knn_rank(x, 8)
    real_import = builtins.__import__

    def no_faiss(name, *a, **k):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    without = reference._knn_rank(x, 8)
    assert (without[:, 0] == np.arange(120)).all()
    assert all(set(a) == set(b) for a, b in zip(with_faiss, without))


def test_vs_reference_records(bench, capsys):
    status = bench.main(["--vs-reference", "--vs-both-data", "--n", "300", "--dim", "32", "--timeout", "600"])
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["vs"] for r in lines] == ["ours", "reference", "speedup"] * 2
    assert [r["data"] for r in lines[::3]] == ["random", "clustered"]
    for r in lines:
        if r["vs"] == "speedup":
            assert r["speedup_wall"] > 0 and r["speedup_cpu"] > 0 and r["cpu_model"]
        else:
            assert r["seconds"] > 0 and r["cpu_seconds"] > 0 and r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
            assert r["n"] == 300 and r["dim"] == 32
    # both count the same pairs within the cut-off
    for data_lines in (lines[0:2], lines[3:5]):
        assert data_lines[0]["pairs_within_cutoff"] == data_lines[1]["pairs_within_cutoff"]


def test_case_passes_knn_options(bench, capsys):
    """``--case ... --knn-options`` reaches the backend and is recorded; a wrong option is refused."""
    pytest.importorskip("faiss")
    status = bench.main(["--case", "800", "32", "faiss-ivf", "0.6", "clustered",
                         "--knn-options", '{"nlist": 10, "nprobe": 10}'])
    assert status == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["knn_options"]["nlist"] == 10 and rec["knn_options"]["nprobe"] == 10
    # every list probed: IVF is exhaustive, so recall is exact
    assert rec["recall_at_k1"] == 1.0
    with pytest.raises(ValueError, match="not options"):
        bench.run_case(800, 32, "faiss-ivf", 0.6, data="clustered", knn_options={"n_probe": 3})
