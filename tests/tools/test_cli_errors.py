"""Expected errors reach the ``reid`` user as one line (``error: <file or field>: <problem>``, exit
status 2) without a traceback; ``--verbose`` adds the traceback; a bug keeps its traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_core import cli
from reid_core.errors import RunFolderLocked, expected_error_message

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(capsys, argv, where: str) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == cli.EXIT_EXPECTED_ERROR, err
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"error: {where}"), err
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]]
    return lines[-1]


def test_bad_config_value_field_and_file(tmp_path, capsys):
    _one_line_error(capsys, ["config", "--eps", "3"], "RunConfig.eps: ")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _one_line_error(capsys, ["config", "--config", str(bad)], f"{bad}: ")
    bad.write_text(json.dumps({"no_such_knob": 1}))
    _one_line_error(capsys, ["config", "--config", str(bad)], "RunConfig: ")
    bad.write_text("[1, 2]")
    _one_line_error(capsys, ["run", "--config", str(bad)], f"{bad}: ")
    missing = tmp_path / "nope.json"
    _one_line_error(capsys, ["run", "--config", str(missing)], f"{missing}: ")


def test_run_fork_from_errors_are_one_line(tmp_path, capsys):
    runs = ["--runs-dir", str(tmp_path / "runs"), "--name", "child"]
    _one_line_error(capsys, ["run", *runs, "--fork-from", "somewhere"], "--fork-from: expected RUN_DIR:ROUND")
    _one_line_error(capsys, ["run", *runs, "--fork-from", "somewhere:last"], "--fork-from: round 'last'")
    _one_line_error(capsys, ["run", *runs, "--fork-from", f"{tmp_path / 'absent'}:2"],
                    f"{tmp_path / 'absent' / 'config.json'}: ")
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "config.json").write_text(json.dumps({"height": 64, "width": 32, "name": "parent"}))
    _one_line_error(capsys, ["run", *runs, "--height", "128", "--fork-from", f"{parent}:1"],
                    f"{parent}: field 'height' differs")
    _one_line_error(capsys, ["run", *runs, "--height", "64", "--width", "32", "--fork-from", f"{parent}:1"],
                    f"{parent / 'round_001' / 'checkpoint.pt'}: round 1 of the parent is not finished")
    assert not (tmp_path / "runs" / "child").exists()


def test_missing_and_corrupt_input_files(tmp_path, capsys):
    _one_line_error(capsys, ["eps-sweep", str(tmp_path / "f.parquet")], str(tmp_path / "f.parquet"))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 but not really")
    _one_line_error(capsys, ["eps-sweep", str(junk)], f"{junk}: ")
    _one_line_error(capsys, ["evaluate", "--dataset", "manifest", "--data-root", str(tmp_path / "m.csv"),
                             "--runs-dir", str(tmp_path / "runs")], str(tmp_path / "m.csv"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split\n../outside.jpg,train\n")
    _one_line_error(capsys, ["evaluate", "--dataset", "manifest", "--data-root", str(manifest),
                             "--runs-dir", str(tmp_path / "runs")], f"{manifest}: ")


def test_verbose_shows_the_traceback(tmp_path, capsys):
    for argv in (["--verbose", "config", "--eps", "3"], ["config", "--eps", "3", "--verbose"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: RunConfig.eps: ")


def test_unexpected_exception_keeps_its_traceback(monkeypatch):
    def boom(args):
        return {}["bug"]

    monkeypatch.setattr(cli, "cmd_config", boom)
    with pytest.raises(KeyError):
        cli.main(["config"])
    # messages without the "<file or field>: <problem>" shape are bugs too
    assert expected_error_message(ValueError("operands could not be broadcast together")) is None
    assert expected_error_message(RuntimeError("x: y")) is None
    assert expected_error_message(RunFolderLocked("runs/a: in use")) == "runs/a: in use"
    assert expected_error_message(FileNotFoundError(2, "No such file or directory", "/x/y")) == \
        "/x/y: No such file or directory"


def test_subprocess_corrupt_image_is_one_line(tmp_path):
    """The user's view: ``reid evaluate`` on a Market folder with a truncated JPEG."""
    root = tmp_path / "market"
    rng = np.random.default_rng(0)
    for folder, pid in (("bounding_box_train", 1), ("query", 2), ("bounding_box_test", 2)):
        (root / folder).mkdir(parents=True)
        for cam in (1, 2):
            Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(
                root / folder / f"{pid:04d}_c{cam}s1_000001_00.jpg")
    bad = root / "query" / "0002_c1s1_000001_00.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "reid_core.cli", "evaluate", "--data-root", str(root), "--runs-dir",
           str(tmp_path / "runs"), "--height", "32", "--width", "16", "--pretrained", "false", "--quiet",
           "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: "), res.stderr


def test_error_from_a_dataloader_worker_is_unwrapped():
    """torch re-raises a worker's error with the worker's traceback as its message."""
    from torch._utils import ExceptionWrapper

    try:
        raise ValueError("/data/x.jpg: cannot read image (OSError: image file is truncated)")
    except ValueError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as err:
        wrapped.reraise()
    assert "Traceback" in str(err.value)
    assert expected_error_message(err.value) == "/data/x.jpg: cannot read image (OSError: image file is truncated)"


def test_unknown_or_missing_device_is_one_line():
    import torch

    from reid_core.device import pick_device

    with pytest.raises(RuntimeError, match="device: 'gpu' is not a device name") as err:
        pick_device("gpu")
    assert expected_error_message(err.value).startswith("device: 'gpu' is not a device name")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device: 'cuda' was requested but CUDA is not available") as err:
            pick_device("cuda")
        assert expected_error_message(err.value)
