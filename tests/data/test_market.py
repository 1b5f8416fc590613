import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_core.data import load_images, load_market1501, parse_market_name, summarize_images

MARKET = Path(__file__).resolve().parents[3] / "shared" / "data" / "market1501"
COLUMNS = ["image_id", "path", "camid", "pid", "split"]


def _jpg(path: Path, colour=(120, 30, 200)) -> None:
    Image.new("RGB", (8, 16), colour).save(path)


def make_fake_market(root: Path) -> dict:
    """Tiny folder shaped like the public Market-1501: junk -1 and distractor 0000 in the gallery,
    junk in the query too, a Thumbs.db and extra folders that must be ignored."""
    files = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c6s3_085567_02.jpg",
                               "1500_c3s3_079426_01.jpg"],
        "query": ["0001_c1s1_001051_00.jpg", "0003_c4s6_015641_00.jpg", "-1_c2s1_000801_01.jpg"],
        "bounding_box_test": ["0001_c2s1_000301_01.jpg", "0001_c1s1_000151_01.jpg", "0003_c5s1_000401_01.jpg",
                              "0000_c1s1_000024_01.jpg", "0000_c6s1_000128_04.jpg",
                              "-1_c1s1_000401_03.jpg", "-1_c3s1_000426_02.jpg", "-1_c6s4_002452_05.jpg"],
    }
    for folder, names in files.items():
        (root / folder).mkdir(parents=True)
        for n in names:
            _jpg(root / folder / n)
        (root / folder / "Thumbs.db").write_bytes(b"\x00\x01")
        (root / folder / "._0002_c1s1_000451_03.jpg").write_bytes(b"\x00\x05")  # macOS AppleDouble
    (root / "gt_bbox").mkdir()
    (root / "readme.txt").write_text("public Market-1501")
    return files


def test_parse_market_name():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_market_name("/x/y/1501_c6s4_002452_05.jpg") == (1501, 5)
    assert parse_market_name("-1_c3s1_000426_02.jpg") == (-1, 2)
    assert parse_market_name("0000_c2s1_000024_01.JPG") == (0, 1)
    for bad in ["0002_c1_000451_03.jpg", "abc.jpg", "0002_c1s1_000451_03.png", "0002-c1s1-000451-03.jpg",
                "-2_c1s1_000451_03.jpg", "0002_c0s1_000451_03.jpg"]:
        with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
            parse_market_name(bad)


def test_fake_public_market_layout(tmp_path, caplog):
    make_fake_market(tmp_path)
    with caplog.at_level(logging.WARNING, logger="reid_core.data.market"):
        df = load_market1501(tmp_path)
    assert list(df.columns) == COLUMNS
    assert df.attrs["n_junk"] == 4
    assert df.attrs["junk_per_split"] == {"train": 0, "query": 1, "gallery": 3}
    assert "dropped 4 junk" in caplog.text
    assert (df["pid"] != -1).all()
    assert df["image_id"].tolist() == list(range(len(df)))
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": 4, "query": 2, "gallery": 5}
    # distractors kept in the gallery with pid 0
    distr = df[df["pid"] == 0]
    assert len(distr) == 2 and set(distr["split"]) == {"gallery"}
    # cameras 0-based, paths absolute, existing, .jpg only
    row = df[df["path"].str.endswith("0007_c6s3_085567_02.jpg")].iloc[0]
    assert (row["pid"], row["camid"], row["split"]) == (7, 5, "train")
    assert df["camid"].between(0, 5).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert not df["path"].str.contains("Thumbs").any()
    for c in ("image_id", "camid", "pid"):
        assert df[c].dtype == np.int64
    # deterministic order: split order, then file name
    assert df["split"].tolist() == ["train"] * 4 + ["query"] * 2 + ["gallery"] * 5
    for split, part in df.groupby("split"):
        names = [Path(p).name for p in part["path"]]
        assert names == sorted(names)
    assert df.equals(load_market1501(tmp_path))


def test_no_junk_no_warning(tmp_path, caplog):
    make_fake_market(tmp_path)
    with caplog.at_level(logging.WARNING):
        df = load_market1501(tmp_path, splits=("train",))
    assert df.attrs["n_junk"] == 0 and "junk" not in caplog.text
    assert set(df["split"]) == {"train"}


def test_splits_subset_and_order(tmp_path):
    make_fake_market(tmp_path)
    df = load_market1501(tmp_path, splits=("gallery", "query"))
    assert df["split"].tolist() == ["query"] * 2 + ["gallery"] * 5
    assert load_market1501(tmp_path, splits="query")["split"].unique().tolist() == ["query"]
    with pytest.raises(ValueError, match="unknown"):
        load_market1501(tmp_path, splits=("test",))


def test_nested_release_folder(tmp_path):
    make_fake_market(tmp_path / "Market-1501-v15.09.15")
    df = load_market1501(tmp_path)
    assert len(df) == 11
    assert "Market-1501-v15.09.15" in df.attrs["root"]


def test_missing_root_and_split_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_market1501(tmp_path / "nowhere")
    make_fake_market(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "query")
    with pytest.raises(FileNotFoundError, match=r"query.*missing"):
        load_market1501(tmp_path)
    assert len(load_market1501(tmp_path, splits=("train", "gallery"))) == 9


def test_empty_split_folder(tmp_path):
    for f in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / f).mkdir()
    (tmp_path / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"bounding_box_train.*no \.jpg"):
        load_market1501(tmp_path)


def test_only_junk_folder(tmp_path):
    (tmp_path / "query").mkdir()
    _jpg(tmp_path / "query" / "-1_c1s1_000001_01.jpg")
    with pytest.raises(ValueError, match="only junk"):
        load_market1501(tmp_path, splits="query")


def test_malformed_name_names_file(tmp_path):
    make_fake_market(tmp_path)
    _jpg(tmp_path / "query" / "person3_cam2.jpg")
    with pytest.raises(ValueError, match="person3_cam2.jpg"):
        load_market1501(tmp_path)


def test_empty_and_unreadable_image(tmp_path):
    make_fake_market(tmp_path)
    (tmp_path / "bounding_box_test" / "0003_c2s1_000001_01.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"0003_c2s1_000001_01\.jpg.*empty"):
        load_market1501(tmp_path)
    (tmp_path / "bounding_box_test" / "0003_c2s1_000001_01.jpg").write_bytes(b"not a jpeg at all")
    assert len(load_market1501(tmp_path)) == 12  # contents are not decoded by default
    with pytest.raises(ValueError, match=r"0003_c2s1_000001_01\.jpg.*unreadable"):
        load_market1501(tmp_path, verify=True)


def test_load_images_dispatch(tmp_path):
    make_fake_market(tmp_path)
    assert load_images(tmp_path).equals(load_market1501(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "missing")


@pytest.mark.market
@pytest.mark.skipif(not MARKET.is_dir(), reason="shared Market-1501 copy not present")
def test_shared_market_counts():
    df = load_market1501(MARKET)
    s = summarize_images(df).set_index("split")
    assert s.loc[["train", "query", "gallery"], "images"].tolist() == [7983, 426, 1318]
    assert s.loc[["train", "query", "gallery"], "identities"].tolist() == [451, 100, 97]
    assert df.attrs["n_junk"] == 0
    assert df["camid"].between(0, 5).all()
    assert df["image_id"].tolist() == list(range(len(df)))
    # identities are disjoint between train and test
    train = set(df.loc[df.split == "train", "pid"])
    test = set(df.loc[df.split != "train", "pid"])
    assert not train & test
