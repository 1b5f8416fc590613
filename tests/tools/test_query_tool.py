"""``reid query``: top-k against a brute-force ranking, the gallery feature cache, re-ranking,
custom galleries without identities, and the errors a user meets."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reid_core.query import load_gallery, resolve_model, run_query

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_features(checkpoint: Path, paths: list[str], height: int, width: int) -> np.ndarray:
    """Plain reference: PIL -> torchvision eval transform -> model (eval, no BN folding) one image at a time."""
    from reid_core.data.transforms import build_eval_transform
    from reid_core.models import model_from_checkpoint
    from PIL import Image

    model = model_from_checkpoint(checkpoint, "cpu").eval()
    tf = build_eval_transform(height, width)
    out = []
    with torch.no_grad():
        for p in paths:
            with Image.open(p) as img:
                x = tf(img.convert("RGB")).unsqueeze(0)
            f = model(x)[0].double().numpy()
            out.append(f / np.linalg.norm(f))
    return np.stack(out)


def _check_against_brute_force(table: pd.DataFrame, dist: np.ndarray, gallery_paths: list[str], k: int,
                               tol: float = 2e-4) -> None:
    """Each query's listed items carry their reference distances, in order, and nothing left out is closer."""
    index = {p: j for j, p in enumerate(gallery_paths)}
    for qi, rows in table.groupby("query"):
        rows = rows.sort_values("rank")
        assert rows["rank"].tolist() == list(range(1, k + 1))
        cols = [index[p] for p in rows["gallery_path"]]
        assert len(set(cols)) == k
        np.testing.assert_allclose(rows["distance"].to_numpy(), dist[qi, cols], atol=tol)
        assert np.all(np.diff(rows["distance"].to_numpy()) >= 0)
        rest = np.setdiff1d(np.arange(dist.shape[1]), cols)
        assert dist[qi, rest].min() >= dist[qi, cols].max() - tol


def test_query_topk_matches_brute_force_and_cache_makes_the_second_query_cheap(tools_run, tools_market, tmp_path):
    ckpt = tools_run / "round_001" / "checkpoint.pt"
    queries = sorted(str(p) for p in (tools_market / "query").glob("*.jpg"))[:5]
    cache = tmp_path / "cache"
    k = 7
    first = run_query(queries, tools_market, tmp_path / "q1.parquet", model=tools_run, top_k=k, cache_dir=cache)
    assert first.info["cache_hit"] is False and first.info["checkpoint"] == str(ckpt)
    assert first.info["input_size"] == "64x32"  # taken from the run's config.json
    table = pd.read_parquet(tmp_path / "q1.parquet")
    assert list(table.columns) == ["query", "query_path", "query_pid", "rank", "gallery_path", "gallery_pid",
                                   "distance", "match"]
    assert len(table) == 5 * k

    gallery = load_gallery(tools_market)
    ref_q = _reference_features(ckpt, queries, 64, 32)
    ref_g = _reference_features(ckpt, gallery["path"].tolist(), 64, 32)
    dist = 1.0 - ref_q @ ref_g.T
    _check_against_brute_force(table, dist, gallery["path"].tolist(), k)
    # identities from the Market names; match = same pid
    assert (table["match"] == (table["query_pid"] == table["gallery_pid"])).all()
    assert table["query_pid"].notna().all()

    second = run_query(queries, tools_market, tmp_path / "q2.parquet", model=ckpt, top_k=k, cache_dir=cache)
    assert second.info["cache_hit"] is True and second.info["cache_file"] == first.info["cache_file"]
    pd.testing.assert_frame_equal(second.table, first.table)
    assert len(list(cache.glob("gallery-*.parquet"))) == 1
    assert first.png_path.is_file() and first.png_path.stat().st_size > 1000


