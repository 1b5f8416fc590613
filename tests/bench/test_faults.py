"""bench/faults.py, a fast subset: one tiny run SIGKILLed half-way through writing a Parquet file
(the checkpoint just landed, without its stage record), then rerun; its metrics must equal an
uninterrupted run's, every file its record, and no temporary file may be left."""
from __future__ import annotations

import signal

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def faults(load_bench):
    return load_bench("faults")


def test_killed_mid_write_then_rerun_equals_uninterrupted(faults, tmp_path):
    import warnings

    from reid_core.data.synthetic import generate_synthetic
    from reid_core.pipeline import run_pipeline

    data = generate_synthetic(tmp_path / "synth", n_ids=8, n_cams=2, images_per_id_cam=3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = run_pipeline(faults.tiny_config(tmp_path / "runs" / "ref", data, rounds=1), progress=False)
    reference = [{c: (None if v != v else (v.item() if hasattr(v, "item") else v)) for c, v in rec.items()}
                 for rec in ref[[c for c in faults.METRIC_COLUMNS if c in ref.columns]].astype(object).to_dict("records")]

    run_dir = tmp_path / "runs" / "killed"
    # write 13 of a fresh 1-round run is round 1's training log (config, index, eval 0, features, labels,
    # ISE plan and their records, then the checkpoint come first): killed half-way through writing it, the
    # checkpoint is in place without its stage record and a half temporary file lies beside it
    rc, _, err = faults.run_child(run_dir, data, 1, faults._env(REID_FAULT_KILL_AT_WRITE="13",
                                                                REID_FAULT_MODE="mid_write"))
    assert rc == -signal.SIGKILL, err
    assert "fault: SIGKILL at atomic write 13 (mid_write, " in err and "train_log.parquet" in err, err
    assert (run_dir / "round_001" / "checkpoint.pt").exists() and list(run_dir.rglob(".train_log.parquet.*.tmp"))
    rc, result, err = faults.run_child(run_dir, data, 1, faults._env())
    assert rc == 0, err
    assert result["metrics"] == reference
    assert faults.verify_run_folder(run_dir) == []


def test_draw_points_is_seeded(faults):
    a = faults.draw_points(30, 10, 2, 5.0, seed=1, chain=3)
    assert a == faults.draw_points(30, 10, 2, 5.0, seed=1, chain=3)
    assert [len(c) for c in a] == [3, 3, 3, 1, 1, 1]
    writes = [p for c in a for p in c if p.startswith("write:")]
    assert len(writes) == 10 and {p.split(":")[1] for p in writes} == set(faults.MODES)
    assert all(1 <= int(p.split(":")[2]) <= 30 for p in writes)
    assert a != faults.draw_points(30, 10, 2, 5.0, seed=2, chain=3)
