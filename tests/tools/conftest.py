"""Fixtures for the user tools (query, export, report): a tiny synthetic dataset in the Market
layout and one tiny trained run on it (plain loop, 1 round of 2 iterations, ISE on)."""
from __future__ import annotations

from pathlib import Path

import pytest

#: 12 identities x 2 cameras x 4 images at 64 x 32: half train, half query/gallery
TOOLS_DATA = dict(n_ids=12, n_cams=2, images_per_id_cam=4, seed=3, height=64, width=32)


@pytest.fixture(scope="session")
def tools_market(tmp_path_factory) -> Path:
    from reid_core.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("tools-data") / "tiny", **TOOLS_DATA)


@pytest.fixture(scope="session")
def tools_run(tools_market, tmp_path_factory) -> Path:
    """A finished run folder (rounds 0 and 1) of MobileNetV2 (ImageNet init) at 64 x 32."""
    import torch

    from reid_core.pipeline.config import RunConfig
    from reid_core.pipeline.loop import run_pipeline

    cfg = RunConfig(name="tools", dataset="market1501", data_root=str(tools_market),
                    runs_dir=str(tmp_path_factory.mktemp("tools-runs")), rounds=1, iters=2, p=2, k=4,
                    height=64, width=32, min_samples=2, k1=6, k2=2, eps=0.6, num_workers=0, device="cpu",
                    bf16=False, extract_batch_size=32, use_ise=True, seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(cfg, progress=False)
    finally:
        torch.set_num_threads(before)
    assert (cfg.run_dir / "round_001" / "checkpoint.pt").is_file()
    return cfg.run_dir
