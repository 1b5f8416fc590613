"""Bad or unusual inputs, generated here: each is either read correctly or refused with an error
that names the file and the problem. (The README's Reliability table counts these cases.)"""
from __future__ import annotations

import io
import os
import struct
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from reid_core.data.dataset import read_image
from reid_core.data.manifest import load_manifest
from reid_core.data.market import load_market1501
from reid_core.errors import RunFolderDamaged, expected_error_message
from reid_core.features import load_image_uint8
from reid_core.io.checkpoint import load_checkpoint, save_checkpoint
from reid_core.io.features_io import read_features, write_features

H, W = 32, 16
RNG = np.random.default_rng(0)


def _rgb(h=48, w=24):
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(arr=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb() if arr is None else arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width x height`` (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# images that must work

GOOD = {
    "png-named-jpg": lambda: _save(Image.fromarray(_rgb()), "PNG"),
    "grayscale": lambda: _save(Image.fromarray(_rgb()[..., 0]), "JPEG"),
    "cmyk": lambda: _save(Image.fromarray(_rgb()).convert("CMYK"), "JPEG"),
    "rgba": lambda: _save(Image.fromarray(np.dstack([_rgb(), np.full((48, 24), 128, np.uint8)])), "PNG"),
    "16-bit": lambda: _save(Image.fromarray((np.arange(48 * 24, dtype=np.uint16).reshape(48, 24) * 50)), "PNG"),
    "1x1": lambda: _save(Image.fromarray(_rgb(1, 1)), "JPEG"),
    "palette": lambda: _save(Image.fromarray(_rgb()).convert("P"), "PNG"),
}


@pytest.mark.parametrize("case", sorted(GOOD))
def test_unusual_but_valid_images_are_read(case, tmp_path):
    path = tmp_path / f"{case}.jpg"
    path.write_bytes(GOOD[case]())
    arr = load_image_uint8(path, H, W)
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8
    assert np.asarray(read_image(path)).shape[2] == 3
    if case == "16-bit":  # scaled to 8 bits, not clipped to white
        assert 20 < arr.mean() < 235 and arr.std() > 10


# ------------------------------------------------------------------------------------------------
# images that must be refused, naming the file

BAD = {
    "zero-byte": (lambda: b"", "empty"),
    "truncated-jpeg": (lambda: _jpeg_bytes()[:300], "cannot read image"),
    "corrupt-jpeg": (lambda: _jpeg_bytes()[:200] + bytes(RNG.integers(0, 255, 2000, dtype=np.uint8)), "cannot read image"),
    "not-an-image": (lambda: b"hello, I am text\n" * 10, "cannot read image"),
    "bomb-header": (lambda: _png_claiming(60000, 60000), "pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_broken_images_are_refused_naming_the_file(case, tmp_path):
    make, problem = BAD[case]
    path = tmp_path / f"{case}.jpg"
    path.write_bytes(make())
    with pytest.raises(ValueError, match=problem) as err:
        load_image_uint8(path, H, W)
    assert str(err.value).startswith(f"{path}: ") and expected_error_message(err.value)
    with pytest.raises(ValueError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: ")


def test_decompression_bomb_guard_runs_before_the_jpeg_decoder(tmp_path, monkeypatch):
    """JPEGs go to torchvision's decoder, which has no pixel limit: the header is checked first."""
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes(_rgb(200, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 100 - 1)
    with pytest.raises(ValueError, match=rf"{path}: image of 100 x 200 = 20000 pixels is above the limit"):
        load_image_uint8(path, H, W)
    with pytest.raises(ValueError, match="above the limit"):
        read_image(path)


# ------------------------------------------------------------------------------------------------
# dataset folders and manifests

def _market(root):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (root / folder).mkdir(parents=True)
        for cam in (1, 2):
            (root / folder / f"0001_c{cam}s1_000001_00.jpg").write_bytes(_jpeg_bytes())
    return root


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores any bytes in names")
def test_non_utf8_file_name_is_named(tmp_path):
    root = _market(tmp_path / "m")
    name = b"0001_c3s1_000001_00\xff.jpg"
    with open(os.path.join(os.fsencode(root / "bounding_box_train"), name), "wb") as fh:
        fh.write(_jpeg_bytes())
    with pytest.raises(ValueError, match=r"not valid UTF-8") as err:
        load_market1501(root)
    assert "\\xff" in str(err.value) and expected_error_message(err.value)


def test_symlink_loop_in_a_split_folder_is_named(tmp_path):
    root = _market(tmp_path / "m")
    a, b = root / "query" / "0002_c1s1_000001_00.jpg", root / "query" / "0002_c2s1_000001_00.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(ValueError, match="symlink loop") as err:
        load_market1501(root)
    assert str(a) in str(err.value) or str(b) in str(err.value)


def test_manifest_escaping_paths_duplicates_and_symlink_loops(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg_bytes())
    (tmp_path / "outside.jpg").write_bytes(_jpeg_bytes())
    m = root / "m.csv"
    m.write_text("path\na.jpg\n../outside.jpg\n")
    with pytest.raises(ValueError, match=r"m.csv: relative path\(s\) leave the dataset root .* rows 2"):
        load_manifest(m)
    m.write_text(f"path\na.jpg\n{tmp_path / 'outside.jpg'}\n")  # an absolute path is explicit: allowed
    assert len(load_manifest(m)) == 2
    m.write_text("path\na.jpg\nsub/../a.jpg\n")
    with pytest.raises(ValueError, match="listed twice"):
        load_manifest(m)
    (root / "l1.jpg").symlink_to(root / "l2.jpg")
    (root / "l2.jpg").symlink_to(root / "l1.jpg")
    m.write_text("path\na.jpg\nl1.jpg\n")
    with pytest.raises(ValueError, match="symlink loop"):
        load_manifest(m)


# ------------------------------------------------------------------------------------------------
# features and checkpoints

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(bad, tmp_path):
    feats = RNG.normal(size=(5, 4)).astype(np.float32)
    feats[3, 1] = bad
    path = tmp_path / "features.parquet"
    with pytest.raises(ValueError, match=f"{path}: refusing to write 1 feature row"):
        write_features(path, np.arange(5), feats, 1)
    assert not path.exists()
    # a file written by someone else is refused on read
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), 4)
    pq.write_table(pa.table({"image_id": pa.array(np.arange(5)), "feature": col}), path)
    with pytest.raises(RunFolderDamaged, match=f"{path}: 1 feature row.*image_id 3"):
        read_features(path)


class Payload:
    """Not a tensor: unpickling it would run code from the file."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {"name": "mobilenet_v2"}, "extra": Payload()}, path)
    with pytest.raises(RunFolderDamaged, match=f"{path}: cannot load checkpoint safely"):
        load_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    from reid_core.models import build_model, model_checkpoint_state
    from reid_core.pipeline import RunConfig
    from reid_core.pipeline.stages import _build_or_load_model
    from reid_core.query import resolve_model

    path = tmp_path / "mnv2.pt"
    save_checkpoint(model_checkpoint_state(build_model("mobilenet_v2", pretrained=False)), path)
    with pytest.raises(ValueError, match=f"{path}: checkpoint holds a mobilenet_v2 model.*resnet50"):
        resolve_model(path, backbone="resnet50")
    cfg = RunConfig(backbone="resnet50", init_checkpoint=str(path))
    with pytest.raises(ValueError, match=f"{path}: checkpoint holds a mobilenet_v2 model, but RunConfig.backbone"):
        _build_or_load_model(None, cfg, "cpu")
