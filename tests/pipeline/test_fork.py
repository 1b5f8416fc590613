"""Forked runs (reid_core.pipeline.fork): a branch at round N repeats its parent exactly when
nothing changes, follows its own learning-rate schedule when that is the change, and refuses
parents and folders it cannot branch from, naming them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from reid_core.data.synthetic import generate_synthetic
from reid_core.io.checkpoint import load_checkpoint
from reid_core.pipeline import RunConfig, cache, round_paths, run_pipeline
from reid_core.pipeline.fork import FORK_FILE, fork_run, read_fork
from reid_core.pipeline.stages import conform_schedule
from reid_core.train import TrainConfig, build_scheduler

TIMING = ["elapsed_seconds", "round_seconds", "evaluate_seconds", "eval_extract_seconds"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fork_synth")
    generate_synthetic(root / "synth", n_ids=16, n_cams=3, images_per_id_cam=3, seed=3)
    return root / "synth"


def tiny_cfg(runs, data, **kw):
    base = dict(name="parent", runs_dir=str(runs), dataset="market1501", data_root=str(data), rounds=3,
                iters=2, p=4, k=4, height=64, width=32, extract_batch_size=32, num_workers=0, min_samples=2,
                k1=6, k2=3, eps=0.7, use_ise=False, seed=5)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_data):
    runs = tmp_path_factory.mktemp("fork_runs")
    cfg = tiny_cfg(runs, tiny_data)
    df = run_pipeline(cfg, progress=False)
    assert list(df["round"]) == [0, 1, 2, 3]
    return cfg, df


def _weights(path):
    return load_checkpoint(path)["model"]


def test_unchanged_fork_repeats_the_parent_exactly(parent, tiny_data):
    pcfg, pdf = parent
    stamps = {p: p.stat().st_mtime_ns for p in pcfg.run_dir.rglob("*") if p.is_file()}
    child = pcfg.replace(name="same")
    fork_run(pcfg.run_dir, 1, child)
    seen = []
    df = run_pipeline(child, progress=False, on_round=lambda r, m: seen.append((r, bool(m["inherited"].iloc[0]))))
    assert seen == [(0, True), (1, True), (2, False), (3, False)]
    assert list(df["inherited"]) == [True, True, False, False]
    assert (df["fork_round"] == 1).all() and (df["fork_parent"] == str(pcfg.run_dir.resolve())).all()
    # rounds 2 and 3 were trained again from round 1's checkpoint and agree with the parent's
    assert not (round_paths(child, 2)["checkpoint"].samefile(round_paths(pcfg, 2)["checkpoint"]))
    cols = [c for c in ("mAP", "rank1", "mINP", "ari", "n_clusters", "n_outliers") if c in pdf.columns]
    pd.testing.assert_frame_equal(df[cols].reset_index(drop=True), pdf[cols].reset_index(drop=True))
    a, b = _weights(round_paths(child, 3)["checkpoint"]), _weights(round_paths(pcfg, 3)["checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the parent's files are untouched (links are replaced by rename, never written through)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # forking again for the same parent and round is a no-op; the run resumes without recomputing
    fork_run(pcfg.run_dir, 1, child)
    side = cache.sidecar(round_paths(child, 3)["checkpoint"]).stat().st_mtime_ns
    run_pipeline(child, progress=False)
    assert cache.sidecar(round_paths(child, 3)["checkpoint"]).stat().st_mtime_ns == side


def test_fork_follows_its_own_learning_rate_schedule(parent):
    pcfg, _ = parent
    child = pcfg.replace(name="step1", step_size=1, gamma=0.5)
    fork_run(pcfg.run_dir, 1, child)
    run_pipeline(child, progress=False)
    lr_parent = pd.read_parquet(round_paths(pcfg, 2)["train_log"])["lr"]
    lr2 = pd.read_parquet(round_paths(child, 2)["train_log"])["lr"]
    lr3 = pd.read_parquet(round_paths(child, 3)["train_log"])["lr"]
    assert np.allclose(lr_parent, pcfg.lr)  # the parent's step (20) is far away
    assert np.allclose(lr2, pcfg.lr * 0.5) and np.allclose(lr3, pcfg.lr * 0.25)
    # and the weights did change: round 2 differs from the parent's
    a, b = _weights(round_paths(child, 2)["checkpoint"]), _weights(round_paths(pcfg, 2)["checkpoint"])
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    sched = load_checkpoint(round_paths(child, 3)["checkpoint"])["scheduler"]
    assert sched["step_size"] == 1 and sched["gamma"] == 0.5


def test_conform_schedule_against_the_closed_form():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([w], lr=1e-3)
    sched = build_scheduler(opt, TrainConfig(lr=1e-3, step_size=2, gamma=0.1))
    for _ in range(5):
        opt.step()
        sched.step()
    before = opt.param_groups[0]["lr"]
    assert not conform_schedule(sched, TrainConfig(lr=1e-3, step_size=2, gamma=0.1))
    assert opt.param_groups[0]["lr"] == before  # untouched to the last bit
    assert conform_schedule(sched, TrainConfig(lr=2e-3, step_size=3, gamma=0.5))
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.5 ** (5 // 3))
    sched.step()  # epoch 6: the next step of the new schedule
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.5 ** 2)


def test_fork_refuses_what_it_cannot_branch_from(parent, tmp_path, tiny_data):
    pcfg, _ = parent
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="config.json"):
        fork_run(tmp_path / "nowhere", 1, tiny_cfg(runs, tiny_data, name="c0"))
    with pytest.raises(ValueError, match=r"'height' differs"):
        fork_run(pcfg.run_dir, 1, tiny_cfg(runs, tiny_data, name="c1", height=32))
    with pytest.raises(FileNotFoundError, match="round 4 of the parent is not finished"):
        fork_run(pcfg.run_dir, 4, tiny_cfg(runs, tiny_data, name="c2", rounds=6))
    with pytest.raises(ValueError, match="fork round must be >= 1"):
        fork_run(pcfg.run_dir, 0, tiny_cfg(runs, tiny_data, name="c3"))
    with pytest.raises(ValueError, match="plans only 1 rounds"):
        fork_run(pcfg.run_dir, 2, tiny_cfg(runs, tiny_data, name="c4", rounds=1))
    busy = tiny_cfg(runs, tiny_data, name="busy")
    busy.run_dir.mkdir(parents=True)
    (busy.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        fork_run(pcfg.run_dir, 1, busy)
    assert (busy.run_dir / "notes.txt").read_text() == "mine"
    other = tiny_cfg(runs, tiny_data, name="other")
    fork_run(pcfg.run_dir, 1, other)
    with pytest.raises(FileExistsError, match="already a fork"):
        fork_run(pcfg.run_dir, 2, other)
    # a damaged round in the parent is named, and no half folder is left behind
    (pcfg.run_dir / "round_002" / "checkpoint.pt.stage.json").rename(pcfg.run_dir / "round_002" / "saved.json")
    try:
        with pytest.raises(FileNotFoundError, match="round_002"):
            fork_run(pcfg.run_dir, 2, tiny_cfg(runs, tiny_data, name="c5"))
        assert not (runs / "c5").exists()
    finally:
        (pcfg.run_dir / "round_002" / "saved.json").rename(pcfg.run_dir / "round_002" / "checkpoint.pt.stage.json")
    bad = tiny_cfg(runs, tiny_data, name="bad")
    bad.run_dir.mkdir(parents=True)
    (bad.run_dir / FORK_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="unreadable fork record"):
        read_fork(bad.run_dir)
    record = read_fork(other.run_dir)
    assert record["round"] == 1 and RunConfig.from_dict(record["parent_config"]) == pcfg
    assert json.loads((other.run_dir / FORK_FILE).read_text())["checkpoint_sha256"]
