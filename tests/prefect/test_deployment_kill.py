"""One kill point of ``bench/faults.py --deployment serve --kill tree``: a served deployment run of the
tiny set stalls half-way through its 8th atomic write, the whole deployment (launcher, server,
serve process, flow run) is SIGKILLed, the launcher is started again on the same Prefect home (it
must mark the dead run Crashed) and the deployment is run again: the rerun ends with the metrics of
an uninterrupted run, every file matches its record, and the stages finished before the kill are
untouched."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def faults():
    spec = importlib.util.spec_from_file_location("bench_faults", REPO / "bench" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_killed_deployment_run_resumes_on_rerun(faults, tmp_path):
    import torch

    from reid_core.data.synthetic import generate_synthetic
    from reid_core.pipeline import run_pipeline

    data = generate_synthetic(tmp_path / "synth", n_ids=8, n_cams=2, images_per_id_cam=3, seed=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = run_pipeline(faults.tiny_config(tmp_path / "ref" / "ref", data, rounds=1), progress=False)
    finally:
        torch.set_num_threads(threads)
    cols = [c for c in faults.METRIC_COLUMNS if c in ref.columns]
    reference = {"metrics": [{c: (None if v != v else (v.item() if hasattr(v, "item") else v)) for c, v in r.items()}
                             for r in ref[cols].astype(object).to_dict("records")]}

    rec = faults.deployment_kill_point("write:mid_write:8", "serve", "tree", tmp_path / "work", data, 1, reference)
    assert rec["killed"], rec
    assert "atomic write 8 (mid_write" in rec["where"], rec
    assert rec["finished_before_kill"] >= 2, rec  # something finished before the kill, and it was kept
    assert rec["marked_crashed"] == 1 and rec["killed_run_state"] == "CRASHED", rec
    assert rec["identical_metrics"] and rec["finished_stages_touched"] == [], rec
    assert rec["survived"] and rec["problems"] == [], rec
