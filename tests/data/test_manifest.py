from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reid_core.data import load_images, load_manifest

COLUMNS = ["image_id", "path", "camid", "pid", "split"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ["a.jpg", "b.png", "sub/c.jpg", "d.jpg"]:
        Image.new("RGB", (8, 16), (10, 20, 30)).save(tmp_path / "imgs" / name)
    return tmp_path


def test_csv_minimal_path_only(folder):
    m = folder / "imgs" / "manifest.csv"
    pd.DataFrame({"path": ["a.jpg", "sub/c.jpg", "b.png"]}).to_csv(m, index=False)
    df = load_manifest(m)
    assert list(df.columns) == COLUMNS
    assert df["path"].tolist() == [str((folder / "imgs" / p).resolve()) for p in ["a.jpg", "sub/c.jpg", "b.png"]]
    assert (df["pid"] == -1).all() and (df["camid"] == -1).all()
    assert (df["split"] == "train").all()
    assert df["image_id"].tolist() == [0, 1, 2]
    for c in ("image_id", "camid", "pid"):
        assert df[c].dtype == np.int64
    assert load_manifest(m, split="gallery")["split"].unique().tolist() == ["gallery"]


def test_parquet_full_columns_relative_to_root(folder):
    m = folder / "lists" / "m.parquet"
    m.parent.mkdir()
    pd.DataFrame({
        "path": ["a.jpg", "b.png", "sub/c.jpg", str(folder / "imgs" / "d.jpg")],
        "pid": [3, 3, 7, -1],
        "camid": [0, 1, 1, 2],
        "split": ["gallery", "query", "train", "gallery"],
        "extra": ["x", "y", "z", "w"],
    }).to_parquet(m)
    df = load_manifest(m, root=folder / "imgs")
    assert list(df.columns) == COLUMNS
    # stable split order: train, query, gallery; manifest order inside a split
    assert df["split"].tolist() == ["train", "query", "gallery", "gallery"]
    assert [Path(p).name for p in df["path"]] == ["c.jpg", "b.png", "a.jpg", "d.jpg"]
    assert df["pid"].tolist() == [7, 3, 3, -1]
    assert df["camid"].tolist() == [1, 1, 0, 2]
    assert load_images(m, root=folder / "imgs").equals(df)


def test_partial_missing_values_and_names(folder):
    m = folder / "imgs" / "m.csv"
    m.write_text("path,pid,camid,split\na.jpg,alice,cam2,\nb.png,,cam1,query\nsub/c.jpg,bob,,gallery\nd.jpg,alice,cam1,\n")
    df = load_manifest(m)
    assert df.attrs["pid_names"] == ["alice", "bob"]
    assert df.attrs["camid_names"] == ["cam1", "cam2"]
    assert df["split"].tolist() == ["train", "train", "query", "gallery"]
    assert df["pid"].tolist() == [0, 0, -1, 1]
    assert df["camid"].tolist() == [1, 0, 0, -1]


def test_numeric_with_gaps(folder):
    m = folder / "imgs" / "m.csv"
    m.write_text("path,pid,camid\na.jpg,5,\nb.png,,3\n")
    df = load_manifest(m)
    assert df["pid"].tolist() == [5, -1] and df["camid"].tolist() == [-1, 3]


@pytest.mark.parametrize("content,match", [
    ("file,pid\na.jpg,1\n", "missing required column 'path'"),
    ("path,pid\n", "no rows"),
    ("path,pid\na.jpg,1.5\n", "'pid' must hold whole numbers; rows 1"),
    ("path,camid\na.jpg,0\nb.png,-3\n", "'camid' must be >= 0 or -1 .*rows 2"),
    ("path,split\na.jpg,train\nb.png,test\n", "'split' must be one of .*rows 2"),
    ("path,pid\na.jpg,1\n,2\nb.png,3\n", "'path' is empty in rows 2"),
    ("path\na.jpg\na.jpg\n", "listed twice"),
    ("path\na.jpg\nnope.jpg\nb.png\nalso_missing.jpg\n", r"2 listed image\(s\) do not exist, rows 2, 4"),
])
def test_bad_manifest(folder, content, match):
    m = folder / "imgs" / "bad.csv"
    m.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as ei:
        load_manifest(m)
    assert "bad.csv" in str(ei.value)


def test_missing_files_can_be_skipped(folder):
    m = folder / "imgs" / "m.csv"
    m.write_text("path\nnot_there.jpg\n")
    assert len(load_manifest(m, check_files=False)) == 1


def test_missing_manifest_root_and_bad_suffix(folder):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_manifest(folder / "nope.csv")
    m = folder / "imgs" / "m.csv"
    m.write_text("path\na.jpg\n")
    with pytest.raises(FileNotFoundError, match="no_root"):
        load_manifest(m, root=folder / "no_root")
    j = folder / "m.json"
    j.write_text("{}")
    with pytest.raises(ValueError, match="m.json.*csv"):
        load_manifest(j)
    with pytest.raises(ValueError, match="default split"):
        load_manifest(m, split="test")
