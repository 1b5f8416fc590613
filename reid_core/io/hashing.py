"""Content hashes for cache keys: file contents plus parameters, never environment variables."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return value


def params_digest(params: dict[str, Any]) -> str:
    """Stable SHA-256 of a JSON-able parameter dict (key order does not matter)."""
    blob = json.dumps(_canonical(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def inputs_digest(paths: Iterable[str | os.PathLike], params: dict[str, Any]) -> str:
    """Digest of the contents of ``paths`` (order-sensitive) and ``params``."""
    h = hashlib.sha256()
    for p in paths:
        h.update(file_digest(p).encode())
    h.update(params_digest(params).encode())
    return h.hexdigest()
