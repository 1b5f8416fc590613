"""Ranked-list pictures: one row per query, the query crop then its top-k gallery crops.

Borders say what is known: green = same identity as the query, red = another identity, grey =
identity unknown on either side (custom galleries without labels). The query itself has a blue
border. Each gallery crop is captioned with its rank and distance. Drawn with PIL only (no
matplotlib), written atomically as PNG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..io.atomic import atomic_path

__all__ = ["RankedList", "as_pid", "draw_ranked_lists", "match_colour"]

GREEN = (22, 163, 74)
RED = (220, 38, 38)
GREY = (150, 150, 150)
BLUE = (37, 99, 235)


@dataclass
class RankedList:
    """One query and its ranked gallery items (best first)."""

    query_path: str
    gallery_paths: Sequence[str]
    distances: Sequence[float]
    query_pid: int | None = None
    gallery_pids: Sequence[int | None] = field(default_factory=list)
    title: str = ""


def match_colour(query_pid: int | None, gallery_pid: int | None) -> tuple[int, int, int]:
    """Green for the same known identity, red for another known identity, grey when either is unknown."""
    if query_pid is None or gallery_pid is None or query_pid < 0 or gallery_pid < 0:
        return GREY
    return GREEN if int(query_pid) == int(gallery_pid) else RED


def _thumb(path: str, height: int, width: int) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize((width, height), Image.BICUBIC)
    except Exception as exc:  # PIL raises several types
        raise ValueError(f"{path}: cannot read image for the ranked list ({type(exc).__name__}: {exc})") from exc


def draw_ranked_lists(lists: Sequence[RankedList], out_path: str | os.PathLike, thumb_height: int = 128,
                      thumb_width: int = 64, border: int = 4) -> Path:
    """Draw ``lists`` as a grid (one row per query) into the PNG ``out_path``; returns the path."""
    if not lists:
        raise ValueError("draw_ranked_lists: no ranked list to draw")
    font = ImageFont.load_default()
    k = max(len(r.gallery_paths) for r in lists)
    cell_w, cell_h = thumb_width + 2 * border, thumb_height + 2 * border
    gap, caption, title_h = 12, 14, 14
    row_h = title_h + cell_h + caption + 6
    width = 8 + cell_w + gap + k * (cell_w + 4) + 4
    canvas = Image.new("RGB", (width, 6 + row_h * len(lists)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, r in enumerate(lists):
        y0 = 6 + i * row_h
        qlabel = r.title or Path(r.query_path).name
        if r.query_pid is not None and r.query_pid >= 0:
            qlabel += f"  (id {r.query_pid})"
        draw.text((8, y0), qlabel, fill=(0, 0, 0), font=font)
        y = y0 + title_h
        x = 8
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=BLUE)
        canvas.paste(_thumb(r.query_path, thumb_height, thumb_width), (x + border, y + border))
        draw.text((x, y + cell_h + 1), "query", fill=(0, 0, 0), font=font)
        x += cell_w + gap
        pids = list(r.gallery_pids) or [None] * len(r.gallery_paths)
        for rank, (path, dist, pid) in enumerate(zip(r.gallery_paths, r.distances, pids), start=1):
            colour = match_colour(r.query_pid, pid)
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=colour)
            canvas.paste(_thumb(path, thumb_height, thumb_width), (x + border, y + border))
            draw.text((x, y + cell_h + 1), f"{rank}: {float(dist):.2f}", fill=(0, 0, 0), font=font)
            x += cell_w + 4
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        canvas.save(tmp, format="PNG")
    return out_path


def as_pid(value) -> int | None:
    """An identity from a table cell: None for missing / NaN / negative (unknown)."""
    import pandas as pd

    if value is None or pd.isna(value):
        return None
    value = int(value)
    return value if value >= 0 else None
