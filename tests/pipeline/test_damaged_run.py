"""A damaged run folder is detected and recomputed (a warning names the file), or stops with an
error naming the file; a damaged file is never used. Each case damages a copy of one finished tiny
run, reruns the plain loop and expects the undamaged run's metrics. A full disk (ENOSPC) leaves no
partial file, names the file, and the rerun resumes."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reid_core.errors import RunFolderDamaged, expected_error_message
from reid_core.io.features_io import read_features, write_features
from reid_core.pipeline import cache, round_paths, run_pipeline
from reid_core.pipeline.verify import verify_run

from tests.pipeline.test_loop import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from reid_core.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("damaged")
    data = generate_synthetic(root / "synth", n_ids=12, n_cams=2, images_per_id_cam=3, seed=2)
    cfg = tiny_cfg(root / "ref", data, rounds=1, device="cpu", bf16=False)
    metrics = run_pipeline(cfg, progress=False)
    return cfg, metrics


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _other_shape(path):
    ids, feats = read_features(path)
    write_features(path, ids[:-3], np.ones((len(ids) - 3, feats.shape[1] // 2), np.float32), 1)


DAMAGE = {
    # name: (file in round_001 or run folder, how)
    "truncated-features": ("round_001/features.parquet", _truncate),
    "truncated-pseudo-labels": ("round_001/pseudo_labels.parquet", _truncate),
    "flipped-checkpoint": ("round_001/checkpoint.pt", _flip_bytes),
    "other-shape-features": ("round_001/features.parquet", _other_shape),
    "deleted-sidecar": ("round_001/pseudo_labels.parquet.stage.json", lambda p: p.unlink()),
    "garbage-sidecar": ("round_001/checkpoint.pt.stage.json", lambda p: p.write_text("{oops")),
    "edited-sidecar": ("round_001/features.parquet.stage.json",
                       lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                                          "output_digests": {"features.parquet": "0" * 64}}))),
    "truncated-round0-metrics": ("round_000/metrics.parquet", _truncate),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_detected_and_recomputed(case, finished, tmp_path, caplog):
    ref_cfg, ref_metrics = finished
    cfg = ref_cfg.replace(runs_dir=str(tmp_path / "runs"))
    shutil.copytree(ref_cfg.run_dir, cfg.run_dir)
    rel, damage = DAMAGE[case]
    target = cfg.run_dir / rel
    assert verify_run(cfg.run_dir)["problems"] == []
    damage(target)
    named = str(target).removesuffix(cache.SIDE_SUFFIX)
    problems = verify_run(cfg.run_dir)["problems"]
    assert problems and any(str(target) in p or named in p for p in problems), problems
    with caplog.at_level(logging.WARNING, logger="reid_core.pipeline.cache"):
        metrics = run_pipeline(cfg, progress=False)
    assert any("recomputing" in r.message and named in r.message for r in caplog.records), \
        [r.message for r in caplog.records]
    drop = ["elapsed_seconds", "round_seconds", "evaluate_seconds", "eval_extract_seconds", "config_json"]
    pd.testing.assert_frame_equal(ref_metrics.drop(columns=drop, errors="ignore"),
                                  metrics.drop(columns=drop, errors="ignore"))
    # every output now matches its record again
    assert verify_run(cfg.run_dir)["problems"] == []


def test_damaged_files_read_directly_name_the_file(finished, tmp_path):
    ref_cfg, _ = finished
    src = round_paths(ref_cfg, 1)
    feats = tmp_path / "features.parquet"
    shutil.copy(src["features"], feats)
    _truncate(feats)
    with pytest.raises(RunFolderDamaged, match=str(feats)):
        read_features(feats)
    side = tmp_path / "pseudo_labels.parquet.stage.json"
    side.write_text("{oops")
    with pytest.raises(RunFolderDamaged, match=str(side)):
        cache.read_meta(tmp_path / "pseudo_labels.parquet")
    from reid_core.io.checkpoint import load_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    shutil.copy(src["checkpoint"], ckpt)
    load_checkpoint(ckpt)  # without its record: loads
    shutil.copy(cache.sidecar(src["checkpoint"]), cache.sidecar(ckpt))
    load_checkpoint(ckpt)  # with a matching record: loads
    _flip_bytes(ckpt)
    with pytest.raises(RunFolderDamaged, match=f"{ckpt}: checkpoint bytes differ"):
        load_checkpoint(ckpt)
    cache.sidecar(ckpt).unlink()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(RunFolderDamaged, match=str(ckpt)):
        load_checkpoint(ckpt)


# ------------------------------------------------------------------------------------------------
# a full disk

def _disk_full_at(monkeypatch, name: str) -> list[str]:
    """Writes of files called ``name`` write half their bytes, then fail with ENOSPC (as a full disk)."""
    import errno

    import pyarrow.parquet as pq
    import torch

    hits: list[str] = []

    def failing(real):
        def write(obj, where, *args, **kwargs):
            if Path(where).name.startswith(f".{name}."):
                hits.append(str(where))
                Path(where).write_bytes(b"PAR1" + b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as pyarrow/torch do
            return real(obj, where, *args, **kwargs)

        return write

    monkeypatch.setattr(pq, "write_table", failing(pq.write_table))
    monkeypatch.setattr(torch, "save", failing(torch.save))
    return hits


@pytest.mark.parametrize("name", ["pseudo_labels.parquet", "checkpoint.pt"])
def test_disk_full_leaves_no_partial_file_and_resumes(name, finished, tmp_path, monkeypatch, capsys):
    from reid_core import cli

    ref_cfg, ref_metrics = finished
    cfg = ref_cfg.replace(runs_dir=str(tmp_path / "runs"))
    hits = _disk_full_at(monkeypatch, name)
    with pytest.raises(OSError) as err:
        run_pipeline(cfg, progress=False)
    target = round_paths(cfg, 1)["pseudo_labels" if name.startswith("pseudo") else "checkpoint"]
    assert hits and err.value.filename == str(target)
    assert expected_error_message(err.value).startswith(f"{target}: No space left on device (free some space")
    assert not target.exists() and not cache.sidecar(target).exists()
    assert not list(cfg.run_dir.rglob("*.tmp"))
    # the user sees one line
    assert cli.main(["run", "--config", str(cfg.run_dir / "config.json"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {target}: No space left on device")
    # space is back: the rerun resumes and ends with the metrics of an uninterrupted run
    monkeypatch.undo()
    metrics = run_pipeline(cfg, progress=False)
    drop = ["elapsed_seconds", "round_seconds", "evaluate_seconds", "eval_extract_seconds", "config_json"]
    pd.testing.assert_frame_equal(ref_metrics.drop(columns=drop, errors="ignore"),
                                  metrics.drop(columns=drop, errors="ignore"))


def test_reid_verify_reports_leftovers_of_a_killed_run(finished, tmp_path, capsys):
    from reid_core import cli

    ref_cfg, _ = finished
    run_dir = tmp_path / "r"
    shutil.copytree(ref_cfg.run_dir, run_dir)
    assert cli.main(["verify", str(run_dir)]) == 0
    (run_dir / "round_001" / ".features.parquet.abc.tmp").write_bytes(b"half")
    cache.sidecar(run_dir / "round_001" / "ise_plan.parquet").unlink()
    (run_dir / ".run.lock").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname()}))
    assert cli.main(["verify", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "ise_plan.parquet: no stage record" in err and ".features.parquet.abc.tmp: temporary file" in err
    assert "stale lock" in err
