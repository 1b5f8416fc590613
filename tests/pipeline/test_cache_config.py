import json

import pytest

from reid_core.pipeline import cache
from reid_core.pipeline.config import RunConfig


def test_stage_cache_fresh_stale_and_deleted(tmp_path):
    inp = tmp_path / "in.bin"
    inp.write_bytes(b"abc")
    out = tmp_path / "out.bin"
    digest = cache.stage_digest([inp, None], {"eps": 0.6})
    assert not cache.is_fresh([out], digest)
    out.write_bytes(b"result")
    cache.mark_done([out], digest, {"seconds": 1.0})
    assert cache.is_fresh([out], digest)
    assert cache.read_meta(out)["seconds"] == 1.0
    # changed parameter -> miss
    assert not cache.is_fresh([out], cache.stage_digest([inp, None], {"eps": 0.7}))
    # changed input content -> miss
    inp.write_bytes(b"abd")
    assert not cache.is_fresh([out], cache.stage_digest([inp, None], {"eps": 0.6}))
    inp.write_bytes(b"abc")
    assert cache.is_fresh([out], digest)
    # output replaced behind the cache's back -> miss
    out.write_bytes(b"tampered")
    assert not cache.is_fresh([out], digest)
    # deleted output -> miss, not an error
    out.unlink()
    assert not cache.is_fresh([out], digest)


def test_cache_key_ignores_environment(tmp_path, monkeypatch):
    inp = tmp_path / "in.bin"
    inp.write_bytes(b"abc")
    d1 = cache.stage_digest([inp], {"a": 1})
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.stage_digest([inp], {"a": 1}) == d1


def test_run_config_roundtrip_and_validation():
    cfg = RunConfig(name="x", eps=0.5, extra_losses=["triplet"])
    back = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    with pytest.raises(ValueError, match="eps"):
        RunConfig(eps=1.5)
    with pytest.raises(ValueError, match="dataset"):
        RunConfig(dataset="cifar")
    with pytest.raises(ValueError, match="unknown field"):
        RunConfig.from_dict({"epz": 0.5})
    with pytest.raises(ValueError, match="RunConfig.p"):
        RunConfig(p=0)


def test_every_train_knob_is_a_run_config_field():
    """RunConfig is the one source of a run's training settings: every TrainConfig field (except the
    derived epochs / seed) has a RunConfig twin, reaches the TrainConfig of a round, and is part of
    the training stage's cache key (so changing it retrains)."""
    import dataclasses

    from reid_core.pipeline import RunConfig
    from reid_core.pipeline.stages import TRAIN_CONFIG_DERIVED, train_config
    from reid_core.train import TrainConfig

    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    train_fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_CONFIG_DERIVED]
    assert set(train_fields) <= run_fields
    changed = dict(gamma=0.5, ise_update_with_support=False, use_camids=False, lp_positive="own", ise_horizon=900,
                   ise_start=50, channels_last=False, cam_intra_weight=1.0, cam_inter_weight=0.25, cam_temp=0.1,
                   cam_momentum=0.5, cam_hard_negatives=7, momentum=0.2, memory_mode="momentum")
    cfg = RunConfig(**changed)
    tcfg = train_config(cfg, 3)
    for key, value in changed.items():
        assert getattr(tcfg, key) == value, key
    assert tcfg.epochs == cfg.rounds and tcfg.seed == cfg.seed * 1000 + 3
    base = RunConfig().train_params()
    for key, value in changed.items():
        assert RunConfig(**{key: value}).train_params() != base, key
    # num_workers only changes how batches are prepared: not a cache key
    assert RunConfig(num_workers=0).train_params() == base


def test_cluster_levers_are_cache_keys_and_validated():
    from reid_core.pipeline import RunConfig

    base = RunConfig().cluster_params()
    for key, value in dict(camera_norm=True, split_factor=3.0, eps_rho=1e-3, k1_per_cluster=2.0).items():
        assert RunConfig(**{key: value}).cluster_params() != base, key
    with pytest.raises(ValueError, match="split_factor"):
        RunConfig(split_factor=0.5)
    with pytest.raises(ValueError, match="eps_rho"):
        RunConfig(eps_rho=0.5)
    with pytest.raises(ValueError, match="k1_per_cluster"):
        RunConfig(k1_per_cluster=-1)


def test_verification_weight_is_a_supervised_cache_key_and_validated():
    from reid_core.pipeline import RunConfig

    base = RunConfig(mode="supervised", supervised_loss="id+verification")
    # the default leaves the digest as it was before the field existed (resume keeps working)
    assert "verification_weight" not in base.train_params()
    assert RunConfig(mode="supervised", supervised_loss="id+verification",
                     verification_weight=0.1).train_params() != base.train_params()
    with pytest.raises(ValueError, match="verification_weight"):
        RunConfig(verification_weight=-0.5)
