"""Content-hash stage cache: a stage is skipped when its outputs exist and were produced from the
same input file contents and parameters. Keys never include environment variables or absolute
paths, so two run folders never share results by accident and a moved folder still resumes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..io.atomic import atomic_path
from ..io.hashing import file_digest, params_digest

SIDE_SUFFIX = ".stage.json"


def sidecar(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.with_name(p.name + SIDE_SUFFIX)


def stage_digest(inputs: Iterable[str | os.PathLike | None], params: dict[str, Any]) -> str:
    """Digest of the contents of the input files (``None`` entries allowed) and ``params``."""
    parts = []
    for p in inputs:
        parts.append("none" if p is None else file_digest(p))
    return params_digest({"inputs": parts, "params": params})


def is_fresh(outputs: Iterable[str | os.PathLike], digest: str) -> bool:
    outputs = [Path(o) for o in outputs]
    if not outputs or not all(o.exists() for o in outputs):
        return False
    side = sidecar(outputs[0])
    if not side.exists():
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("digest") != digest:
        return False
    # an output replaced after the stage finished is stale too
    recorded = meta.get("output_digests", {})
    for o in outputs:
        if recorded.get(o.name) != file_digest(o):
            return False
    return True


def mark_done(outputs: Iterable[str | os.PathLike], digest: str, extra: dict[str, Any] | None = None) -> Path:
    outputs = [Path(o) for o in outputs]
    meta = {
        "digest": digest,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "output_digests": {o.name: file_digest(o) for o in outputs},
        **(extra or {}),
    }
    side = sidecar(outputs[0])
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    return side


def read_meta(output: str | os.PathLike) -> dict[str, Any]:
    side = sidecar(output)
    if not side.exists():
        return {}
    return json.loads(side.read_text())
