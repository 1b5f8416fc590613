"""Content-hash stage cache: a stage is skipped when its outputs exist and were produced from the
same input file contents and parameters. Keys never include environment variables or absolute
paths, so two run folders never share results by accident and a moved folder still resumes."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import RunFolderDamaged
from ..io.atomic import atomic_path
from ..io.hashing import file_digest, params_digest

SIDE_SUFFIX = ".stage.json"

log = logging.getLogger(__name__)


def sidecar(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.with_name(p.name + SIDE_SUFFIX)


def stage_digest(inputs: Iterable[str | os.PathLike | None], params: dict[str, Any]) -> str:
    """Digest of the contents of the input files (``None`` entries allowed) and ``params``."""
    parts = []
    for p in inputs:
        parts.append("none" if p is None else file_digest(p))
    return params_digest({"inputs": parts, "params": params})


def staleness(outputs: Iterable[str | os.PathLike], digest: str) -> tuple[str, str] | None:
    """``None`` when the outputs are fresh, else ``(kind, reason)``.

    ``kind`` is ``"new"`` (outputs not written yet), ``"changed"`` (inputs or parameters changed: a
    normal recompute) or ``"damaged"`` (an output exists but its sidecar is missing, unreadable or
    records other bytes than the file holds: an interrupted or edited write, a truncated or
    replaced file). A damaged output is never used: the stage recomputes it.
    """
    outputs = [Path(o) for o in outputs]
    present = [o for o in outputs if o.exists()]
    side = sidecar(outputs[0]) if outputs else None
    if not present:
        return ("new", "not computed yet")
    if side is None or not side.exists():
        return ("damaged", f"{present[0]}: exists without its {SIDE_SUFFIX} record (an interrupted stage or a "
                           "deleted sidecar)")
    if len(present) < len(outputs):
        missing = next(o for o in outputs if not o.exists())
        return ("damaged", f"{missing}: missing although {side.name} records it")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return ("damaged", f"{side}: unreadable stage record ({exc})")
    if meta.get("digest") != digest:
        return ("changed", "inputs or parameters changed")
    # an output replaced, truncated or edited after the stage finished is stale too
    recorded = meta.get("output_digests")
    if not isinstance(recorded, dict):
        return ("damaged", f"{side}: stage record has no output digests")
    for o in outputs:
        if recorded.get(o.name) != file_digest(o):
            return ("damaged", f"{o}: content differs from what {side.name} recorded (truncated, damaged or "
                               "replaced)")
    return None


def is_fresh(outputs: Iterable[str | os.PathLike], digest: str) -> bool:
    """Whether the stage may skip itself; a damaged output is logged (warning) and recomputed."""
    state = staleness(outputs, digest)
    if state is None:
        return True
    kind, reason = state
    if kind == "damaged":
        log.warning("recomputing: %s", reason)
    return False


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
    """The sidecar of ``output`` (``{}`` when there is none; an unreadable one names its file)."""
    side = sidecar(output)
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text())
    except ValueError as exc:
        raise RunFolderDamaged(f"{side}: unreadable stage record ({exc}); delete it to recompute the stage") from exc
    if not isinstance(meta, dict):
        raise RunFolderDamaged(f"{side}: stage record is not a JSON object; delete it to recompute the stage")
    return meta
