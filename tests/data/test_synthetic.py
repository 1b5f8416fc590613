import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_core.data import (ensure_synthetic, generate_synthetic, is_synthetic_complete, load_market1501,
                            parse_market_name, render_person, summarize_images)
from reid_core.data.synthetic import GENERATOR_VERSION, _make_camera, _make_identity, _render
from reid_core.io import file_digest

SMALL = dict(n_ids=8, n_cams=3, images_per_id_cam=2, height=32, width=16)


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*.jpg"))}


def _mean_ap(q, g, qp, gp, qc, gc):
    """mAP (Market protocol: gallery items with the query's pid and camera are ignored).
    Test-only measuring helper; the library's metric lives in reid_core.evaluation."""
    s = q @ g.T  # cosine similarities (rows are L2-normalised)
    aps = []
    for i in range(len(q)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        match = (gp[keep] == qp[i])[np.argsort(-s[i, keep], kind="stable")]
        if match.any():
            ranks = np.flatnonzero(match) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def test_mean_ap_helper_by_hand():
    # one query (pid 1, cam 0); gallery ranked: [pid1 cam0 (ignored), pid2, pid1, pid3, pid1]
    q = np.array([[1.0, 0.0]])
    ang = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    g = np.stack([np.cos(ang), np.sin(ang)], 1)
    ap = _mean_ap(q, g, np.array([1]), np.array([1, 2, 1, 3, 1]), np.array([0]), np.array([0, 1, 1, 1, 1]))
    assert ap == pytest.approx((1 / 2 + 2 / 4) / 2)


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    t0 = time.process_time()  # CPU time: robust to other jobs sharing the machine
    generate_synthetic(out)  # defaults: 100 ids x 6 cams x 4 images, 128x64
    return out, time.process_time() - t0


def test_default_set_speed_layout_and_counts(default_set):
    out, seconds = default_set
    assert seconds < 30.0, f"generation took {seconds:.1f} s of CPU time"
    df = load_market1501(out)
    s = summarize_images(df).set_index("split")
    assert s["images"].tolist() == [1200, 300, 900]
    assert s["identities"].tolist() == [50, 50, 50]
    assert s["cameras"].tolist() == [6, 6, 6]
    assert not set(df.pid[df.split == "train"]) & set(df.pid[df.split != "train"])
    # query: exactly one image per (test identity, camera)
    q = df[df.split == "query"]
    assert q.groupby(["pid", "camid"]).size().eq(1).all() and len(q) == 50 * 6
    with Image.open(df.path.iloc[0]) as im:
        assert im.size == (64, 128) and im.mode == "RGB"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["n_ids"] == 100 and meta["counts"]["query"]["images"] == 300
    assert meta["params"]["version"] == GENERATOR_VERSION
    assert "bounding_box_train" in (out / "README.md").read_text()


def test_raw_pixels_do_not_solve_reid(default_set):
    out, _ = default_set
    df = load_market1501(out)
    q, g = df[df.split == "query"], df[df.split == "gallery"]

    def feats(paths, crop=None):
        x = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in paths])
        if crop is not None:
            x = x[:, 20:110, 16:48]
        x = x.reshape(len(x), -1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    args = (q.pid.to_numpy(), g.pid.to_numpy(), q.camid.to_numpy(), g.camid.to_numpy())
    raw = _mean_ap(feats(q.path), feats(g.path), *args)
    centre = _mean_ap(feats(q.path, True), feats(g.path, True), *args)
    # chance level: ~12 positives among ~900 gallery images (about 0.02-0.03)
    assert raw < 0.12, f"raw-pixel mAP {raw:.3f} is too high: the task would be trivial"
    # the person region carries identity information (a model can learn it)
    assert centre > raw + 0.05, (raw, centre)


def _person_extent(seed: int, cam: int, index: int, pid_a: int, pid_b: int, height=128, width=64):
    """Rows/columns where two identities rendered with the same camera and the same random stream differ:
    the background, box jitter and lighting are shared, so the difference is the person."""
    cam_d = _make_camera(seed, cam)
    a = _render(_make_identity(seed, pid_a), cam_d, np.random.default_rng([seed, cam, index]), height, width)
    b = _render(_make_identity(seed, pid_b), cam_d, np.random.default_rng([seed, cam, index]), height, width)
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 40
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.mean(axis=0) > 0.2)
    return (rows[-1] - rows[0] + 1) / height, (cols[-1] - cols[0] + 1 if len(cols) else 0) / width


def test_person_fills_most_of_the_box():
    ext = np.array([_person_extent(0, cam, i, 2 * i + 1, 2 * i + 2) for cam in range(6) for i in range(4)])
    h, w = np.median(ext, axis=0)
    assert 0.8 <= h <= 1.0, f"person height is {h:.2f} of the crop height"
    assert 0.4 <= w <= 0.8, f"person width is {w:.2f} of the crop width"


