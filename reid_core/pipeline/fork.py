"""Branch a run at a finished round: the child run takes the parent's rounds ``0..N`` as they are
and trains on from round ``N + 1`` under its own configuration.

Ablations of a late-acting lever (the learning-rate step, a late eps, a longer run) share their
first ``N`` rounds with the run they are compared to; the loop seeds every round from
``(seed, round)``, so a fork whose configuration equals its parent's repeats the parent's later
rounds exactly, and a fork with one lever changed differs from it by that lever alone.

The child's folder holds hard links (or copies, across file systems) of the parent's
``images.parquet`` and ``round_000 .. round_N``, plus ``fork.json``, which names the parent, the
round and the parent's configuration. The loop (:func:`reid_core.pipeline.run_pipeline`) reads
``fork.json``: it does not recompute the inherited rounds, marks their metrics ``inherited``, and
starts training from the parent's round-``N`` checkpoint. The training stage then applies the
child's learning-rate schedule at that epoch (``step_size``, ``gamma``, ``lr``), not the one
saved in the checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..io.hashing import file_digest
from .config import RunConfig

FORK_FILE = "fork.json"
# what makes the inherited rounds the same experiment as the child: the data and the model
MUST_MATCH = ("mode", "dataset", "data_root", "backbone", "pretrained", "height", "width")


def read_fork(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run folder's fork record (``None`` for a run that is not a fork)."""
    path = Path(run_dir) / FORK_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("round"), int) or "parent" not in record:
            raise ValueError("expected an object with 'parent' and an integer 'round'")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable fork record ({exc})") from exc
    return record


def parse_fork_spec(spec: str) -> tuple[str, int]:
    """``RUN_DIR:ROUND`` (the ``--fork-from`` of ``reid run`` and ``bench/accuracy.py``) ->
    ``(run_dir, round)``; the run folder may hold ``{seed}`` / ``{method}`` placeholders."""
    pattern, sep, raw = spec.rpartition(":")
    if not sep or not pattern:
        raise ValueError(f"--fork-from: expected RUN_DIR:ROUND, e.g. runs/cc_cam-s{{seed}}:20, got {spec!r}")
    try:
        round_idx = int(raw)
    except ValueError:
        raise ValueError(f"--fork-from: round {raw!r} of {spec!r} is not an integer") from None
    if round_idx < 1:
        raise ValueError(f"--fork-from: the round must be >= 1 (round 0 is the untrained model), got {spec!r}")
    return pattern, round_idx


def _finished(path: Path) -> bool:
    """``path`` exists and its stage record names exactly these bytes (a finished, undamaged output)."""
    side = path.with_name(path.name + ".stage.json")
    if not path.exists() or not side.exists():
        return False
    try:
        recorded = json.loads(side.read_text()).get("output_digests", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(recorded, dict) and recorded.get(path.name) == file_digest(path)


def _same_value(key: str, a: Any, b: Any) -> bool:
    if key == "data_root":
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    return a == b


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (copy when linking is not possible). Outputs
    are always replaced by rename, never rewritten in place, so a link never lets the child change
    the parent's files."""
    for root, _dirs, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if ".tmp" in name:  # a stage's unfinished temporary
                continue
            _link_or_copy(Path(root) / name, target / name)


def fork_run(parent_dir: str | os.PathLike, at_round: int, cfg: RunConfig) -> Path:
    """Make ``cfg.run_dir`` a fork of ``parent_dir`` at round ``at_round`` and return its path.

    The parent must have finished rounds ``1..at_round`` (checkpoint and metrics with their stage
    records) and agree with ``cfg`` on the data and the model (:data:`MUST_MATCH`); every other
    field may differ. Calling it again for the same parent and round is a no-op, so a cut-off
    forked run resumes; an existing folder that is anything else is refused, never overwritten.
    """
    parent = Path(parent_dir)
    at_round = int(at_round)
    config_path = parent / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: the parent run has no config.json (not a run folder?)")
    try:
        parent_cfg = RunConfig.from_dict(json.loads(config_path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{config_path}: not a run configuration ({exc})") from exc
    if at_round < 1:
        raise ValueError(f"{parent}: the fork round must be >= 1 (round 0 is the untrained model), got {at_round}")
    for key in MUST_MATCH:
        a, b = getattr(parent_cfg, key), getattr(cfg, key)
        if not _same_value(key, a, b):
            raise ValueError(f"{parent}: field {key!r} differs (parent {a!r}, fork {b!r}); a fork keeps the "
                             "parent's data and model")
    if cfg.rounds < at_round:
        raise ValueError(f"RunConfig.rounds: the fork plans only {cfg.rounds} rounds, fewer than its fork round "
                         f"{at_round}")
    for r in range(1, at_round + 1):
        rd = parent / f"round_{r:03d}"
        for name in ("checkpoint.pt", "metrics.parquet"):
            if not _finished(rd / name):
                raise FileNotFoundError(f"{rd / name}: round {r} of the parent is not finished (or damaged); "
                                        f"a fork at round {at_round} needs rounds 1..{at_round}")
    if not _finished(parent / "images.parquet"):
        raise FileNotFoundError(f"{parent / 'images.parquet'}: missing or damaged in the parent run")

    child = cfg.run_dir
    record = {"parent": str(parent.resolve()), "round": at_round, "parent_config": parent_cfg.to_dict(),
              "checkpoint_sha256": file_digest(parent / f"round_{at_round:03d}" / "checkpoint.pt")}
    existing = read_fork(child) if child.exists() else None
    if existing is not None:
        if existing["parent"] == record["parent"] and existing["round"] == at_round:
            return child
        raise FileExistsError(f"{child}: already a fork of {existing['parent']} at round {existing['round']}")
    if child.exists() and any(child.iterdir()):
        raise FileExistsError(f"{child}: exists and is not empty; a fork needs a new run folder")
    if child.resolve() == parent.resolve():
        raise ValueError(f"{child}: a run cannot be its own fork")

    # build beside the target and rename when complete: a cut-off fork leaves no half folder
    staging = child.with_name(f".{child.name}.fork-tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in ("images.parquet", "images.parquet.stage.json"):
        _link_or_copy(parent / name, staging / name)
    for r in range(0, at_round + 1):
        _link_tree(parent / f"round_{r:03d}", staging / f"round_{r:03d}")
    (staging / FORK_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    if child.exists():
        child.rmdir()  # empty (checked above)
    staging.rename(child)
    return child
