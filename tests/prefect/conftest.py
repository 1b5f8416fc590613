"""Fixtures for the Prefect layer: an isolated Prefect (temporary PREFECT_HOME, one session-scoped
``prefect_test_harness``), a tiny synthetic dataset in the Market layout and a tiny RunConfig."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the flows import `tasks` / `flows` / `reid_core` from the repository root
    sys.path.insert(0, str(REPO))

# Before anything imports Prefect: never touch the user's ~/.prefect, never phone home.
_HOME = Path(tempfile.mkdtemp(prefix="reid-prefect-home-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

#: the tiny dataset: 4 train identities x 2 cameras x 4 images (+ 4 test identities for query/gallery)
TINY_DATA = dict(n_ids=8, n_cams=2, images_per_id_cam=4, seed=0, height=64, width=32)

#: a run small enough for a test: random-init MobileNetV2 on 64x32 crops, 2 iterations per round
TINY_OVERRIDES: dict[str, Any] = dict(
    pretrained=False, height=64, width=32, min_samples=2, k1=6, k2=2, num_workers=0, device="cpu", bf16=False,
    extract_batch_size=32, lr=1e-3,
)
TINY_PARAMS: dict[str, Any] = dict(rounds=2, p=2, k=4, iters=2, eps=0.6, seed=0)


@pytest.fixture(scope="session")
def prefect_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def prefect_harness(prefect_home):
    """One temporary Prefect API (SQLite in a temp dir) for every flow test of the session."""
    from prefect.settings import (PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED,
                                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings(updates={PREFECT_HOME: str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED: False,
                                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}):
        # 120 s is enough on a quiet machine; a loaded one (CI sharing the host) needs more
        with prefect_test_harness(server_startup_timeout=300):
            yield


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the Market-1501 layout (generated once per session)."""
    from reid_core.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("data") / "tiny", **TINY_DATA)


@pytest.fixture(scope="session")
def make_cfg(tiny_market):
    """``make_cfg(name, runs_dir, **changes)`` -> RunConfig of a tiny run on the tiny dataset."""
    from reid_core.pipeline.config import RunConfig

    def make(name: str, runs_dir: str | Path, **changes: Any) -> RunConfig:
        values = {**TINY_PARAMS, **TINY_OVERRIDES, **changes}
        return RunConfig(name=name, dataset="market1501", data_root=str(tiny_market), runs_dir=str(runs_dir), **values)

    return make


@pytest.fixture
def tiny_cfg(make_cfg, tmp_path):
    return make_cfg("tiny", tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_flow_params(tiny_market) -> dict[str, Any]:
    """Keyword arguments of the cluster-contrast flow for a tiny run (add name and runs_dir)."""
    return dict(dataset="market1501", data_root=str(tiny_market), **TINY_PARAMS, overrides=dict(TINY_OVERRIDES))
