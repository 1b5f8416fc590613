"""The plain loop over rounds on tiny synthetic data (no Prefect)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from reid_core.data.synthetic import generate_synthetic
from reid_core.pipeline import RunConfig, round_paths, run_pipeline
from reid_core.pipeline import cache, stages


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_synth")
    generate_synthetic(root / "synth", n_ids=16, n_cams=3, images_per_id_cam=3, seed=1)
    return root / "synth"


def tiny_cfg(tmp_path, data, **kw):
    base = dict(name="t", runs_dir=str(tmp_path / "runs"), dataset="market1501", data_root=str(data), rounds=2,
                iters=2, p=4, k=4, height=64, width=32, extract_batch_size=32, num_workers=0, min_samples=2,
                k1=6, k2=3, eps=0.7)
    base.update(kw)
    return RunConfig(**base)


def test_two_rounds_write_every_stage_and_resume_skips(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data)
    df = run_pipeline(cfg, progress=False)
    assert list(df["round"]) == [0, 1, 2]
    assert np.isfinite(df["mAP"]).all() and ((df["mAP"] >= 0) & (df["mAP"] <= 1)).all()
    for r in (1, 2):
        p = round_paths(cfg, r)
        for key in ("features", "pseudo_labels", "ise_plan", "checkpoint", "train_log", "metrics", "profile"):
            assert p[key].exists(), key
        prof = pd.read_parquet(p["profile"])
        assert {"extract", "cluster", "train", "evaluate"} <= set(prof["stage"])
        log = pd.read_parquet(p["train_log"])
        assert len(log) == cfg.iters and np.isfinite(log["loss"]).all()
    assert (cfg.run_dir / "metrics.parquet").exists()
    # resume: nothing recomputed (sidecars untouched), same metrics
    sides = {p: cache.sidecar(p).stat().st_mtime_ns for p in cfg.run_dir.rglob("*.parquet") if cache.sidecar(p).exists()}
    df2 = run_pipeline(cfg, progress=False)
    assert {p: cache.sidecar(p).stat().st_mtime_ns for p in sides} == sides
    pd.testing.assert_frame_equal(df.drop(columns=["elapsed_seconds", "round_seconds"], errors="ignore"),
                                  df2.drop(columns=["elapsed_seconds", "round_seconds"], errors="ignore"))
    # a changed clustering parameter recomputes from the cluster stage of round 1 on
    cfg2 = cfg.replace(eps=0.65)
    feats_mtime = cache.sidecar(round_paths(cfg, 1)["features"]).stat().st_mtime_ns
    run_pipeline(cfg2, progress=False)
    assert cache.sidecar(round_paths(cfg, 1)["features"]).stat().st_mtime_ns == feats_mtime
    assert cache.sidecar(round_paths(cfg, 1)["pseudo_labels"]).stat().st_mtime_ns != sides[round_paths(cfg, 1)["pseudo_labels"]]


def test_all_outliers_round_is_skipped_with_warning(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data, rounds=1, eps=0.01, min_samples=50, use_ise=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = run_pipeline(cfg, progress=False)
    assert any(issubclass(w.category, stages.AllOutliersWarning) for w in caught)
    assert list(df["round"]) == [0, 1]
    assert int(df.loc[df["round"] == 1, "n_clusters"].iloc[0]) == 0
    assert len(pd.read_parquet(round_paths(cfg, 1)["train_log"])) == 0


def test_supervised_mode_and_extra_losses(tmp_path, tiny_data):
    sup = tiny_cfg(tmp_path, tiny_data, name="sup", mode="supervised", rounds=1, supervised_loss="id+triplet")
    df = run_pipeline(sup, progress=False)
    log = pd.read_parquet(round_paths(sup, 1)["train_log"])
    assert {"loss_id", "loss_triplet"} <= set(log.columns)
    assert list(df["method"]) == ["supervised", "supervised"]
    ex = tiny_cfg(tmp_path, tiny_data, name="extra", rounds=1, extra_losses=["triplet"])
    run_pipeline(ex, progress=False)
    assert len(pd.read_parquet(round_paths(ex, 1)["train_log"])) == ex.iters
    with pytest.raises(ValueError, match="extra_losses"):
        run_pipeline(tiny_cfg(tmp_path, tiny_data, name="bad", rounds=1, extra_losses=["id"]), progress=False)


def test_supervised_mutual_learning_trains_two_networks_and_resumes(tmp_path, tiny_data):
    import torch

    from reid_core.io.checkpoint import load_checkpoint

    cfg = tiny_cfg(tmp_path, tiny_data, name="dml", mode="supervised", rounds=2, supervised_loss="id+aligned",
                   mutual_learning=True)
    df = run_pipeline(cfg, progress=False)
    assert np.isfinite(df["mAP"]).all()
    log = pd.read_parquet(round_paths(cfg, 1)["train_log"])
    for col in ("loss_partner", "loss_mutual_kl", "loss_mutual_metric"):
        assert col in log and np.isfinite(log[col]).all()
    # the AlignedReID term's two parts are logged and add up to it (local weight 1)
    assert np.allclose(log["loss_aligned"], log["loss_aligned_global"] + log["loss_aligned_local"], rtol=1e-5)
    assert (log["loss_mutual_kl"] > 0).any()
    ck1, ck2 = (load_checkpoint(round_paths(cfg, r)["checkpoint"]) for r in (1, 2))
    for ck in (ck1, ck2):
        assert {"partner_model", "partner_optimizer", "partner_scheduler", "partner_objective"} <= set(ck)
    # the two networks are different networks (classifiers drawn apart), and round 2 continued the partner
    cls = [k for k in ck1["model"] if k.startswith("classifier")][0]
    assert not torch.equal(ck1["model"][cls], ck1["partner_model"][cls])
    assert not torch.equal(ck1["partner_model"][cls], ck2["partner_model"][cls])
    # the partner is part of the cache key: plain supervised training is a different run
    assert cfg.train_params()["mutual_learning"] is True
    with pytest.raises(ValueError, match="mutual_learning"):
        tiny_cfg(tmp_path, tiny_data, mutual_learning=True)  # unsupervised mode
    with pytest.raises(ValueError, match="'id' term"):
        run_pipeline(tiny_cfg(tmp_path, tiny_data, name="dml-noid", mode="supervised", rounds=1,
                              supervised_loss="triplet", mutual_learning=True), progress=False)


def test_supervised_offline_mining_trains(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data, name="offline", mode="supervised", rounds=1, supervised_loss="id+triplet_offline")
    df = run_pipeline(cfg, progress=False)
    log = pd.read_parquet(round_paths(cfg, 1)["train_log"])
    assert "loss_triplet_offline" in log and np.isfinite(log["loss_triplet_offline"]).all()
    assert np.isfinite(df["mAP"]).all()
