"""Safe checkpoint save/load: atomic writes, ``weights_only=True`` on load."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import RunFolderDamaged
from .atomic import atomic_path
from .hashing import file_digest


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save ``state`` (tensors, numbers, strings, lists, dicts only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling arbitrary code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    _check_recorded_digest(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RunFolderDamaged(f"{path}: cannot load checkpoint safely (weights_only=True; damaged, or it holds "
                               f"pickled objects): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict):
        raise RunFolderDamaged(f"{path}: not a checkpoint (a {type(state).__name__}, expected a dict of tensors)")
    return state


def _check_recorded_digest(path: Path) -> None:
    """A checkpoint written by a pipeline stage has a ``.stage.json`` record of its SHA-256: refuse a
    checkpoint whose bytes changed since (flipped bits load without error but give wrong weights)."""
    side = path.with_name(path.name + ".stage.json")
    if not side.exists():
        return
    try:
        recorded = json.loads(side.read_text()).get("output_digests", {}).get(path.name)
    except (OSError, ValueError, AttributeError):
        return  # an unreadable record is the pipeline's business (it recomputes the stage)
    if recorded is not None and recorded != file_digest(path):
        raise RunFolderDamaged(f"{path}: checkpoint bytes differ from the SHA-256 recorded in {side.name} "
                               "(damaged or replaced); rerun the run to recompute it")
