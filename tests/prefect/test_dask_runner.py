"""Sharded feature extraction: parts + merge equal one extraction, each part resumes on its own, a
worker that cannot see the run folder fails clearly, and the two-round flow on a 2-worker Dask
``LocalCluster`` gives the same metrics as the default in-process runner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reid_core.io.features_io import read_features
from reid_core.pipeline import cache, loop, stages

pytest.importorskip("prefect_dask")

#: columns that differ between two identical runs (time, memory, provenance holding the run name)
VOLATILE = ("seconds", "_per_s", "config_json", "machine", "peak_rss")


def test_shard_slices_cover_every_row_once():
    for n in (0, 1, 5, 32, 33):
        for k in (1, 2, 3, 7):
            rows = np.concatenate([np.arange(n)[stages.shard_slice(n, s, k)] for s in range(k)])
            np.testing.assert_array_equal(rows, np.arange(n))
    with pytest.raises(ValueError):
        stages.shard_slice(10, 2, 2)


def test_sharded_extraction_equals_one_extraction_and_resumes_per_shard(tiny_cfg, monkeypatch):
    cfg = tiny_cfg
    cfg.run_dir.mkdir(parents=True)
    images = stages.index_images(cfg.dataset, cfg.data_root, cfg.run_dir / "images.parquet")
    whole = stages.extract_features_stage(images, None, cfg, 1, cfg.run_dir / "whole.parquet", progress=False)
    out = cfg.run_dir / "features.parquet"
    parts = [stages.extract_features_stage(images, None, cfg, 1, stages.feature_part_path(out, s, 3), progress=False,
                                           shard=(s, 3)) for s in range(3)]
    assert [p.name for p in parts] == [f"part-0000{s}-of-00003.parquet" for s in range(3)]
    merged = stages.merge_feature_parts(parts, 1, out)
    ids_a, fa = read_features(whole)
    ids_b, fb = read_features(merged)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(fa, fb, atol=1e-5)  # eval-mode features do not depend on the batch
    assert cache.read_meta(merged)["n_parts"] == 3

    # resume: a deleted part is the only one recomputed, the merge then reruns
    calls = []
    real = stages.extract_features_stage.__globals__["_build_or_load_model"]
    monkeypatch.setattr(stages, "_build_or_load_model", lambda *a: calls.append(1) or real(*a))
    parts[1].unlink()
    for s in range(3):
        stages.extract_features_stage(images, None, cfg, 1, stages.feature_part_path(out, s, 3), progress=False,
                                      shard=(s, 3))
    assert len(calls) == 1
    stages.merge_feature_parts(parts, 1, out)
    np.testing.assert_allclose(read_features(out)[1], fb, atol=0)


def test_a_worker_that_cannot_see_the_run_folder_fails_clearly(tiny_cfg, tmp_path):
    with pytest.raises(stages.RunFolderAccessError, match="cannot read .*shared storage|cannot read"):
        stages.extract_features_stage(tmp_path / "elsewhere" / "images.parquet", None, tiny_cfg, 1,
                                      tmp_path / "f.parquet", shard=(0, 2))
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        images = tmp_path / "images.parquet"
        images.write_bytes(b"x")
        import os

        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("root ignores directory permissions")
        with pytest.raises(stages.RunFolderAccessError, match="cannot write"):
            stages.extract_features_stage(images, None, tiny_cfg, 1, ro / "f.parquet", shard=(0, 2))
    finally:
        ro.chmod(0o700)


def test_unknown_task_runner_is_rejected():
    from flows._runners import dask_scheduler

    with pytest.raises(ValueError, match="task_runner"):
        with dask_scheduler("ray", 2):
            pass


def _stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in df.columns if any(v in c for v in VOLATILE)]).reset_index(drop=True)


def test_two_rounds_on_a_two_worker_dask_cluster_match_the_default_runner(prefect_harness, tiny_flow_params,
                                                                         tmp_path):
    from flows.cluster_contrast import cluster_contrast

    runs = tmp_path / "runs"
    cluster_contrast(name="same", runs_dir=str(runs / "default"), **tiny_flow_params)
    out = cluster_contrast(name="same", runs_dir=str(runs / "dask"), task_runner="dask-threads", dask_workers=2,
                           **tiny_flow_params)
    a = pd.read_parquet(runs / "default" / "same" / "metrics.parquet")
    b = pd.read_parquet(out["metrics_path"])
    assert list(b["round"]) == [0, 1, 2]
    # same features up to fp32 rounding of a different batch split, hence same clusters and metrics
    pd.testing.assert_frame_equal(_stable(a), _stable(b), check_exact=False, atol=1e-6, rtol=0)
    cfg = stages.RunConfig(name="same", runs_dir=str(runs / "dask"))
    for r in (1, 2):
        feats = loop.round_paths(cfg, r)["features"]
        assert cache.read_meta(feats)["n_parts"] == 2
        assert sorted(p.name for p in (feats.parent / "features.parts").iterdir()
                      if p.suffix == ".parquet") == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
