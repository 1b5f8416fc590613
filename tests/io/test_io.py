import json

import numpy as np
import pandas as pd
import pytest
import torch

from reid_core.io import atomic_path, inputs_digest, load_checkpoint, params_digest, read_parquet, save_checkpoint, write_parquet
from reid_core.io.features_io import read_features, write_features


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_read_parquet_names_file_and_column(tmp_path):
    path = tmp_path / "x.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), path)
    with pytest.raises(ValueError, match=r"x\.parquet.*'b'"):
        read_parquet(path, required=["a", "b"])
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_parquet(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match="bad.parquet"):
        read_parquet(bad)


class Evil:
    pass


def test_checkpoint_roundtrip_and_safe_load(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "round": 3, "config": json.dumps({"a": 1})}
    path = save_checkpoint(state, tmp_path / "c.pt")
    back = load_checkpoint(path)
    assert back["round"] == 3 and torch.equal(back["model"]["w"], torch.arange(4.0))

    torch.save({"obj": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")


def test_digests_depend_on_content_and_params_only(tmp_path):
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert inputs_digest([a], {"x": 1}) == inputs_digest([b], {"x": 1})  # path does not matter
    assert inputs_digest([a], {"x": 1}) != inputs_digest([a], {"x": 2})
    b.write_bytes(b"other")
    assert inputs_digest([a], {"x": 1}) != inputs_digest([b], {"x": 1})
    assert params_digest({"a": 1, "b": 2}) == params_digest({"b": 2, "a": 1})
    assert params_digest({"a": 1.0}) != params_digest({"a": 1.0000001})


def test_features_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 5)).astype(np.float32)
    ids = np.arange(10, 17)
    write_features(tmp_path / "f.parquet", ids, feats, round_idx=2)
    ids2, feats2 = read_features(tmp_path / "f.parquet")
    assert np.array_equal(ids, ids2) and np.array_equal(feats, feats2)
    df = pd.read_parquet(tmp_path / "f.parquet")
    assert list(df.columns) == ["image_id", "feature", "round"] and (df["round"] == 2).all()
    with pytest.raises(ValueError, match="features must be"):
        write_features(tmp_path / "g.parquet", ids[:3], feats, 0)


def _append_many(path: str, worker: int, n: int) -> None:
    import pandas as pd

    from reid_core.io.atomic import append_parquet

    for i in range(n):
        append_parquet(pd.DataFrame({"worker": [worker], "i": [i]}), path)


def test_append_parquet_two_processes_lose_no_row(tmp_path):
    """Two benchmark queues append to one results file at once: every row must survive."""
    import multiprocessing as mp

    import pandas as pd

    path = str(tmp_path / "rows.parquet")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = pd.read_parquet(path)
    assert len(df) == 80
    for w in (0, 1):
        assert sorted(df.loc[df.worker == w, "i"]) == list(range(40))
