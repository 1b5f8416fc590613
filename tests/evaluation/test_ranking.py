"""CMC / mAP / mINP against a plain per-query loop written from the definitions."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from reid_core.evaluation import distance_matrix, evaluate_features, evaluate_rank, stable_rank_order


# ----------------------------------------------------------------------------- naive reference
def naive_eval(dist, q_pids, g_pids, q_cams=None, g_cams=None, camera_filter=True, max_rank=10):
    """One query at a time, Python lists only. Ties: (distance, gallery index) ascending."""
    n_q, n_g = len(dist), (len(dist[0]) if len(dist) else len(g_pids))
    q_cams = [-1] * n_q if q_cams is None else list(q_cams)
    g_cams = [-1] * n_g if g_cams is None else list(g_cams)
    per = []
    for i in range(n_q):
        order = sorted(range(n_g), key=lambda j: (float(dist[i][j]), j))
        ranked = []
        for j in order:
            if g_pids[j] == -1:
                continue  # junk
            same_cam = camera_filter and q_cams[i] != -1 and g_cams[j] != -1 and g_cams[j] == q_cams[i]
            if g_pids[j] == q_pids[i] and same_cam:
                continue  # same identity seen by the same camera
            ranked.append(g_pids[j] == q_pids[i])
        if not any(ranked):
            per.append(None)
            continue
        hits, precisions, last = 0, [], 0
        for r, m in enumerate(ranked, start=1):
            if m:
                hits += 1
                precisions.append(hits / r)
                last = r
        first = ranked.index(True) + 1
        per.append(dict(first=first, ap=sum(precisions) / hits, inp=hits / last, n=hits))
    valid = [p for p in per if p is not None]
    res = dict(n_queries=n_q, n_valid=len(valid), n_skipped=n_q - len(valid), per=per)
    if valid:
        res["cmc"] = [sum(p["first"] <= k for p in valid) / len(valid) for k in range(1, max_rank + 1)]
        res["mAP"] = sum(p["ap"] for p in valid) / len(valid)
        res["mINP"] = sum(p["inp"] for p in valid) / len(valid)
        for k in (1, 5, 10):
            res[f"rank{k}"] = sum(p["first"] <= k for p in valid) / len(valid)
    return res


def assert_matches_naive(out, ref, max_rank=10):
    assert out["n_queries"] == ref["n_queries"]
    assert out["n_valid"] == ref["n_valid"]
    assert out["n_skipped"] == ref["n_skipped"]
    if ref["n_valid"] == 0:
        assert math.isnan(out["mAP"]) and math.isnan(out["rank1"])
        return
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        assert out[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_allclose(out["cmc"], ref["cmc"], atol=1e-12)
    assert len(out["cmc"]) == max_rank
    if "per_query" in out:
        pq = out["per_query"]
        for i, p in enumerate(ref["per"]):
            assert bool(pq["valid"][i]) == (p is not None)
            if p is not None:
                assert pq["first_rank"][i] == p["first"]
                assert pq["n_matches"][i] == p["n"]
                assert pq["ap"][i] == pytest.approx(p["ap"], abs=1e-12)
                assert pq["inp"][i] == pytest.approx(p["inp"], abs=1e-12)


def random_problem(seed, n_q=40, n_g=150, n_ids=12, n_cams=3, junk=0.1, distractor=0.1, cam_unknown=0.0):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, n_ids + 1, n_q)
    g_pids = rng.integers(1, n_ids + 1, n_g)
    u = rng.random(n_g)
    g_pids[u < junk] = -1
    g_pids[(u >= junk) & (u < junk + distractor)] = 0
    q_cams = rng.integers(0, n_cams, n_q)
    g_cams = rng.integers(0, n_cams, n_g)
    q_cams[rng.random(n_q) < cam_unknown] = -1
    g_cams[rng.random(n_g) < cam_unknown] = -1
    return rng, q_pids, g_pids, q_cams, g_cams


# ----------------------------------------------------------------------------- hand-made cases
def test_hand_computed_example():
    # gallery sorted by distance: g0 (pid 1), g1 (pid 2), g2 (pid 1, same cam -> ignored),
    # g3 (junk), g4 (pid 0 distractor), g5 (pid 1)
    dist = np.array([[0.1, 0.2, 0.3, 0.35, 0.4, 0.5]])
    g_pids = [1, 2, 1, -1, 0, 1]
    g_cams = [1, 1, 0, 0, 1, 2]
    out = evaluate_rank(dist, [1], g_pids, [0], g_cams, max_rank=5, return_per_query=True)
    # filtered ranking: g0(+) g1(-) g4(-) g5(+) -> matches at ranks 1 and 4
    assert out["mAP"] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert out["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_allclose(out["cmc"], [1, 1, 1, 1, 1])
    # without camera filtering g2 counts: ranks 1, 3, 5
    out2 = evaluate_rank(dist, [1], g_pids, [0], g_cams, camera_filter=False)
    assert out2["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert out2["mINP"] == pytest.approx(3 / 5)


def test_distractor_is_negative_and_junk_is_ignored():
    dist = np.array([[0.1, 0.2, 0.3]])
    # junk first: ignored -> the match is rank 1
    out = evaluate_rank(dist, [5], [-1, 5, 0], [0], [1, 1, 1])
    assert out["rank1"] == 1.0 and out["mAP"] == 1.0
    # distractor (pid 0) first: it is a miss -> first match at rank 2
    out = evaluate_rank(dist, [5], [0, 5, 3], [0], [1, 1, 1])
    assert out["rank1"] == 0.0 and out["mAP"] == pytest.approx(0.5) and out["cmc"][1] == 1.0


def test_query_without_valid_match_is_skipped_and_counted():
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.1, 0.3]])
    g_pids = [7, 8, 9]
    g_cams = [0, 1, 1]
    # query 0: pid 7 only seen by its own camera 0 -> skipped; query 1: pid 4 absent -> skipped
    out = evaluate_rank(dist, [7, 4, 9], g_pids, [0, 0, 0], g_cams)
    assert (out["n_queries"], out["n_valid"], out["n_skipped"]) == (3, 1, 2)
    assert out["mAP"] == pytest.approx(1 / 3)  # query 2: match at rank 3
    # the same query is valid when cameras are unknown
    out = evaluate_rank(dist, [7, 4, 9], g_pids)
    assert (out["n_valid"], out["n_skipped"]) == (2, 1)


def test_all_queries_skipped_gives_nan():
    out = evaluate_rank(np.ones((2, 3)), [1, 2], [3, 3, -1])
    assert out["n_queries"] == 2 and out["n_valid"] == 0 and out["n_skipped"] == 2
    assert math.isnan(out["mAP"]) and math.isnan(out["mINP"]) and np.isnan(out["cmc"]).all()


def test_empty_query_set():
    out = evaluate_rank(np.zeros((0, 5)), [], [1, 2, 3, 4, 5], max_rank=3)
    assert out["n_queries"] == 0 and out["n_valid"] == 0 and out["n_skipped"] == 0
    assert math.isnan(out["mAP"]) and math.isnan(out["rank1"]) and out["cmc"].shape == (3,)
    out = evaluate_features(np.zeros((0, 4), np.float32), np.eye(4, dtype=np.float32), [], [1, 2, 3, 4])
    assert out["n_queries"] == 0 and math.isnan(out["mAP"])


def test_empty_gallery_skips_every_query():
    out = evaluate_rank(np.zeros((3, 0)), [1, 2, 3], [])
    assert out["n_skipped"] == 3 and math.isnan(out["mAP"])


def test_camera_unknown_disables_filter_per_pair():
    dist = np.array([[0.1, 0.2], [0.1, 0.2]])
    g_pids, g_cams = [1, 2], [0, 0]
    # query 0 has camera -1: g0 (same pid, "same" camera unknown) is kept -> rank-1 hit
    # query 1 has camera 0: g0 is ignored -> skipped (no other match)
    out = evaluate_rank(dist, [1, 1], g_pids, [-1, 0], g_cams, return_per_query=True)
    assert list(out["per_query"]["valid"]) == [True, False]
    # gallery camera unknown also disables it
    out = evaluate_rank(dist[:1], [1], g_pids, [0], [-1, 0])
    assert out["n_valid"] == 1 and out["rank1"] == 1.0


# ----------------------------------------------------------------------------- random vs naive
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("camera_filter", [True, False])
def test_random_float64_matches_naive(seed, camera_filter):
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(seed, cam_unknown=0.15 if seed % 2 else 0.0)
    dist = rng.random((len(q_pids), len(g_pids)))
    ref = naive_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist(), camera_filter)
    out = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, camera_filter=camera_filter, return_per_query=True)
    assert ref["n_skipped"] < ref["n_queries"]
    assert_matches_naive(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_ties_follow_gallery_index(dtype, seed):
    # integer distances in a small range: most entries tie
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(10 + seed, n_ids=5)
    dist = rng.integers(-2, 4, (len(q_pids), len(g_pids))).astype(dtype)
    dist[dist == 0] = -0.0 if seed == 1 else 0.0
    ref = naive_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist())
    out = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, return_per_query=True, chunk_size=7)
    assert_matches_naive(out, ref)
    # reversing the gallery changes the tie order, hence (with this many ties) the result
    rev = evaluate_rank(dist[:, ::-1], q_pids, g_pids[::-1], q_cams, g_cams[::-1])
    assert rev["mAP"] != pytest.approx(out["mAP"], abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_equal_distances_and_infinities(dtype):
    # constant rows: every correct match ties with everything (many tied entries per chunk)
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(21, n_q=6, n_g=80, n_ids=2)
    dist = np.zeros((6, 80), dtype=dtype)
    ref = naive_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist())
    assert_matches_naive(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=4, return_per_query=True), ref)
    # +/-inf distances, including ignored (same camera) and correct matches at +inf
    dist = rng.integers(0, 3, (6, 80)).astype(dtype)
    dist[rng.random((6, 80)) < 0.3] = np.inf
    dist[rng.random((6, 80)) < 0.05] = -np.inf
    ref = naive_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist())
    assert_matches_naive(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=4, return_per_query=True), ref)


def test_caller_matrix_is_not_modified():
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(22)
    g_pids[g_pids == -1] = 1  # no junk: chunks are views of the caller's array
    dist = rng.random((len(q_pids), len(g_pids))).astype(np.float32)
    before = dist.copy()
    evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_array_equal(dist, before)


def test_stable_rank_order_equals_stable_argsort():
    rng = np.random.default_rng(3)
    d = rng.normal(size=(20, 300)).astype(np.float32)
    d[:, ::3] = np.round(d[:, ::3], 1)  # ties
    d[0, :10] = -0.0
    d[0, 10:20] = 0.0
    d[1, :5] = np.inf
    d[1, 5:10] = -np.inf
    d[2, 0] = np.finfo(np.float32).max
    d[2, 1] = -np.finfo(np.float32).max
    d[2, 2] = np.finfo(np.float32).tiny
    d[2, 3] = -np.finfo(np.float32).tiny
    d16 = np.where(np.isfinite(d), np.clip(d, -6e4, 6e4), d).astype(np.float16)
    for arr in (d, d.astype(np.float64), d16):
        np.testing.assert_array_equal(stable_rank_order(arr), np.argsort(arr, axis=1, kind="stable"))


def test_no_camera_mode_equals_no_filter():
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(5)
    dist = rng.random((len(q_pids), len(g_pids)))
    a = evaluate_rank(dist, q_pids, g_pids)  # no camera ids at all
    b = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, camera_filter=False)
    c = evaluate_rank(dist, q_pids, g_pids, np.full_like(q_cams, -1), np.full_like(g_cams, -1))
    d = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    ref = naive_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist())
    for out in (a, b, c):
        assert_matches_naive(out, ref)
    assert d["mAP"] != pytest.approx(a["mAP"])  # the filter does something on this data


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
def test_chunking_equals_unchunked(chunk_size):
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(7, n_q=33)
    dist = rng.random((33, len(g_pids))).astype(np.float32)
    full = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=10_000, return_per_query=True)
    part = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk_size, return_per_query=True)
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10", "n_valid", "n_skipped"):
        assert part[key] == full[key]
    np.testing.assert_array_equal(part["cmc"], full["cmc"])
    assert part["per_query"].equals(full["per_query"])


def test_max_rank_and_rank_keys():
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(8)
    dist = rng.random((len(q_pids), len(g_pids)))
    out = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    ref = naive_eval(dist.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist(), max_rank=3)
    assert_matches_naive(out, ref, max_rank=3)  # rank5/rank10 still exact when max_rank < 10
    assert np.all(np.diff(out["cmc"]) >= 0)


def test_memmap_and_tensor_inputs(tmp_path):
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(9)
    dist = rng.random((len(q_pids), len(g_pids)))
    mm = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float64, shape=dist.shape)
    mm[:] = dist
    ref = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    for d in (mm, torch.from_numpy(dist)):
        out = evaluate_rank(d, torch.from_numpy(q_pids), g_pids, q_cams, g_cams, chunk_size=8)
        assert out["mAP"] == ref["mAP"] and out["mINP"] == ref["mINP"]


# ----------------------------------------------------------------------------- features
def naive_dist(q, g, metric):
    out = []
    for a in q:
        row = []
        for b in g:
            if metric == "cosine":
                na = math.sqrt(sum(x * x for x in a))
                nb = math.sqrt(sum(x * x for x in b))
                row.append(1.0 - sum(x * y for x, y in zip(a, b)) / (na * nb))
            else:
                row.append(sum((x - y) ** 2 for x, y in zip(a, b)))
        out.append(row)
    return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_features_matches_naive(metric):
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(11, n_q=25, n_g=90)
    q = rng.normal(size=(25, 8))
    g = rng.normal(size=(90, 8))
    d_ref = naive_dist(q.tolist(), g.tolist(), metric)
    np.testing.assert_allclose(distance_matrix(q, g, metric=metric, device="cpu"), d_ref, atol=1e-10)
    ref = naive_eval(d_ref, q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist())
    out = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric=metric, chunk_size=4,
                            device="cpu", return_per_query=True)
    assert_matches_naive(out, ref)


def test_evaluate_features_float32_equals_evaluate_rank_and_chunking():
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(12, n_q=30, n_g=120)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    g = rng.normal(size=(120, 16)).astype(np.float32)
    outs = [evaluate_features(torch.from_numpy(q), g, q_pids, g_pids, q_cams, g_cams, chunk_size=c, device="cpu")
            for c in (1, 7, 512)]
    for o in outs[1:]:
        assert o["mAP"] == outs[0]["mAP"] and o["rank1"] == outs[0]["rank1"]
    # junk rows are dropped before the matmul; ranking the full matrix must agree
    d = distance_matrix(q, g, device="cpu")
    assert d.dtype == np.float32
    ref = naive_eval(d.tolist(), q_pids.tolist(), g_pids.tolist(), q_cams.tolist(), g_cams.tolist())
    assert_matches_naive(outs[0], ref)


def test_rerank_calls_re_ranking_lazily(monkeypatch):
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(13, n_q=10, n_g=40)
    q = rng.normal(size=(10, 4)).astype(np.float32)
    g = rng.normal(size=(40, 4)).astype(np.float32)
    fake_dist = rng.random((10, 40))
    calls = {}

    def re_ranking(q_feat, g_feat, k1, k2, lambda_value):
        calls.update(shape=(q_feat.shape, g_feat.shape), k1=k1, k2=k2, lam=lambda_value)
        return fake_dist

    fake = types.ModuleType("reid_core.evaluation.rerank")
    fake.re_ranking = re_ranking
    monkeypatch.setitem(sys.modules, "reid_core.evaluation.rerank", fake)
    out = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, rerank=True)
    assert calls == {"shape": ((10, 4), (40, 4)), "k1": 20, "k2": 6, "lam": 0.3}  # full gallery, junk included
    ref = evaluate_rank(fake_dist, q_pids, g_pids, q_cams, g_cams)
    assert out["mAP"] == ref["mAP"] and out["n_skipped"] == ref["n_skipped"]
    evaluate_features(q, g, q_pids, g_pids, rerank=True, rerank_params={"k1": 5})
    assert calls["k1"] == 5 and calls["k2"] == 6


def test_rerank_with_real_module_smoke():
    rerank = pytest.importorskip("reid_core.evaluation.rerank")
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(14, n_q=12, n_g=50, n_ids=4)
    q = rng.normal(size=(12, 8)).astype(np.float32)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    out = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, rerank=True)
    ref = evaluate_rank(rerank.re_ranking(q, g, k1=20, k2=6, lambda_value=0.3), q_pids, g_pids, q_cams, g_cams)
    assert out["mAP"] == ref["mAP"] and 0.0 <= out["mAP"] <= 1.0


def test_fortran_ordered_matrix():
    rng, q_pids, g_pids, q_cams, g_cams = random_problem(15)
    dist = rng.random((len(q_pids), len(g_pids)))
    ref = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    out = evaluate_rank(np.asfortranarray(dist), q_pids, g_pids, q_cams, g_cams, chunk_size=5)
    assert out["mAP"] == ref["mAP"] and out["mINP"] == ref["mINP"]


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_field():
    d = np.zeros((2, 3))
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(d, [1, 2], [1, 2])
    with pytest.raises(ValueError, match="q_camids"):
        evaluate_rank(d, [1, 2], [1, 2, 3], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="q_pids"):
        evaluate_rank(d, [1.0, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="distmat"):
        evaluate_rank(np.zeros(3), [1], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.full((2, 3), np.nan), [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_rank(d, [1, 2], [1, 2, 3], chunk_size=0)
    f = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="metric"):
        evaluate_features(f, f, [1, 2], [1, 2], metric="manhattan")
    with pytest.raises(ValueError, match="dim"):
        evaluate_features(f, np.ones((2, 3), np.float32), [1, 2], [1, 2])
    with pytest.raises(ValueError, match="g_feat"):
        evaluate_features(f, np.full((2, 4), np.nan, np.float32), [1, 2], [1, 2])


# ----------------------------------------------------------------------------- real Market-1501 ids
@pytest.mark.market
def test_market_ids_match_naive(market_root):
    from reid_core.data.market import load_market1501

    df = load_market1501(market_root, splits=("query", "gallery"))
    q, g = df[df.split == "query"], df[df.split == "gallery"]
    rng = np.random.default_rng(0)
    dist = rng.random((len(q), len(g)))
    out = evaluate_rank(dist, q.pid, g.pid, q.camid, g.camid, chunk_size=100)
    ref = naive_eval(dist.tolist(), q.pid.tolist(), g.pid.tolist(), q.camid.tolist(), g.camid.tolist())
    assert_matches_naive(out, ref)
    # oracle features (one-hot identity): every valid query is retrieved perfectly
    ids = np.unique(np.concatenate([q.pid.to_numpy(), g.pid.to_numpy()]))
    onehot = lambda p: (p.to_numpy()[:, None] == ids[None, :]).astype(np.float32)  # noqa: E731
    perfect = evaluate_features(onehot(q.pid), onehot(g.pid), q.pid, g.pid, q.camid, g.camid, device="cpu")
    assert perfect["n_valid"] == ref["n_valid"] and perfect["mAP"] == 1.0 and perfect["mINP"] == 1.0
