"""Outputs written through the atomic helpers get the mode a plain ``open()`` would give them
(``0o666 & ~umask``), not ``mkstemp``'s 0600; the synthetic dataset folder gets ``0o777 & ~umask``."""
from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from reid_core.io import atomic
from reid_core.io.atomic import append_parquet, atomic_path, current_umask, write_parquet
from reid_core.io.checkpoint import save_checkpoint
from reid_core.io.features_io import write_features
from reid_core.pipeline import cache


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask, monkeypatch):
    assert current_umask() == umask
    assert current_umask() == umask  # reading did not change it

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)  # the set-and-restore fallback
    assert current_umask() == umask
    assert current_umask() == umask


def test_every_atomic_writer_gives_open_mode(umask, tmp_path):
    import torch

    want = 0o666 & ~umask
    df = pd.DataFrame({"a": [1, 2]})
    parquet = write_parquet(df, tmp_path / "x.parquet")
    appended = append_parquet(df, tmp_path / "log.parquet")
    features = write_features(tmp_path / "features.parquet", np.arange(3), np.ones((3, 4), np.float32), 1)
    ckpt = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    side = cache.mark_done([parquet], "digest")
    with atomic_path(tmp_path / "config.json") as tmp:
        tmp.write_text("{}")
    for path in (parquet, appended, features, ckpt, side, tmp_path / "config.json"):
        assert _mode(path) == want, f"{path.name}: {oct(_mode(path))} != {oct(want)}"
    # a plain open() in the same folder agrees
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert _mode(plain) == want


def test_rewrite_keeps_open_mode(umask, tmp_path):
    path = tmp_path / "x.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), path)
    os.chmod(path, 0o600)
    write_parquet(pd.DataFrame({"a": [2]}), path)  # a new file renamed over the old one
    assert _mode(path) == 0o666 & ~umask


def test_synthetic_dataset_folder_gets_mkdir_mode(umask, tmp_path):
    from reid_core.data.synthetic import generate_synthetic

    out = generate_synthetic(tmp_path / "synth", n_ids=2, n_cams=2, images_per_id_cam=1, height=16, width=8)
    assert _mode(out) == 0o777 & ~umask
    for sub in out.iterdir():
        want = (0o777 if sub.is_dir() else 0o666) & ~umask
        assert _mode(sub) == want, sub