def test_cache_misses_when_an_image_or_the_model_changes(tools_run, tools_market, tmp_path):
    gal = tmp_path / "gallery"
    shutil.copytree(tools_market / "bounding_box_test", gal)
    query = sorted((tools_market / "query").glob("*.jpg"))[:1]
    cache = tmp_path / "cache"
    a = run_query(query, gal, tmp_path / "a.parquet", model=tools_run, top_k=3, cache_dir=cache, png_path=None)
    victim = sorted(gal.glob("*.jpg"))[0]
    victim.write_bytes((tools_market / "bounding_box_test" / sorted(gal.glob("*.jpg"))[1].name).read_bytes())
    b = run_query(query, gal, tmp_path / "b.parquet", model=tools_run, top_k=3, cache_dir=cache, png_path=None)
    assert b.info["cache_hit"] is False and b.info["cache_file"] != a.info["cache_file"]
    c = run_query(query, gal, tmp_path / "c.parquet", model=None, top_k=3, cache_dir=cache, png_path=None,
                  height=64, width=32)  # ImageNet weights: another model, another key
    assert c.info["cache_hit"] is False and c.info["cache_file"] not in (a.info["cache_file"], b.info["cache_file"])


def test_rerank_orders_by_the_rerank_distance(tools_run, tools_market, tmp_path):
    from reid_core.evaluation.rerank import re_ranking

    ckpt = tools_run / "round_001" / "checkpoint.pt"
    queries = sorted(str(p) for p in (tools_market / "query").glob("*.jpg"))[:4]
    res = run_query(queries, tools_market, tmp_path / "rr.parquet", model=ckpt, top_k=5, rerank=True,
                    cache_dir=None, png_path=None)
    gallery = load_gallery(tools_market)
    ref_q = _reference_features(ckpt, queries, 64, 32)
    ref_g = _reference_features(ckpt, gallery["path"].tolist(), 64, 32)
    dist = re_ranking(ref_q, ref_g, k1=20, k2=6, lambda_value=0.3)
    _check_against_brute_force(res.table, dist.astype(np.float64), gallery["path"].tolist(), 5, tol=1e-3)
    plain = run_query(queries, tools_market, tmp_path / "plain.parquet", model=ckpt, top_k=5, cache_dir=None,
                      png_path=None)
    assert not np.allclose(plain.table["distance"], res.table["distance"])


def test_manifest_gallery_without_identities_gives_unknown_matches(tools_market, tmp_path):
    files = sorted((tools_market / "bounding_box_test").glob("*.jpg"))[:10]
    for i, f in enumerate(files):  # names that say nothing about identity or camera
        shutil.copy(f, tmp_path / f"person_{i}.jpg")
    pd.DataFrame({"path": [f"person_{i}.jpg" for i in range(10)]}).to_csv(tmp_path / "gallery.csv", index=False)
    res = run_query([tmp_path / "person_3.jpg"], tmp_path / "gallery.csv", tmp_path / "out" / "m.parquet",
                    top_k=4, cache_dir=None, height=64, width=32)
    t = res.table
    assert t["gallery_pid"].isna().all() and t["match"].isna().all() and t["query_pid"].isna().all()
    # the query itself is in the gallery: it comes first, at distance ~0
    assert Path(t["gallery_path"].iloc[0]).name == "person_3.jpg" and t["distance"].iloc[0] < 1e-5
    assert res.png_path == tmp_path / "out" / "m.png" and res.png_path.is_file()


def test_clear_errors(tools_run, tools_market, tmp_path):
    query = sorted((tools_market / "query").glob("*.jpg"))[:1]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty: the gallery holds no images"):
        run_query(query, empty, tmp_path / "x.parquet", model=tools_run, cache_dir=None)
    bad = tmp_path / "bad"
    shutil.copytree(tools_market / "bounding_box_test", bad)
    (bad / "broken.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        run_query(query, bad, tmp_path / "x.parquet", model=tools_run, cache_dir=None)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: checkpoint holds a mobilenet_v2 model, but backbone resnet50"):
        resolve_model(tools_run, backbone="resnet50")
    with pytest.raises(FileNotFoundError, match="round_NNN/checkpoint.pt"):
        resolve_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        run_query([tmp_path / "nope.jpg"], tools_market, tmp_path / "x.parquet", model=tools_run, cache_dir=None)
    assert not (tmp_path / "x.parquet").exists()


def test_cli_query_writes_parquet_and_png(tools_run, tools_market, tmp_path, capsys):
    import json

    from reid_core.cli import main

    out = tmp_path / "cli" / "topk.parquet"
    rc = main(["query", str(tools_market), "--gallery", str(tools_market), "--checkpoint", str(tools_run),
               "--top-k", "3", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    n_query = len(list((tools_market / "query").glob("*.jpg")))
    assert info["n_queries"] == n_query and len(pd.read_parquet(out)) == 3 * n_query
    assert Path(info["png"]).is_file()
