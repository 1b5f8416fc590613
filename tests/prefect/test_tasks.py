"""Unit tests of the Prefect tasks: each task's plain function (``task.fn``) on tiny inputs, no
Prefect server. Also: the caching / retry choices, warning re-logging, progress reporting, and the
proof that training never reads ground-truth identities."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed

import tasks
from reid_core.io.checkpoint import load_checkpoint
from reid_core.pipeline import cache, loop
from tasks import _common

ALL_TASKS = [tasks.index_images, tasks.extract_features, tasks.build_pseudo_labels, tasks.plan_ise,
             tasks.train_epoch, tasks.evaluate, tasks.ground_truth_labels, tasks.write_profile,
             tasks.collect_metrics]


def _run_round_with_task_fns(cfg, images=None):
    """Index (unless given), evaluate round 0, then round 1 through every task's ``.fn``."""
    images = images or tasks.index_images.fn(cfg.dataset, cfg.data_root, cfg.run_dir / "images.parquet")
    d = cfg.to_dict()
    p0, p = loop.round_paths(cfg, 0), loop.round_paths(cfg, 1)
    out = {"images": images}
    out["metrics0"] = tasks.evaluate.fn(images, None, d, 0, p0["metrics"])
    out["features"] = tasks.extract_features.fn(images, None, d, 1, p["features"])
    out["labels"] = tasks.build_pseudo_labels.fn(out["features"], d, 1, p["pseudo_labels"])
    out["ise_plan"] = tasks.plan_ise.fn(out["features"], out["labels"], d, 1, p["ise_plan"])
    out["checkpoint"], out["train_log"] = tasks.train_epoch.fn(images, out["labels"], out["features"], None, d, 1,
                                                               p["checkpoint"], p["train_log"])
    out["metrics1"] = tasks.evaluate.fn(images, out["checkpoint"], d, 1, p["metrics"], pseudo_labels_path=out["labels"])
    out["profile"] = tasks.write_profile.fn(d, 1)
    return out


@pytest.fixture(scope="module")
def one_round(make_cfg, tmp_path_factory):
    cfg = make_cfg("unit", tmp_path_factory.mktemp("runs"), rounds=1)
    return cfg, _run_round_with_task_fns(cfg)


def test_every_task_writes_its_output(one_round):
    cfg, out = one_round
    images = pd.read_parquet(out["images"])
    assert set(images.columns) >= {"image_id", "path", "camid", "pid", "split"}
    assert set(images["split"]) == {"train", "query", "gallery"}
    n_train = int((images["split"] == "train").sum())
    feats = pd.read_parquet(out["features"])
    assert len(feats) == n_train and (feats["round"] == 1).all()
    f = np.stack(feats["feature"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-4)
    labels = pd.read_parquet(out["labels"])
    assert len(labels) == n_train and labels["label"].min() >= -1
    assert out["ise_plan"].exists()
    assert isinstance(load_checkpoint(out["checkpoint"])["model"], dict)
    log = pd.read_parquet(out["train_log"])
    assert {"round", "iteration", "loss"} <= set(log.columns)
    for key, r in (("metrics0", 0), ("metrics1", 1)):
        m = pd.read_parquet(out[key])
        assert len(m) == 1 and m["round"].iloc[0] == r
        for col in ("mAP", "rank1", "mINP"):
            assert 0.0 <= m[col].iloc[0] <= 1.0
    assert set(pd.read_parquet(out["profile"])["stage"]) >= {"extract", "cluster", "train", "evaluate"}
    run_metrics = pd.read_parquet(tasks.collect_metrics.fn(cfg.to_dict()))
    assert list(run_metrics["round"]) == [0, 1]


def test_tasks_return_paths_and_skip_fresh_stages(one_round):
    cfg, out = one_round
    # one sidecar per stage, beside its first output (train: the checkpoint); the profile is a report
    sidecars = {k: cache.sidecar(v) for k, v in out.items() if k not in ("images", "train_log", "profile")}
    before = {k: os.stat(s).st_mtime_ns for k, s in sidecars.items()}
    again = _run_round_with_task_fns(cfg, images=out["images"])
    assert {k: Path(v) for k, v in again.items() if k != "profile"} == \
           {k: Path(v) for k, v in out.items() if k != "profile"}
    after = {k: os.stat(s).st_mtime_ns for k, s in sidecars.items()}
    changed = {k for k in before if before[k] != after[k]}
    assert not changed, f"stages recomputed although fresh: {changed}"


def test_task_accepts_runconfig_or_dict(tiny_cfg):
    assert _common.as_config(tiny_cfg) is tiny_cfg
    assert _common.as_config(tiny_cfg.to_dict()) == tiny_cfg
    with pytest.raises(ValueError, match="unknown field"):
        _common.as_config({**tiny_cfg.to_dict(), "nonsense": 1})


def test_bad_dataset_error_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="dataset"):
        tasks.index_images.fn("cifar", tmp_path, tmp_path / "images.parquet")


