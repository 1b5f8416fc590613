"""Shared fixtures: where the real Market-1501 copy lives (skip when absent), and a tiny synthetic set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def market_root_path() -> Path:
    env = os.environ.get("REID_MARKET_ROOT")
    return Path(env) if env else REPO.parent / "shared" / "data" / "market1501"


@pytest.fixture(scope="session")
def market_root() -> Path:
    root = market_root_path()
    if not (root / "bounding_box_train").is_dir():
        pytest.skip(f"Market-1501 copy not found at {root} (set REID_MARKET_ROOT)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster (no OpenMP spin-waiting on a busy machine).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
