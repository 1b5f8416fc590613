"""A user's own folder of crops, described by a manifest (CSV or Parquet) -> images table.

Manifest columns:

* ``path`` (required): image file, absolute or relative to ``root`` (when given) else to the
  manifest's own folder.
* ``pid`` (optional): identity; integers (``-1`` = unknown) or names (strings are mapped to
  0..n-1 in sorted order, mapping in ``df.attrs["pid_names"]``). Missing column/empty cell -> -1.
* ``camid`` (optional): camera; integers ``>= 0`` or names (mapped like ``pid``, mapping in
  ``df.attrs["camid_names"]``). Missing column/empty cell -> -1 (unknown camera; evaluation then
  does not filter same-camera matches).
* ``split`` (optional): ``train`` / ``query`` / ``gallery``; missing column/empty cell -> the
  ``split`` argument (default ``train``).

Other columns are ignored. Errors (``FileNotFoundError`` / ``ValueError``) name the manifest, the
column and the first offending rows. Rows keep manifest order inside each split; splits are
ordered train, query, gallery; ``image_id`` is 0..N-1 in that order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .market import SPLIT_ORDER, load_market1501

_MAX_SHOWN = 5


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, dtype={"path": str}, keep_default_na=True)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t", dtype={"path": str})
    except Exception as exc:
        raise ValueError(f"{path}: cannot read manifest ({exc})") from exc
    raise ValueError(f"{path}: manifest must be .csv, .tsv or .parquet (got '{suffix or 'no suffix'}')")


def _rows(idx: np.ndarray) -> str:
    # report 1-based data row numbers (header not counted) as a user sees them in a spreadsheet
    shown = ", ".join(str(int(i) + 1) for i in idx[:_MAX_SHOWN])
    return shown + (f" ... ({len(idx)} rows)" if len(idx) > _MAX_SHOWN else "")


def _id_column(df: pd.DataFrame, col: str, manifest: Path, min_value: int) -> tuple[np.ndarray, list | None]:
    """Integer ids from a column of ints, integral floats or names; empty -> -1."""
    if col not in df.columns:
        return np.full(len(df), -1, dtype=np.int64), None
    s = df[col]
    missing = np.array(s.isna(), dtype=bool)
    if s.dtype == object or pd.api.types.is_string_dtype(s):
        s = s.astype(object).where(~missing, None)
        stripped = s.map(lambda v: v.strip() if isinstance(v, str) else v)
        missing |= stripped.map(lambda v: v == "").to_numpy(dtype=bool)
        numeric = pd.to_numeric(stripped.where(~missing, None), errors="coerce")
        if bool((numeric.isna().to_numpy() & ~missing).any()):
            # names: map sorted unique names to 0..n-1
            names = sorted({str(v) for v, m in zip(stripped, missing) if not m})
            lookup = {n: i for i, n in enumerate(names)}
            out = np.array([-1 if m else lookup[str(v)] for v, m in zip(stripped, missing)], dtype=np.int64)
            return out, names
        s = numeric
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        raise ValueError(f"{manifest}: column '{col}' must hold integers or names (dtype {s.dtype})")
    vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(vals)
    filled = np.where(missing, -1.0, vals)
    bad = np.flatnonzero(filled != np.round(filled))
    if len(bad):
        raise ValueError(f"{manifest}: column '{col}' must hold whole numbers; rows {_rows(bad)} do not")
    out = filled.astype(np.int64)
    bad = np.flatnonzero((out < min_value) & (out != -1))
    if len(bad):
        raise ValueError(f"{manifest}: column '{col}' must be >= {min_value} or -1 (unknown); rows {_rows(bad)} are not")
    return out, None


def load_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    split: str = "train",
    check_files: bool = True,
) -> pd.DataFrame:
    """Read a manifest (CSV / TSV / Parquet) into the images table (see module docstring).

    ``check_files=True`` fails when a listed image does not exist (all missing rows are counted).
    """
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest file does not exist")
    if split not in SPLIT_ORDER:
        raise ValueError(f"split: default split must be one of {SPLIT_ORDER} (got {split!r})")
    base = Path(root).expanduser() if root is not None else manifest.parent
    if root is not None and not base.is_dir():
        raise FileNotFoundError(f"{base}: root folder for manifest {manifest} does not exist")
    base = base.resolve()

    df = _read_table(manifest)
    df.columns = [str(c).strip() for c in df.columns]
    if "path" not in df.columns:
        raise ValueError(f"{manifest}: missing required column 'path'; has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{manifest}: manifest has no rows")

    raw = df["path"]
    empty = np.array(raw.isna(), dtype=bool) | np.array(raw.astype(str).str.strip().eq(""), dtype=bool)
    if empty.any():
        raise ValueError(f"{manifest}: column 'path' is empty in rows {_rows(np.flatnonzero(empty))}")
    paths = [str(p).strip() for p in raw]
    abs_paths = [os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p)) for p in paths]

    if "split" in df.columns:
        sp = df["split"].astype(object).where(df["split"].notna(), None)
        splits = [split if (v is None or str(v).strip() == "") else str(v).strip().lower() for v in sp]
        bad = np.array([i for i, v in enumerate(splits) if v not in SPLIT_ORDER], dtype=np.int64)
        if len(bad):
            raise ValueError(
                f"{manifest}: column 'split' must be one of {SPLIT_ORDER}; rows {_rows(bad)} are not "
                f"(e.g. {splits[bad[0]]!r})"
            )
    else:
        splits = [split] * len(df)

    pids, pid_names = _id_column(df, "pid", manifest, min_value=0)
    camids, cam_names = _id_column(df, "camid", manifest, min_value=0)

    out = pd.DataFrame(
        {
            "path": pd.Series(abs_paths, dtype=object),
            "camid": camids,
            "pid": pids,
            "split": pd.Series(splits, dtype=object),
        }
    )
    outside = np.array([i for i, (p, a) in enumerate(zip(paths, abs_paths))
                        if not os.path.isabs(p) and os.path.commonpath([str(base), a]) != str(base)], dtype=np.int64)
    if len(outside):
        raise ValueError(f"{manifest}: relative path(s) leave the dataset root {base} in rows {_rows(outside)} "
                         f"(e.g. {paths[outside[0]]}); use a path under the root, or an absolute path")
    dup = out.duplicated(["path", "split"], keep="first").to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        raise ValueError(f"{manifest}: image listed twice in the same split in rows {_rows(rows)} (e.g. {paths[rows[0]]})")
    if check_files:
        missing = np.array([i for i, p in enumerate(abs_paths) if not os.path.isfile(p)], dtype=np.int64)
        loops = [i for i in missing if os.path.islink(abs_paths[i])]
        if loops:
            raise ValueError(f"{manifest}: rows {_rows(np.asarray(loops))} are broken symlinks or symlink loops "
                             f"(first: {abs_paths[loops[0]]})")
        if len(missing):
            raise FileNotFoundError(
                f"{manifest}: {len(missing)} listed image(s) do not exist, rows {_rows(missing)} "
                f"(first: {abs_paths[missing[0]]}; relative paths resolve against {base})"
            )

    order = np.argsort(out["split"].map({s: i for i, s in enumerate(SPLIT_ORDER)}).to_numpy(), kind="stable")
    out = out.iloc[order].reset_index(drop=True)
    out.insert(0, "image_id", np.arange(len(out), dtype=np.int64))
    out["camid"] = out["camid"].astype(np.int64)
    out["pid"] = out["pid"].astype(np.int64)
    out.attrs.update({"manifest": str(manifest), "root": str(base)})
    if pid_names is not None:
        out.attrs["pid_names"] = pid_names
    if cam_names is not None:
        out.attrs["camid_names"] = cam_names
    return out


def load_images(source: str | os.PathLike, root: str | os.PathLike | None = None, **kwargs) -> pd.DataFrame:
    """Images table from either a Market-1501-style folder or a manifest file.

    A directory goes to :func:`load_market1501` (``kwargs``: ``splits``, ``verify``); a file to
    :func:`load_manifest` (``kwargs``: ``split``, ``check_files``) with ``root``.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        if root is not None:
            raise ValueError(f"root: only used with a manifest file, but {src} is a folder")
        return load_market1501(src, **kwargs)
    if src.is_file():
        return load_manifest(src, root=root, **kwargs)
    raise FileNotFoundError(f"{src}: neither a dataset folder nor a manifest file")
