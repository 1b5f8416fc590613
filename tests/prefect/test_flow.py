"""The cluster-contrast flow on tiny synthetic data inside one ``prefect_test_harness``: two
rounds end to end with artifacts, resume after a crash, an all-outliers round, the evaluate flow."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from flows.cluster_contrast import cluster_contrast
from flows.evaluate import evaluate_checkpoint
from reid_core.pipeline import cache, loop, stages
from reid_core.pipeline.config import RunConfig

#: columns that legitimately differ between two identical runs (time, provenance holding the name)
VOLATILE = ("seconds", "_per_s", "config_json", "machine", "peak_rss")


def _stable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in df.columns if any(v in c for v in VOLATILE)])


def _read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact with key {key!r}"
    return max(found, key=lambda a: a.created)


@pytest.fixture(scope="module")
def two_rounds(prefect_harness, tiny_flow_params, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    out = cluster_contrast(name="flow-a", runs_dir=str(runs), **tiny_flow_params)
    return runs, out


def test_flow_runs_two_rounds_and_writes_every_stage(two_rounds):
    runs, out = two_rounds
    run = runs / "flow-a"
    assert out["run_dir"] == str(run)
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert list(metrics["round"]) == [0, 1, 2]
    assert metrics[["mAP", "rank1", "mINP"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (run / "config.json").exists() and (run / "images.parquet").exists()
    for r in (1, 2):
        for f in ("features", "pseudo_labels", "ise_plan", "checkpoint", "train_log", "metrics", "profile"):
            assert loop.round_paths(RunConfig(name="flow-a", runs_dir=str(runs)), r)[f].exists(), (r, f)
    assert [row["round"] for row in out["metrics"]] == [0, 1, 2]


def test_flow_creates_table_markdown_and_progress_artifacts(two_rounds):
    runs, _ = two_rounds
    table = _read_artifact("flow-a-metrics")
    assert table.type == "table"
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    assert [r["round"] for r in rows] == [0, 1, 2] and "mAP" in rows[0]
    md = _read_artifact("flow-a-summary")
    assert md.type == "markdown" and str(runs / "flow-a" / "metrics.parquet") in md.data
    progress = _read_artifact("flow-a-progress")
    assert progress.type == "progress" and float(progress.data) == pytest.approx(100.0)


def test_flow_resumes_after_a_crash_and_matches_an_uninterrupted_run(two_rounds, tiny_flow_params, monkeypatch):
    runs, _ = two_rounds
    real_train = stages.train_epoch_stage

    def crash_in_round_2(*args, **kwargs):
        if args[5] == 2:  # round_idx
            raise RuntimeError("simulated crash in round 2")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(stages, "train_epoch_stage", crash_in_round_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cluster_contrast(name="flow-b", runs_dir=str(runs), **tiny_flow_params)
    cfg_b = RunConfig(name="flow-b", runs_dir=str(runs))
    assert not loop.round_paths(cfg_b, 2)["checkpoint"].exists()
    done = [cfg_b.run_dir / "images.parquet", loop.round_paths(cfg_b, 0)["metrics"]]
    done += [loop.round_paths(cfg_b, 1)[k] for k in ("features", "pseudo_labels", "ise_plan", "checkpoint",
                                                      "metrics")]
    done += [loop.round_paths(cfg_b, 2)[k] for k in ("features", "pseudo_labels", "ise_plan")]
    before = {p: os.stat(cache.sidecar(p)).st_mtime_ns for p in done}

    monkeypatch.setattr(stages, "train_epoch_stage", real_train)
    resumed = cluster_contrast(name="flow-b", runs_dir=str(runs), **tiny_flow_params)
    after = {p: os.stat(cache.sidecar(p)).st_mtime_ns for p in done}
    recomputed = [str(p.relative_to(runs)) for p in done if before[p] != after[p]]
    assert not recomputed, f"finished stages ran again after the crash: {recomputed}"

    a = _stable(pd.read_parquet(runs / "flow-a" / "metrics.parquet"))
    b = _stable(pd.read_parquet(resumed["metrics_path"]))
    pd.testing.assert_frame_equal(a, b)
    for r in (1, 2):
        log_a = pd.read_parquet(runs / "flow-a" / f"round_{r:03d}" / "train_log.parquet")
        log_b = pd.read_parquet(runs / "flow-b" / f"round_{r:03d}" / "train_log.parquet")
        pd.testing.assert_frame_equal(_stable(log_a), _stable(log_b))


def test_flow_continues_a_fork_from_its_parent_round(two_rounds, tiny_flow_params):
    import json

    from reid_core.pipeline.fork import fork_run

    runs, _ = two_rounds
    child = RunConfig.from_dict(json.loads((runs / "flow-a" / "config.json").read_text())).replace(name="flow-fork")
    fork_run(runs / "flow-a", 1, child)
    inherited = [loop.round_paths(child, 0)["metrics"], loop.round_paths(child, 1)["checkpoint"]]
    before = {p: os.stat(cache.sidecar(p)).st_mtime_ns for p in inherited}
    out = cluster_contrast(name="flow-fork", runs_dir=str(runs), **tiny_flow_params)
    assert {p: os.stat(cache.sidecar(p)).st_mtime_ns for p in inherited} == before  # taken, not recomputed
    metrics = pd.read_parquet(out["metrics_path"])
    assert list(metrics["inherited"]) == [True, True, False]
    # same configuration as the parent: its round 2 is repeated exactly
    a = _stable(pd.read_parquet(runs / "flow-a" / "metrics.parquet"))
    b = _stable(metrics).drop(columns=["inherited", "fork_parent", "fork_round"])
    pd.testing.assert_frame_equal(a, b)


def test_all_outlier_rounds_are_skipped_with_a_warning(prefect_harness, tiny_flow_params, tmp_path):
    # more neighbours needed for a core point than there are training images: all outliers
    params = {**tiny_flow_params, "rounds": 1,
              "overrides": {**tiny_flow_params["overrides"], "min_samples": 1000}}
    out = cluster_contrast(name="outliers", runs_dir=str(tmp_path), **params)
    assert out["skipped_rounds"] == [1]
    labels = pd.read_parquet(tmp_path / "outliers" / "round_001" / "pseudo_labels.parquet")
    assert (labels["label"] == -1).all()
    metrics = pd.read_parquet(out["metrics_path"])
    assert list(metrics["round"]) == [0, 1]
    md = _read_artifact("outliers-summary")
    assert "training skipped in round(s) [1]" in md.data


def test_overrides_cannot_shadow_parameters(prefect_harness, tiny_flow_params, tmp_path):
    bad = {**tiny_flow_params, "overrides": {**tiny_flow_params["overrides"], "eps": 0.3}}
    with pytest.raises(ValueError, match="flow parameters"):
        cluster_contrast(name="bad", runs_dir=str(tmp_path), **bad)


def test_evaluate_flow_on_a_checkpoint(two_rounds, tiny_flow_params):
    runs, _ = two_rounds
    ckpt = runs / "flow-a" / "round_002" / "checkpoint.pt"
    out = evaluate_checkpoint(checkpoint=str(ckpt), name="eval-a", dataset="market1501",
                              data_root=tiny_flow_params["data_root"], runs_dir=str(runs), round_idx=2,
                              overrides={k: v for k, v in tiny_flow_params["overrides"].items()})
    row = pd.read_parquet(out["metrics_path"]).iloc[0]
    ref = pd.read_parquet(runs / "flow-a" / "round_002" / "metrics.parquet").iloc[0]
    for col in ("mAP", "rank1", "mINP"):
        assert row[col] == pytest.approx(ref[col], abs=1e-6)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        evaluate_checkpoint(checkpoint=str(runs / "missing.pt"), name="eval-x", runs_dir=str(runs))


def test_supervised_flow_writes_the_same_outputs(prefect_harness, tiny_flow_params, tmp_path):
    from flows.supervised import supervised

    params = {k: v for k, v in tiny_flow_params.items() if k not in ("eps",)}
    out = supervised(name="sup", runs_dir=str(tmp_path), loss="id+triplet", rounds=1,
                     **{k: v for k, v in params.items() if k not in ("rounds",)})
    metrics = pd.read_parquet(out["metrics_path"])
    assert list(metrics["round"]) == [0, 1] and set(metrics["method"]) == {"supervised"}
    log = pd.read_parquet(tmp_path / "sup" / "round_001" / "train_log.parquet")
    assert {"loss_id", "loss_triplet"} <= set(log.columns) and len(log) == params["iters"]
    assert not (tmp_path / "sup" / "round_001" / "features.parquet").exists()  # no clustering in supervised mode


def test_flow_publishes_the_html_report_as_a_link(two_rounds):
    runs, _ = two_rounds
    link = _read_artifact("flow-a-report")
    assert link.type in ("link", "markdown")
    assert (runs / "flow-a" / "report.html").as_uri() in str(link.data)
    assert (runs / "flow-a" / "report.html").is_file()