def test_caching_and_retry_choices():
    """Prefect's own cache is off everywhere (stages cache by content); only I/O tasks retry."""
    for t in ALL_TASKS:
        assert isinstance(t.cache_policy, type(NONE)), t.name
        assert t.persist_result is False, t.name
    io_tasks = {tasks.index_images.name, tasks.evaluate.name}
    for t in ALL_TASKS:
        if t.name in io_tasks:
            assert t.retries == _common.IO_RETRIES and t.retry_condition_fn is _common.retry_on_os_error
        else:
            assert t.retries == 0, t.name


@pytest.mark.parametrize("exc, expected", [
    (OSError("stale NFS handle"), True),
    (TimeoutError("read timed out"), True),
    (FileNotFoundError("gone"), False),
    (ValueError("bad column"), False),
    (RuntimeError("cuda"), False),
])
def test_retry_only_on_transient_os_errors(exc, expected):
    assert _common.retry_on_os_error(None, None, Failed(data=exc)) is expected


def test_retry_condition_false_on_success():
    assert _common.retry_on_os_error(None, None, Completed(data=1)) is False


def test_io_task_retries_an_os_error_then_succeeds(monkeypatch, tmp_path, prefect_harness):
    """End to end through the task engine: one transient OSError, then success."""
    from reid_core.pipeline import stages

    calls = []

    def flaky(dataset, data_root, out_path):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("transient")
        return Path(out_path)

    monkeypatch.setattr(stages, "index_images", flaky)
    fast = tasks.index_images.with_options(retry_delay_seconds=0)
    assert fast("synthetic", tmp_path, tmp_path / "images.parquet") == tmp_path / "images.parquet"
    assert len(calls) == 2


def test_call_stage_relogs_warnings(caplog):
    import warnings

    from reid_core.pipeline.stages import AllOutliersWarning

    def stage():
        warnings.warn("no cluster", AllOutliersWarning)
        return 7

    with caplog.at_level(logging.WARNING, logger="tasks"):
        assert _common.call_stage(stage) == 7
    assert any("AllOutliersWarning: no cluster" in r.getMessage() for r in caplog.records)


def test_progress_callback_maps_fraction_into_span(monkeypatch):
    import prefect.artifacts

    assert _common.progress_callback(None, 0, 100) is None
    seen = []
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact",
                        lambda artifact_id, progress: seen.append(progress))
    cb = _common.progress_callback("00000000-0000-0000-0000-000000000001", 20.0, 60.0, min_interval_s=0.0)
    for f in (0.0, 0.25, 0.5, 1.0, 1.5):
        cb(f)
    assert seen == [20.0, 30.0, 40.0, 60.0, 60.0]
    # throttled: only the first and the final (fraction 1) update go through
    seen.clear()
    cb = _common.progress_callback("00000000-0000-0000-0000-000000000001", 0.0, 100.0, min_interval_s=3600)
    for f in (0.1, 0.2, 0.3, 1.0):
        cb(f)
    assert seen == [10.0, 100.0]


