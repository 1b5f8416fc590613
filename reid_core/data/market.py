"""Market-1501 folder layout -> images table.

Layout::

    root/
      bounding_box_train/   split "train"
      query/                split "query"
      bounding_box_test/    split "gallery"

File names follow ``PPPP_cCsS_FFFFFF_NN.jpg`` (person id, camera 1-based, sequence, frame, box).

Policy (documented in ``docs/API_CONTRACT.md``):

* pid ``-1`` files are *junk* (bad detections in the public gallery): dropped from every split;
  the number dropped is logged (warning) and stored in ``df.attrs["n_junk"]`` and
  ``df.attrs["junk_per_split"]``.
* pid ``0`` (``0000_...``) files are *distractors*: kept with pid 0 (gallery negatives).
* Cameras are converted to 0-based ids (``c1`` -> 0).
* Only ``*.jpg`` files (any case) are read; anything else (``Thumbs.db``, ``.DS_Store``, ``*.mat``)
  and hidden files (e.g. macOS ``._0002_c1s1_000451_03.jpg``) are ignored.
* Bad input raises: a missing root or split folder -> ``FileNotFoundError``; a split folder
  without any ``.jpg`` file, a ``.jpg`` whose name does not follow the Market pattern, an empty
  (0-byte) ``.jpg`` -> ``ValueError``; every message names the folder or file. Image *contents* are
  only decoded when ``verify=True`` (else an unreadable image is reported by
  :class:`reid_core.data.dataset.ImageDataset` when it is read).
* Rows are sorted deterministically: by split (train, query, gallery), then by file name.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: split name -> folder name in the Market-1501 layout
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
SPLIT_ORDER = ("train", "query", "gallery")
IMAGE_COLUMNS = ("image_id", "path", "camid", "pid", "split")

_NAME_RE = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$", re.IGNORECASE)


def parse_market_name(name: str | os.PathLike) -> tuple[int, int]:
    """Return ``(pid, camid)`` of a Market-1501 file name; ``camid`` is 0-based.

    ``pid`` is -1 for junk and 0 for distractors. Raises ``ValueError`` naming the file when the
    name does not follow ``PPPP_cCsS_FFFFFF_NN.jpg`` or the camera number is 0.
    """
    base = os.path.basename(os.fspath(name))
    m = _NAME_RE.match(base)
    if m is None:
        raise ValueError(
            f"{name}: file name does not follow the Market-1501 pattern PPPP_cCsS_FFFFFF_NN.jpg "
            "(e.g. 0002_c1s1_000451_03.jpg)"
        )
    pid, cam = int(m.group(1)), int(m.group(2))
    if cam < 1:
        raise ValueError(f"{name}: camera number must be >= 1 in Market-1501 names (got c{cam})")
    return pid, cam - 1


def _find_root(root: Path, splits: Iterable[str]) -> Path:
    """Accept ``root`` itself or a single sub-folder holding the layout (e.g. Market-1501-v15.09.15)."""
    folders = [MARKET_FOLDERS[s] for s in splits]
    if any((root / f).is_dir() for f in folders):
        return root
    candidates = [d for d in sorted(root.iterdir()) if d.is_dir() and all((d / f).is_dir() for f in folders)]
    if len(candidates) == 1:
        return candidates[0]
    return root


def _is_image_file(e: os.DirEntry) -> bool:
    """``e.is_file()`` with clear errors for names that cannot be stored and links that lead nowhere."""
    try:
        e.name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{os.fsencode(e.path)!r}: file name is not valid UTF-8; rename the file") from None
    try:
        return e.is_file()
    except OSError as exc:  # ELOOP: a symlink loop
        raise ValueError(f"{e.path}: cannot open ({exc.strerror}; a symlink loop?)") from exc


def _verify_image(path: str) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(f"{path}: unreadable image ({exc})") from exc


def load_market1501(
    root: str | os.PathLike,
    splits: Iterable[str] = SPLIT_ORDER,
    verify: bool = False,
) -> pd.DataFrame:
    """Read a Market-1501-style folder into the images table.

    Parameters
    ----------
    root:
        folder holding ``bounding_box_train``, ``query``, ``bounding_box_test`` (or holding exactly
        one sub-folder that does).
    splits:
        which of ``"train"``, ``"query"``, ``"gallery"`` to read; each requested folder must exist.
    verify:
        also decode every image header with PIL (slower) and fail on unreadable files.

    Returns
    -------
    DataFrame with columns ``image_id, path, camid, pid, split`` (see module docstring for the
    junk / distractor policy). ``df.attrs`` holds ``root``, ``n_junk`` and ``junk_per_split``.
    """
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    unknown = [s for s in splits if s not in MARKET_FOLDERS]
    if unknown or not splits:
        raise ValueError(f"splits: unknown or empty split name(s) {unknown}; use some of {SPLIT_ORDER}")
    splits = tuple(s for s in SPLIT_ORDER if s in splits)  # canonical order, no duplicates
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Market-1501 root folder does not exist")
    root = _find_root(root, splits).resolve()

    rows_path: list[str] = []
    rows_cam: list[int] = []
    rows_pid: list[int] = []
    rows_split: list[str] = []
    junk: dict[str, int] = {}
    for split in splits:
        folder = root / MARKET_FOLDERS[split]
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: split folder for '{split}' is missing (expected {MARKET_FOLDERS[split]}/ under {root})"
            )
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if e.name.lower().endswith(".jpg") and not e.name.startswith(".")
                              and _is_image_file(e)), key=lambda e: e.name)
        if not entries:
            raise ValueError(f"{folder}: split folder for '{split}' contains no .jpg images")
        n_junk = 0
        for e in entries:
            pid, cam = parse_market_name(e.path)
            if pid == -1:
                n_junk += 1
                continue
            if e.stat().st_size == 0:
                raise ValueError(f"{e.path}: empty (0-byte) image file")
            if verify:
                _verify_image(e.path)
            rows_path.append(e.path)
            rows_cam.append(cam)
            rows_pid.append(pid)
            rows_split.append(split)
        junk[split] = n_junk
        if n_junk and n_junk == len(entries):
            raise ValueError(f"{folder}: split folder for '{split}' holds only junk (pid -1) images")

    n = len(rows_path)
    df = pd.DataFrame(
        {
            "image_id": np.arange(n, dtype=np.int64),
            "path": pd.Series(rows_path, dtype=object),
            "camid": np.asarray(rows_cam, dtype=np.int64),
            "pid": np.asarray(rows_pid, dtype=np.int64),
            "split": pd.Series(rows_split, dtype=object),
        }
    )
    total_junk = int(sum(junk.values()))
    df.attrs.update({"root": str(root), "n_junk": total_junk, "junk_per_split": junk})
    if total_junk:
        logger.warning("%s: dropped %d junk image(s) with pid -1 (%s)", root, total_junk, junk)
    return df


def summarize_images(df: pd.DataFrame) -> pd.DataFrame:
    """Images and identities per split (identities exclude pid -1), in split order."""
    out = []
    for split in SPLIT_ORDER:
        part = df[df["split"] == split]
        if len(part) == 0:
            continue
        pids = part["pid"][part["pid"] >= 0]
        out.append({"split": split, "images": len(part), "identities": int(pids.nunique()),
                    "cameras": int(part["camid"][part["camid"] >= 0].nunique())})
    return pd.DataFrame(out, columns=["split", "images", "identities", "cameras"])