def test_identity_attributes_and_version():
    assert GENERATOR_VERSION >= 2  # version 2: Market-like framing (bump on any change of the drawing)
    idents = [_make_identity(0, pid) for pid in range(1, 201)]
    assert all(np.array_equal(idents[0][k], v) for k, v in _make_identity(0, 1).items())  # deterministic
    # patterns use a visibly different second colour
    assert np.mean([np.abs(i["upper"] - i["upper2"]).sum() >= 0.35 for i in idents]) > 0.95
    # a wide palette: many distinct upper colours, dark and bright ones, patterned and plain clothes
    uppers = np.stack([i["upper"] for i in idents])
    assert uppers.max(axis=1).min() < 0.25 and uppers.max(axis=1).max() > 0.9
    assert len({i["pattern"] for i in idents}) >= 6 and len({i["bag"] for i in idents}) == 4
    assert {i["sleeves"] for i in idents} == {"short", "long", "jacket"}


def test_small_set_loads_and_is_deterministic(tmp_path):
    a = generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic(tmp_path / "b", seed=3, **SMALL)
    c = generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert da == db
    assert len(da) == len(dc) and set(da.values()).isdisjoint(dc.values())
    df = load_market1501(a)
    assert len(df) == 8 * 3 * 2 and df.attrs["n_junk"] == 0
    assert sorted(df.pid.unique()) == list(range(1, 9))
    for p in df.path:
        pid, cam = parse_market_name(p)
        assert 1 <= pid <= 8 and 0 <= cam < 3
    with Image.open(df.path.iloc[0]) as im:
        assert im.size == (16, 32)


def test_render_person_deterministic_and_varied():
    a = render_person(5, 0, index=1, seed=0)
    assert a.shape == (128, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_person(5, 0, index=1, seed=0))
    assert not np.array_equal(a, render_person(5, 0, index=2, seed=0))  # per-image jitter
    assert not np.array_equal(a, render_person(5, 1, index=1, seed=0))
    assert a.std() > 10  # not a flat image


def test_single_image_per_cam_keeps_gallery_and_distractors(tmp_path):
    out = generate_synthetic(tmp_path / "s", n_ids=6, n_cams=3, images_per_id_cam=1, height=32, width=16,
                             n_distractors=4, query_cams=5)
    df = load_market1501(out)
    q, g = df[df.split == "query"], df[df.split == "gallery"]
    assert len(q) == 3 * 2  # 3 test ids, 2 of 3 cameras (one left for the gallery)
    for pid in q.pid.unique():
        assert (g.pid == pid).sum() == 1
    assert (g.pid == 0).sum() == 4 and (df.pid[df.split != "gallery"] != 0).all()


def test_query_cams_limits_queries(tmp_path):
    out = generate_synthetic(tmp_path / "s", n_ids=10, n_cams=4, images_per_id_cam=2, height=32, width=16,
                             query_cams=2)
    q = load_market1501(out, splits="query")
    assert q.groupby("pid").size().eq(2).all() and q.pid.nunique() == 5


def test_ensure_synthetic_regenerates_only_when_needed(tmp_path):
    out = tmp_path / "syn"
    ensure_synthetic(out, **SMALL)
    meta_mtime = (out / "meta.json").stat().st_mtime_ns
    assert is_synthetic_complete(out, **SMALL)
    ensure_synthetic(out, **SMALL)
    assert (out / "meta.json").stat().st_mtime_ns == meta_mtime  # untouched
    # a missing file triggers regeneration
    victim = next((out / "query").glob("*.jpg"))
    victim.unlink()
    assert not is_synthetic_complete(out, **SMALL)
    ensure_synthetic(out, **SMALL)
    assert victim.exists()
    # other parameters regenerate and replace the old files
    ensure_synthetic(out, **{**SMALL, "n_ids": 6})
    assert len(load_market1501(out)) == 6 * 3 * 2
    assert json.loads((out / "meta.json").read_text())["params"]["n_ids"] == 6
    assert not list(tmp_path.glob(".syn*"))  # no temporary folders left behind
    with pytest.raises(TypeError, match="colour"):
        ensure_synthetic(out, colour=True)


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="mine"):
        generate_synthetic(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "precious.txt").exists()


@pytest.mark.parametrize("bad,match", [({"n_ids": 1}, "n_ids"), ({"n_cams": 1}, "n_cams"),
                                       ({"images_per_id_cam": 0}, "images_per_id_cam"),
                                       ({"train_fraction": 1.0}, "train_fraction"), ({"height": 4}, "height")])
def test_bad_parameters(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        generate_synthetic(tmp_path / "x", **{**SMALL, **bad})