# every label-free lever of issue 11 switched on at once: camera normalisation, density eps,
# k1 from the data, splitting, camera-aware proxies, and ISE in its new regime
ALL_LEVERS = dict(camera_norm=True, split_factor=1.5, eps_rho=0.05, k1_per_cluster=1.5, cam_intra_weight=1.0,
                  cam_inter_weight=0.5, use_ise=True, lp_positive="own", ise_update_with_support=False,
                  ise_horizon=100, ise_start=1)


@pytest.mark.parametrize("levers", [{}, ALL_LEVERS], ids=["defaults", "all-levers"])
def test_training_never_reads_ground_truth_pids(make_cfg, tmp_path, levers):
    """Garbage in the train split's ``pid`` column changes nothing in pseudo labels or training,
    with today's defaults and with every clustering / training lever on."""
    results = {}
    for variant in ("true", "garbage"):
        cfg = make_cfg(variant, tmp_path, rounds=1, **levers)
        d = cfg.to_dict()
        images_path = tasks.index_images.fn(cfg.dataset, cfg.data_root, cfg.run_dir / "images.parquet")
        if variant == "garbage":
            df = pd.read_parquet(images_path)
            train = df["split"] == "train"
            rng = np.random.default_rng(123)
            df.loc[train, "pid"] = rng.integers(10_000, 20_000, size=int(train.sum()))
            df.to_parquet(images_path, index=False)
        p = loop.round_paths(cfg, 1)
        feats = tasks.extract_features.fn(images_path, None, d, 1, p["features"])
        labels = tasks.build_pseudo_labels.fn(feats, d, 1, p["pseudo_labels"], images_path=images_path)
        ckpt, log = tasks.train_epoch.fn(images_path, labels, feats, None, d, 1, p["checkpoint"], p["train_log"])
        if levers:
            assert pd.read_parquet(labels)["label"].max() >= 1  # at least two clusters: training really ran
            assert "loss_cam_intra" in pd.read_parquet(log).columns
        results[variant] = (pd.read_parquet(labels), pd.read_parquet(log), load_checkpoint(ckpt))
    (l1, log1, c1), (l2, log2, c2) = results["true"], results["garbage"]
    assert not pd.read_parquet(tmp_path / "true" / "images.parquet").equals(
        pd.read_parquet(tmp_path / "garbage" / "images.parquet"))  # the inputs really differ
    pd.testing.assert_frame_equal(l1, l2)
    timing = [c for c in log1.columns if "second" in c or c.endswith("_per_s")]  # wall-clock columns
    pd.testing.assert_frame_equal(log1.drop(columns=timing), log2.drop(columns=timing))
    assert c1["model"].keys() == c2["model"].keys()
    for key, value in c1["model"].items():
        assert torch.equal(value, c2["model"][key]), key


def test_call_stage_keeps_library_noise_out_of_warnings(caplog):
    import warnings

    def stage():
        warnings.warn("unclosed socket", ResourceWarning)
        return 1

    with caplog.at_level(logging.DEBUG, logger="tasks"):
        _common.call_stage(stage)
    assert all(r.levelno < logging.WARNING for r in caplog.records if "unclosed" in r.getMessage())


def test_ground_truth_labels_task_for_supervised_mode(one_round, tmp_path):
    _, out = one_round
    labels = pd.read_parquet(tasks.ground_truth_labels.fn(out["images"], tmp_path / "gt.parquet", 1))
    images = pd.read_parquet(out["images"])
    train = images[images["split"] == "train"]
    assert list(labels["image_id"]) == list(train["image_id"])
    # same identity <=> same label (contiguous 0..C-1)
    assert labels["label"].nunique() == train["pid"].nunique() and labels["label"].max() == train["pid"].nunique() - 1
    same_pid = train["pid"].to_numpy()[:, None] == train["pid"].to_numpy()[None, :]
    same_label = labels["label"].to_numpy()[:, None] == labels["label"].to_numpy()[None, :]
    assert (same_pid == same_label).all()
