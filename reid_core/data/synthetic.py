"""Synthetic person crops in the Market-1501 layout (seeded, deterministic, NumPy-drawn).

Each *identity* is a body template: height/width, skin and hair (short/long), upper clothes
(colour + pattern: plain, horizontal/vertical stripes, chest logo, two-tone, checks; short or long
sleeves), lower clothes (trousers, shorts or skirt), shoes, and an optional backpack or handbag.
Each *camera* has its own background (wall/floor colours, texture, clutter), viewpoint mix
(front / back / side), person scale and offset, brightness/contrast/gamma, colour cast, blur, sensor
noise and occluders (railings, poles, cars). Each *image* adds jitter: position, scale, walking
stride, brightness, background clutter and texture phase.

So the same person looks different across cameras (colour cast, view, background), and different
people look alike within a camera (same background, light): raw-pixel retrieval is poor, while a
model that learns clothing colour/pattern/shape invariant to the camera does well.

Output folder (Market layout, file names ``PPPP_cCs1_FFFFFF_NN.jpg``, pids from 1, cameras
``c1..cN``; optional distractors get pid 0 in the gallery)::

    out_dir/bounding_box_train/  identities 1..n_train
    out_dir/query/               test identities: one image per (identity, query camera)
    out_dir/bounding_box_test/   the other images of test identities (+ distractors)
    out_dir/meta.json            parameters, generator version, counts, file list digest
    out_dir/README.md            human-readable description

Generation writes to a temporary sibling folder and swaps it in, so an interrupted run never
leaves a half-written dataset; :func:`ensure_synthetic` regenerates only when ``meta.json``
parameters differ or an expected file is missing.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .market import MARKET_FOLDERS

logger = logging.getLogger(__name__)

GENERATOR = "reid_core.data.synthetic"
GENERATOR_VERSION = 1


def _default_out_dir() -> Path:
    """``<project>/data/synthetic`` in a source checkout, else ``./data/synthetic``."""
    project = Path(__file__).resolve().parents[2]
    return (project if (project / "pyproject.toml").is_file() else Path.cwd()) / "data" / "synthetic"


DEFAULT_OUT_DIR = _default_out_dir()

_PATTERNS = ("plain", "hstripes", "vstripes", "logo", "twotone", "checks")
_VIEWS = ("front", "back", "left", "right")


# --------------------------------------------------------------------------------------------
# random appearance
# --------------------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), dtype=np.float32)


def _cloth_colour(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.2:  # neutral: black / grey / white
        return _hsv(0.0, 0.0, rng.uniform(0.08, 0.95))
    if r < 0.35:  # muted (denim, khaki, olive, brown)
        return _hsv(rng.choice([0.08, 0.12, 0.25, 0.6, 0.62]) + rng.normal(0, 0.02), rng.uniform(0.25, 0.55), rng.uniform(0.25, 0.7))
    return _hsv(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0))


def _make_identity(seed: int, pid: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 11, pid])
    upper = _cloth_colour(rng)
    upper2 = _cloth_colour(rng)
    lower = _cloth_colour(rng) if rng.random() < 0.6 else _hsv(rng.choice([0.0, 0.6, 0.1]), rng.uniform(0, 0.5), rng.uniform(0.1, 0.45))
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.5)) if rng.random() < 0.9 else _hsv(0, 0, rng.uniform(0.6, 0.9))
    bag_r = rng.random()
    return {
        "height": rng.uniform(0.86, 1.0),
        "width": rng.uniform(0.82, 1.2),
        "skin": skin,
        "hair": hair,
        "long_hair": bool(rng.random() < 0.3),
        "upper": upper,
        "upper2": upper2,
        "pattern": _PATTERNS[int(rng.choice(len(_PATTERNS), p=[0.3, 0.15, 0.1, 0.2, 0.1, 0.15]))],
        "stripe_freq": rng.uniform(5.0, 11.0),
        "long_sleeves": bool(rng.random() < 0.6),
        "lower": lower,
        "lower_kind": ("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.65, 0.2, 0.15]))],
        "shoes": _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.95)),
        "bag": "none" if bag_r < 0.5 else ("backpack" if bag_r < 0.8 else "handbag"),
        "bag_colour": _cloth_colour(rng),
        "bag_side": 1.0 if rng.random() < 0.5 else -1.0,
    }


def _make_camera(seed: int, cam: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 23, cam])
    views = rng.dirichlet([0.6, 0.6, 0.4, 0.4])
    return {
        "wall": _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.25, 0.85)),
        "floor": _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.2, 0.7)),
        "horizon": rng.uniform(0.55, 0.85),
        "texture": ("noise", "hlines", "vlines", "tiles")[int(rng.integers(4))],
        "texture_freq": rng.uniform(3.0, 12.0),
        "texture_amp": rng.uniform(0.04, 0.14),
        "clutter": int(rng.integers(0, 4)),
        "views": views,
        "scale": rng.uniform(0.74, 0.95),
        "dx": rng.uniform(-0.07, 0.07),
        "dy": rng.uniform(-0.04, 0.04),
        "gain": rng.uniform(0.72, 1.28, size=3).astype(np.float32),  # colour cast
        "gamma": float(np.exp(rng.uniform(-0.4, 0.4))),
        "contrast": rng.uniform(0.7, 1.15),
        "brightness": rng.uniform(-0.1, 0.1),
        "blur": rng.uniform(0.0, 1.3),
        "noise": rng.uniform(0.005, 0.04),
        "occ_p": rng.uniform(0.1, 0.5),
        "occ_kind": ("bottom", "side", "both")[int(rng.integers(3))],
        "occ_colour": _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.1, 0.8)),
    }


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------
def _lowfreq_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    grid = rng.standard_normal(cells).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)


def _background(cam: dict, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    # yy: (h, 1) row coordinates, xx: (1, w) column coordinates (broadcast to (h, w))
    h, w = yy.shape[0], xx.shape[1]
    fy, fx = yy / h, xx / w
    horizon = cam["horizon"] + rng.normal(0, 0.02)
    floor = fy > horizon
    img = np.where(floor[..., None], cam["floor"], cam["wall"]).astype(np.float32)
    img = img * (1.0 + 0.25 * (fx - 0.5) * rng.uniform(-1, 1))[..., None]  # light gradient -> (h, w, 3)
    f, amp, ph = cam["texture_freq"], cam["texture_amp"], rng.uniform(0, 2 * np.pi)
    kind = cam["texture"]
    if kind == "hlines":
        tex = np.sin(2 * np.pi * f * fy + ph)
    elif kind == "vlines":
        tex = np.sin(2 * np.pi * f * fx * 0.5 + ph)
    elif kind == "tiles":
        tex = np.sign(np.sin(2 * np.pi * f * fy + ph) * np.sin(np.pi * f * fx + ph))
    else:
        tex = _lowfreq_noise(rng, h, w, (6, 4))
    img += (amp * tex)[..., None]
    for _ in range(cam["clutter"] + int(rng.integers(0, 2))):  # objects behind the person
        y0, x0 = rng.uniform(0, 0.9) * h, rng.uniform(-0.2, 0.9) * w
        y1, x1 = y0 + rng.uniform(0.05, 0.4) * h, x0 + rng.uniform(0.1, 0.5) * w
        m = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
        img[m] = _hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.1, 0.9))
    return img


def _render(ident: dict, cam: dict, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy = np.arange(height, dtype=np.float32)[:, None]  # separable grid: masks are built by broadcasting
    xx = np.arange(width, dtype=np.float32)[None, :]
    img = _background(cam, rng, yy, xx)

    view = _VIEWS[int(rng.choice(4, p=cam["views"]))]
    side = view in ("left", "right")
    ph = height * cam["scale"] * ident["height"] * rng.uniform(0.94, 1.06)
    top = (height - ph) / 2 + (cam["dy"] + rng.normal(0, 0.015)) * height
    cx = width / 2 + (cam["dx"] + rng.normal(0, 0.035)) * width
    v = (yy - top) / ph
    u = (xx - cx) / ph
    if view == "left":
        u = -u
    tw = 0.115 * ident["width"] * (0.62 if side else 1.0)  # torso half-width at the shoulders
    stride = rng.uniform(0.0, 0.1) * (1.6 if side else 0.6)

    def paint(mask, colour):
        img[np.broadcast_to(mask, (height, width))] = colour

    def rect(u0, u1, v0, v1):
        return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)

    # long hair behind the shoulders
    if ident["long_hair"] and view != "back":
        paint(rect(-0.06, 0.06, 0.07, 0.22), ident["hair"])
    # backpack seen from the side sits behind the torso
    if ident["bag"] == "backpack" and side:
        paint(rect(-tw - 0.07, -tw + 0.02, 0.17, 0.42), ident["bag_colour"])
    # legs (two columns spreading with the walking stride), lower clothes
    dv = np.clip(v - 0.5, 0, None)
    lw = 0.047 * ident["width"]
    off = 0.0 if side else 0.045 * ident["width"]
    leg_a = (np.abs(u - (off + stride * dv)) < lw) & (v >= 0.5) & (v < 0.94)
    leg_b = (np.abs(u + (off + stride * dv)) < lw) & (v >= 0.5) & (v < 0.94)
    legs = leg_a | leg_b
    low_end = {"trousers": 0.94, "shorts": 0.68, "skirt": 0.5}[ident["lower_kind"]]
    paint(legs & (v >= low_end), ident["skin"])
    paint(legs & (v < low_end), ident["lower"])
    if ident["lower_kind"] == "skirt":
        half = tw * (0.9 + 0.6 * (v - 0.48) / 0.24)
        paint((np.abs(u) < half) & (v >= 0.48) & (v < 0.72), ident["lower"])
    # shoes
    for c in (off + stride * 0.44, -(off + stride * 0.44)):
        paint((np.abs(u - c - 0.012 * (1 if side else 0)) < lw * 1.25) & (v >= 0.935) & (v < 0.985), ident["shoes"])
    # torso with pattern
    vt = (v - 0.14) / 0.38
    torso = (np.abs(u) < tw * (1.0 - 0.12 * vt)) & (v >= 0.14) & (v < 0.52)
    pat = ident["pattern"]
    if pat == "hstripes":
        alt = np.sin(2 * np.pi * ident["stripe_freq"] * vt) > 0
    elif pat == "vstripes":
        alt = np.sin(2 * np.pi * (ident["stripe_freq"] / 2.5) * u / tw) > 0 if not side else np.zeros_like(torso)
    elif pat == "twotone":
        alt = vt > 0.5
    elif pat == "checks":
        alt = (np.sin(2 * np.pi * 3.5 * vt) > 0) ^ (np.sin(2 * np.pi * 1.5 * u / tw) > 0)
    else:
        alt = np.zeros_like(torso)
    alt = np.broadcast_to(alt, torso.shape)
    img[torso] = np.where(alt[torso][:, None], ident["upper2"], ident["upper"])
    if pat == "logo" and view == "front":
        paint(rect(-0.045, 0.045, 0.22, 0.31), ident["upper2"])
    # arms: sleeves then skin, hands
    sleeve_end = 0.47 if ident["long_sleeves"] else 0.27
    for sgn in ((1.0,) if side else (1.0, -1.0)):
        a0 = 0.0 if side else tw * sgn
        swing = stride * (0.8 if side else 0.2) * (v - 0.15)
        arm = (np.abs(u - a0 - sgn * (0.022 + swing)) < 0.028) & (v >= 0.15) & (v < 0.49)
        paint(arm & (v < sleeve_end), ident["upper"] * 0.85)
        paint(arm & (v >= sleeve_end), ident["skin"])
    # bags in front / on the back
    if ident["bag"] == "backpack" and view == "back":
        paint(rect(-0.09, 0.09, 0.17, 0.42), ident["bag_colour"])
    elif ident["bag"] == "backpack" and view == "front":
        for s in (-0.065, 0.065):
            paint(rect(s - 0.012, s + 0.012, 0.14, 0.36), ident["bag_colour"])
    elif ident["bag"] == "handbag":
        bs = ident["bag_side"] * (-1.0 if view == "back" else 1.0)
        c = bs * (tw + 0.06) if not side else 0.03
        paint(rect(c - 0.04, c + 0.04, 0.4, 0.56), ident["bag_colour"])
    # neck, head, hair
    paint(rect(-0.022, 0.022, 0.11, 0.15), ident["skin"])
    hu = 0.052 * (0.85 if side else 1.0)
    head = ((u / hu) ** 2 + ((v - 0.07) / 0.058) ** 2) < 1.0
    paint(head, ident["skin"])
    hair = head & ((v < 0.045) | (view == "back"))
    if side:
        hair |= head & (u < -0.01)
    paint(hair, ident["hair"])

    # occluders in front of the person
    if rng.random() < cam["occ_p"]:
        kind = cam["occ_kind"] if cam["occ_kind"] != "both" else ("bottom", "side")[int(rng.integers(2))]
        col = np.clip(cam["occ_colour"] * rng.uniform(0.8, 1.2), 0, 1)
        if kind == "bottom":
            paint(yy >= height * rng.uniform(0.62, 0.85), col)
        else:
            x0 = width * rng.uniform(-0.1, 0.8)
            paint((xx >= x0) & (xx < x0 + width * rng.uniform(0.15, 0.35)), col)

    # camera response: colour cast, contrast, brightness, gamma, noise
    light = rng.uniform(0.9, 1.1)
    img = img * cam["gain"] * light
    img = (img - 0.5) * cam["contrast"] + 0.5 + cam["brightness"]
    img = np.clip(img, 0.0, 1.0) ** cam["gamma"]
    img += cam["noise"] * rng.standard_normal(img.shape, dtype=np.float32)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    radius = cam["blur"] + rng.uniform(0.0, 0.3)
    if radius > 0.15:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(out)


def render_person(pid: int, cam: int, index: int = 0, seed: int = 0, height: int = 128, width: int = 64) -> np.ndarray:
    """One synthetic crop (uint8, (height, width, 3)) of identity ``pid`` seen by camera ``cam``.

    Deterministic in all arguments; ``index`` selects the image (pose/jitter) within the pair.
    """
    ident = _make_identity(seed, pid)
    camera = _make_camera(seed, cam)
    rng = np.random.default_rng([seed, 37, pid, cam, index])
    return _render(ident, camera, rng, height, width)


# --------------------------------------------------------------------------------------------
# dataset layout
# --------------------------------------------------------------------------------------------
def _params(n_ids, n_cams, images_per_id_cam, seed, height, width, train_fraction, query_cams,
             n_distractors, jpeg_quality) -> dict[str, Any]:
    p = {
        "n_ids": int(n_ids), "n_cams": int(n_cams), "images_per_id_cam": int(images_per_id_cam),
        "seed": int(seed), "height": int(height), "width": int(width),
        "train_fraction": float(train_fraction),
        "query_cams": None if query_cams is None else int(query_cams),
        "n_distractors": int(n_distractors), "jpeg_quality": int(jpeg_quality),
        "generator": GENERATOR, "version": GENERATOR_VERSION,
    }
    if p["n_ids"] < 2:
        raise ValueError(f"n_ids: need at least 2 identities (got {n_ids})")
    if not 2 <= p["n_cams"] <= 99:
        raise ValueError(f"n_cams: need 2..99 cameras (got {n_cams})")
    if p["images_per_id_cam"] < 1:
        raise ValueError(f"images_per_id_cam: must be >= 1 (got {images_per_id_cam})")
    if p["height"] < 16 or p["width"] < 8:
        raise ValueError(f"height/width: too small ({height}x{width}); use at least 16x8")
    if not 0.0 < p["train_fraction"] < 1.0:
        raise ValueError(f"train_fraction: must be in (0, 1) (got {train_fraction})")
    if p["query_cams"] is not None and p["query_cams"] < 1:
        raise ValueError(f"query_cams: must be >= 1 or None (got {query_cams})")
    if p["n_distractors"] < 0:
        raise ValueError(f"n_distractors: must be >= 0 (got {n_distractors})")
    if p["n_ids"] + 1 > 9999:
        raise ValueError(f"n_ids: at most 9998 identities fit the 4-digit Market pid (got {n_ids})")
    return p


def _plan(p: dict[str, Any]) -> list[tuple[str, str, int, int, int]]:
    """Deterministic list of (split, file name, pid, cam, index) for the parameters ``p``."""
    n_ids, n_cams, m = p["n_ids"], p["n_cams"], p["images_per_id_cam"]
    n_train = min(n_ids - 1, max(1, int(round(n_ids * p["train_fraction"]))))
    rng = np.random.default_rng([p["seed"], 53])
    plan = []
    frame = 0
    for pid in range(1, n_ids + 1):
        if pid <= n_train:
            qcams: set[int] = set()
        else:
            nq = n_cams if p["query_cams"] is None else min(p["query_cams"], n_cams)
            if m == 1:
                nq = min(nq, n_cams - 1)  # leave gallery images of this identity
            qcams = set(rng.choice(n_cams, size=nq, replace=False).tolist())
        for cam in range(n_cams):
            qj = int(rng.integers(m)) if cam in qcams else -1
            for j in range(m):
                frame += 1
                split = "train" if pid <= n_train else ("query" if j == qj else "gallery")
                plan.append((split, f"{pid:04d}_c{cam + 1}s1_{frame:06d}_{j + 1:02d}.jpg", pid, cam, j))
    for d in range(p["n_distractors"]):
        cam = d % n_cams
        frame += 1
        plan.append(("gallery", f"0000_c{cam + 1}s1_{frame:06d}_01.jpg", 0, cam, d))
    return plan


def _digest(plan) -> str:
    h = hashlib.sha256()
    for split, name, *_ in plan:
        h.update(f"{split}/{name}\n".encode())
    return h.hexdigest()


def _readme(p: dict[str, Any], counts: dict[str, dict[str, int]], seconds: float) -> str:
    lines = [
        "# Synthetic persons (Market-1501 layout)",
        "",
        f"Generated by `{GENERATOR}` (version {GENERATOR_VERSION}) in {seconds:.1f} s. Regenerate with",
        "`reid_core.data.synthetic.ensure_synthetic(out_dir, **params)`; do not edit by hand.",
        "",
        "Each identity is a drawn body template (clothing colours and pattern, sleeves, trousers/shorts/",
        "skirt, shoes, hair, bag, height/width); each camera has its own background, viewpoint mix,",
        "scale/offset, colour cast, gamma/contrast, blur, noise and occluders; each image adds jitter.",
        "File names follow `PPPP_cCs1_FFFFFF_NN.jpg` (pid from 1; pid 0 = distractor; cameras c1..cN).",
        "",
        "| folder | images | identities |",
        "| --- | --- | --- |",
    ]
    for split in ("train", "query", "gallery"):
        c = counts[split]
        lines.append(f"| {MARKET_FOLDERS[split]} | {c['images']} | {c['identities']} |")
    lines += ["", "Parameters:", "", "```json", json.dumps(p, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _is_synthetic_dir(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text()).get("params", {}).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def generate_synthetic(
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    n_ids: int = 100,
    n_cams: int = 6,
    images_per_id_cam: int = 4,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    train_fraction: float = 0.5,
    query_cams: int | None = None,
    n_distractors: int = 0,
    jpeg_quality: int = 95,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the Market-1501 layout to ``out_dir``; return ``out_dir``.

    ``n_ids`` identities (pids 1..n_ids) x ``n_cams`` cameras x ``images_per_id_cam`` images.
    The first ``round(train_fraction * n_ids)`` identities go to ``bounding_box_train``; for each
    test identity, one image per camera (of ``query_cams`` random cameras, default all) goes to
    ``query`` and the rest to ``bounding_box_test``. ``n_distractors`` extra gallery images of
    unique random people get pid 0. An existing non-synthetic, non-empty ``out_dir`` is never
    overwritten (``FileExistsError``).
    """
    p = _params(n_ids, n_cams, images_per_id_cam, seed, height, width, train_fraction, query_cams,
                n_distractors, jpeg_quality)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_synthetic_dir(out))):
        raise FileExistsError(f"{out}: exists and is not a synthetic dataset folder (no matching meta.json); refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = _plan(p)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for folder in MARKET_FOLDERS.values():
            (tmp / folder).mkdir()
        idents: dict[int, dict] = {}
        cams = [_make_camera(p["seed"], c) for c in range(p["n_cams"])]
        try:
            from tqdm import tqdm
            it = tqdm(plan, desc="synthetic", unit="img", disable=not progress)
        except ImportError:  # pragma: no cover
            it = plan
        for split, name, pid, cam, j in it:
            if pid == 0:  # distractor: a unique random person
                ident = _make_identity(p["seed"], 10**6 + j)
            else:
                ident = idents.get(pid) or idents.setdefault(pid, _make_identity(p["seed"], pid))
            rng = np.random.default_rng([p["seed"], 37, pid, cam, j if pid else 10**6 + j])
            arr = _render(ident, cams[cam], rng, p["height"], p["width"])
            Image.fromarray(arr).save(tmp / MARKET_FOLDERS[split] / name, quality=p["jpeg_quality"])
        counts = {}
        for split in ("train", "query", "gallery"):
            rows = [r for r in plan if r[0] == split]
            counts[split] = {"images": len(rows), "identities": len({r[2] for r in rows if r[2] > 0})}
        seconds = time.perf_counter() - t0
        meta = {"params": p, "counts": counts, "files_digest": _digest(plan), "seconds": round(seconds, 3)}
        (tmp / "README.md").write_text(_readme(p, counts, seconds))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        # swap in: old folder (if any) is moved aside first, then removed
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "d")
        try:
            os.replace(tmp, out)
        except OSError:
            # another process swapped in a dataset meanwhile: keep it if it matches these parameters
            if not is_synthetic_complete(out, **{k: p[k] for k in _DEFAULTS}):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("synthetic dataset: %d images in %.1f s -> %s", len(plan), seconds, out)
    return out


