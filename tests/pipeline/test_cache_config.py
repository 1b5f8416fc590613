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
