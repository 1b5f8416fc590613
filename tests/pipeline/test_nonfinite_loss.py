"""A NaN / inf loss stops the round with an error naming round and iteration; nothing of that round
is written, so the previous round's checkpoint stays the latest, and a rerun resumes from it."""
from __future__ import annotations

import pytest

from reid_core import cli, train
from reid_core.errors import NonFiniteLossError
from reid_core.io.hashing import file_digest
from reid_core.pipeline import cache, round_paths, run_pipeline
from reid_core.query import resolve_model

from tests.pipeline.test_loop import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from reid_core.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("nan") / "synth", n_ids=12, n_cams=2, images_per_id_cam=3,
                              seed=2)


def _poison_round(monkeypatch, bad_round: int, bad_iteration: int, value: float) -> None:
    """Make the ISE/memory criterion return ``value`` at one iteration of one round."""
    real = train.build_ise

    def build_ise(memory, cfg):
        criterion = real(memory, cfg)
        forward = criterion.forward

        def poisoned(feats, labels, t, T, **kw):
            loss, stats = forward(feats, labels, t, T, **kw)
            if t == (bad_round - 1) * cfg.iters + bad_iteration:
                loss = loss * 0 + value
            return loss, stats

        criterion.forward = poisoned
        return criterion

    monkeypatch.setattr(train, "build_ise", build_ise)


def test_nonfinite_loss_stops_the_round_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    value = float("nan")
    cfg = tiny_cfg(tmp_path, data, rounds=2, iters=2, device="cpu", bf16=False)
    _poison_round(monkeypatch, bad_round=2, bad_iteration=1, value=value)
    with pytest.raises(NonFiniteLossError) as err:
        run_pipeline(cfg, progress=False)
    p1, p2 = round_paths(cfg, 1), round_paths(cfg, 2)
    msg = str(err.value)
    assert msg.startswith(f"{p2['checkpoint']}: round 2, iteration 1: loss is {value}")
    assert str(p1["checkpoint"]) in msg
    assert not p2["checkpoint"].exists() and not p2["train_log"].exists()
    assert cache.read_meta(p1["checkpoint"])["output_digests"]["checkpoint.pt"] == file_digest(p1["checkpoint"])
    assert resolve_model(cfg.run_dir).checkpoint == p1["checkpoint"]
    # the CLI shows it as one line
    argv = ["run", "--runs-dir", cfg.runs_dir, "--name", cfg.name, "--data-root", cfg.data_root, "--dataset",
            "market1501", "--rounds", "2", "--iters", "2", "--p", "4", "--k", "4", "--height", "64", "--width", "32",
            "--extract-batch-size", "32", "--num-workers", "0", "--min-samples", "2", "--k1", "6", "--k2", "3",
            "--eps", "0.7", "--device", "cpu", "--bf16", "false", "--quiet"]
    assert cli.main(argv) == 2
    err_text = capsys.readouterr().err
    assert "Traceback" not in err_text and err_text.strip().splitlines()[-1].startswith(
        f"error: {p2['checkpoint']}: round 2, iteration 1: loss is")
    # the fault gone, a rerun resumes from round 1 (not retrained) and finishes
    side1 = cache.sidecar(p1["checkpoint"]).stat().st_mtime_ns
    monkeypatch.undo()
    df = run_pipeline(cfg, progress=False)
    assert list(df["round"]) == [0, 1, 2]
    assert cache.sidecar(p1["checkpoint"]).stat().st_mtime_ns == side1


def test_inf_loss_in_the_first_round_writes_no_checkpoint(data, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, data, rounds=1, iters=2, device="cpu", bf16=False)
    _poison_round(monkeypatch, bad_round=1, bad_iteration=0, value=float("inf"))
    with pytest.raises(NonFiniteLossError, match="round 1, iteration 0: loss is inf.*stays the initial model"):
        run_pipeline(cfg, progress=False)
    assert not round_paths(cfg, 1)["checkpoint"].exists()