def is_synthetic_complete(out_dir: str | os.PathLike, **kwargs) -> bool:
    """True when ``out_dir`` holds a dataset generated with exactly these parameters, all files present."""
    out = Path(out_dir).expanduser()
    p = _params(**{**_DEFAULTS, **kwargs})
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("params") != p:
        return False
    plan = _plan(p)
    if meta.get("files_digest") != _digest(plan):
        return False
    for folder in MARKET_FOLDERS.values():
        if not (out / folder).is_dir():
            return False
    present = {split: set(os.listdir(out / MARKET_FOLDERS[split])) for split in MARKET_FOLDERS}
    return all(name in present[split] for split, name, *_ in plan)


_DEFAULTS = dict(n_ids=100, n_cams=6, images_per_id_cam=4, seed=0, height=128, width=64, train_fraction=0.5,
                 query_cams=None, n_distractors=0, jpeg_quality=95)


def ensure_synthetic(out_dir: str | os.PathLike = DEFAULT_OUT_DIR, progress: bool = False, **kwargs) -> Path:
    """Return ``out_dir``, generating it (see :func:`generate_synthetic`) only when its ``meta.json``
    parameters differ from ``kwargs`` or an expected image is missing."""
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"ensure_synthetic: unknown parameter(s) {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    out = Path(out_dir).expanduser().resolve()
    if is_synthetic_complete(out, **kwargs):
        return out
    return generate_synthetic(out, progress=progress, **kwargs)
