"""Parquet encoding of feature matrices: one row per image, ``feature`` a fixed-size float32 list."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunFolderDamaged
from .atomic import atomic_path


def write_features(path: str | os.PathLike, image_ids: np.ndarray, features: np.ndarray, round_idx: int) -> Path:
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(image_ids):
        raise ValueError(f"{path}: features must be (N, D) with N = len(image_ids); got {features.shape} for {len(image_ids)} ids")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise ValueError(f"{path}: refusing to write {int((~finite).sum())} feature row(s) holding NaN or inf "
                         f"(first image_id {int(np.asarray(image_ids)[~finite][0])}); the model's output is broken")
    dim = features.shape[1]
    flat = pa.array(features.reshape(-1), type=pa.float32())
    feat_col = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table({
        "image_id": pa.array(np.asarray(image_ids, dtype=np.int64)),
        "feature": feat_col,
        "round": pa.array(np.full(len(image_ids), round_idx, dtype=np.int64)),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image_ids, features)`` with features as a float32 (N, D) array."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: features file does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # truncated / overwritten file: pyarrow raises several types
        raise RunFolderDamaged(f"{path}: not a readable features file ({type(exc).__name__}: {exc})") from exc
    for col in ("image_id", "feature"):
        if col not in table.column_names:
            raise ValueError(f"{path}: missing column {col!r}; has {table.column_names}")
    ids = table.column("image_id").to_numpy()
    col = table.column("feature").combine_chunks()
    if len(ids) == 0:
        return ids.astype(np.int64), np.zeros((0, 0), dtype=np.float32)
    if not pa.types.is_fixed_size_list(col.type):
        raise ValueError(f"{path}: column 'feature' must be a fixed-size list of float32, got {col.type}")
    dim = col.type.list_size
    feats = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    if feats.shape[0] != len(ids):  # null feature entries flatten to fewer values
        raise RunFolderDamaged(f"{path}: {len(ids)} image ids but {feats.shape[0]} feature rows (null features?)")
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RunFolderDamaged(f"{path}: {len(bad)} feature row(s) hold NaN or inf (first image_id "
                               f"{int(ids[bad[0]])}); recompute the features (delete the file) or check the model")
    return ids.astype(np.int64), feats
