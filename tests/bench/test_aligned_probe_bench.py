"""bench/aligned_probe.py: the per-term trunk gradients add up to the objective's, and a run is probed end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reid_core.data.synthetic import generate_synthetic
from reid_core.models import build_model
from reid_core.pipeline import RunConfig, run_pipeline
from reid_core.supervised import Objective


@pytest.fixture(scope="module")
def probe(load_bench):
    return load_bench("aligned_probe")


def test_pk_batches_draw_p_identities_of_k_images(probe):
    pids = np.repeat(np.arange(6), [5, 4, 4, 2, 4, 1])  # identities 3 and 5 have too few images
    batches = probe.pk_batches(pids, p=3, k=4, n_batches=5, seed=0)
    assert len(batches) == 5
    for idx in batches:
        assert len(idx) == 12 and len(set(idx.tolist())) == 12
        ids, counts = np.unique(pids[idx], return_counts=True)
        assert len(ids) == 3 and (counts == 4).all() and not set(ids) & {3, 5}
    with pytest.raises(ValueError, match="identities"):
        probe.pk_batches(pids, p=5, k=4, n_batches=1, seed=0)


def test_term_gradients_sum_to_the_objective_gradient(probe):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", pretrained=False, num_classes=4, local_branch=True).train()
    x = torch.randn(8, 3, 64, 32)
    labels = torch.arange(4).repeat_interleave(2)
    grads, values = probe.trunk_gradients(model, x, labels, "mean", 0.5)
    assert set(grads) == set(probe.TERMS) and all(np.isfinite(v) for v in values.values())
    assert grads["local"].norm() > 0 and grads["global"].norm() > 0
    # the same objective as training: ID + AlignedReID with local weight 0.5, mean scale
    trunk = [q for q in model.backbone.parameters() if q.requires_grad]
    total, _ = Objective("id+aligned", model.feat_dim, 4, aligned_local_weight=0.5,
                         aligned_local_scale="mean")(model(x, return_dict=True), labels)
    ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, trunk)])
    summed = grads["id"] + grads["global"] + grads["local"]
    # float32 (the objective computes in float32): compare the whole vector relative to its norm
    assert float((summed - ref).norm() / ref.norm()) < 1e-5
    # and the split is not trivially the whole: each term alone is far from the total
    assert all(float((grads[t] - ref).norm() / ref.norm()) > 1e-2 for t in probe.TERMS)


def test_probe_a_tiny_aligned_run_end_to_end(probe, tmp_path):
    data = tmp_path / "synth"
    generate_synthetic(data, n_ids=8, n_cams=2, images_per_id_cam=3, seed=1)
    cfg = RunConfig(name="al", runs_dir=str(tmp_path / "runs"), dataset="market1501", data_root=str(data),
                    mode="supervised", supervised_loss="id+aligned", use_ise=False, rounds=1, iters=2, p=4, k=2,
                    height=64, width=32, extract_batch_size=32, num_workers=0)
    run_pipeline(cfg, progress=False)
    out = tmp_path / "probe.jsonl"
    assert probe.main([str(cfg.run_dir), "--batches", "1", "--p", "2", "--k", "2", "--eval", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    last = rows[-1]
    assert last["round"] == 1 and last["grad_norm_local"] > 0
    assert -1 <= last["cos_local_global"] <= 1 and 0 <= last["local_only_mAP"] <= 1
    with pytest.raises(SystemExit, match="config.json"):
        probe.main([str(tmp_path)])
