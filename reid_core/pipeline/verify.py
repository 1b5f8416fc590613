"""Check a run folder without recomputing anything (``reid verify runs/<name>``).

A rerun already recomputes whatever is damaged; this tells a user *what* is damaged before they
trust, copy or publish a run folder. Problems found:

* an output whose bytes differ from the SHA-256 its stage recorded (truncated, edited, replaced);
* a stage record (``*.stage.json``) that is unreadable, or an output it records that is missing;
* a stage output with no record at all (its stage was interrupted after writing it);
* a Parquet file that does not open, a features file with NaN/inf or a wrong shape;
* temporary files left by a killed writer, and the run lock (in use, or left by a dead holder).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from ..io.hashing import file_digest
from .cache import SIDE_SUFFIX

#: files a stage records in a sidecar (the training log rides in the checkpoint's record)
STAGE_OUTPUTS = ("images.parquet", "features.parquet", "pseudo_labels.parquet", "ise_plan.parquet",
                 "checkpoint.pt", "train_log.parquet")


def verify_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``{"run_dir", "files_checked", "problems": [<file>: <problem>, ...]}`` of a run folder."""
    from ..io.features_io import read_features
    from ..io.lock import lock_path, pid_alive, read_holder

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder does not exist")
    problems: list[str] = []
    recorded: set[Path] = set()
    checked = 0
    for side in sorted(run_dir.rglob("*" + SIDE_SUFFIX)):
        try:
            meta = json.loads(side.read_text())
            digests = meta["output_digests"]
            if not isinstance(digests, dict):
                raise ValueError("output_digests is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{side}: unreadable stage record ({exc})")
            continue
        for name, digest in digests.items():
            out = side.parent / name
            recorded.add(out)
            checked += 1
            if not out.exists():
                problems.append(f"{out}: missing although {side.name} records it")
            elif file_digest(out) != digest:
                problems.append(f"{out}: bytes differ from the SHA-256 recorded in {side.name} (damaged or replaced)")
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name in STAGE_OUTPUTS and path not in recorded and path.parent != run_dir.parent:
            problems.append(f"{path}: no stage record (its stage was interrupted, or the record was deleted)")
        if path.suffix == ".parquet":
            checked += 1
            try:
                if path.name == "features.parquet":
                    read_features(path)
                else:
                    import pyarrow.parquet as pq

                    pq.read_metadata(path)
            except Exception as exc:  # every reader error is a finding here
                problems.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: unreadable ({exc})")
    problems += [f"{t}: temporary file left by an interrupted write" for t in sorted(run_dir.rglob(".*.tmp"))]
    if lock_path(run_dir).exists():
        holder = read_holder(run_dir)
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            problems.append(f"{lock_path(run_dir)}: stale lock of pid {pid} (gone); the next run takes it over")
        else:
            problems.append(f"{lock_path(run_dir)}: the run folder is in use by pid {pid} on host {host}")
    return {"run_dir": str(run_dir), "files_checked": checked, "problems": problems}
