"""Synthetic person crops in the Market-1501 layout (seeded, deterministic, NumPy-drawn).

Each *identity* is a body template: height/width, skin, hair (short/long) or a hat, upper clothes
(colour from a wide palette incl. black/white/grey, muted and saturated; pattern: plain, horizontal/
vertical stripes, chest logo, two-tone, checks, front print; short or long sleeves, or an open jacket
showing a second colour in front), lower clothes (trousers, shorts or skirt), shoes, and an optional
backpack, handbag or shoulder bag (strap across the chest). The person fills most of the crop height
(typically ~80 %, 65-100 %) and about half its width, like a Market-1501 detection.

Each *camera* has its own scene (wall/floor colours, a low-contrast texture), viewpoint mix (front /
back / side: the side view is narrower and shows a backpack behind the torso), person scale and
offset, colour cast, saturation, contrast/brightness/gamma, light direction (body shading), blur,
sensor noise, occluders (railing or pole, rare) and passers-by at the edge. Each *image* adds jitter:
a loose detector box (position, scale, aspect), walking stride, fold phase of the clothing pattern,
per-image light and tint, blobs and objects in the background, sometimes a cast shadow.

So the same person looks different across cameras (colour cast, view, background), and different
people look alike (shared palette, clutter): raw-pixel retrieval is poor (cosine mAP ~0.1 on the
default set), ImageNet features give a weak signal (MobileNetV2, no training: mAP ~0.17, like
Market-1501's ~0.11): enough for clustering to start from, while the clothing colour/pattern/shape
invariant to the camera still has to be learned.

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
GENERATOR_VERSION = 2


def _default_out_dir() -> Path:
    """``<project>/data/synthetic`` in a source checkout, else ``./data/synthetic``."""
    project = Path(__file__).resolve().parents[2]
    return (project if (project / "pyproject.toml").is_file() else Path.cwd()) / "data" / "synthetic"


DEFAULT_OUT_DIR = _default_out_dir()

_PATTERNS = ("plain", "hstripes", "vstripes", "logo", "twotone", "checks", "print")
_PATTERN_P = (0.18, 0.18, 0.1, 0.14, 0.1, 0.14, 0.16)
_VIEWS = ("front", "back", "left", "right")


# --------------------------------------------------------------------------------------------
# random appearance
# --------------------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), dtype=np.float32)


def _cloth_colour(rng: np.random.Generator, neutral_p: float = 0.25) -> np.ndarray:
    r = rng.random()
    if r < neutral_p:  # neutral: black / dark grey / grey / white
        return _hsv(rng.random(), rng.uniform(0.0, 0.08), rng.choice([rng.uniform(0.05, 0.2), rng.uniform(0.35, 0.6),
                                                                       rng.uniform(0.8, 0.97)]))
    if r < neutral_p + 0.15:  # muted (denim, khaki, olive, brown, navy)
        return _hsv(rng.choice([0.07, 0.11, 0.22, 0.58, 0.64]) + rng.normal(0, 0.02), rng.uniform(0.3, 0.65),
                    rng.uniform(0.25, 0.75))
    return _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.4, 1.0))


def _other_colour(rng: np.random.Generator, ref: np.ndarray, min_dist: float = 0.35) -> np.ndarray:
    """A clothing colour visibly different from ``ref`` (second colour of a pattern)."""
    c = _cloth_colour(rng)
    for _ in range(20):
        if float(np.abs(c - ref).sum()) >= min_dist:
            break
        c = _cloth_colour(rng)
    return c


def _make_identity(seed: int, pid: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 11, pid])
    upper = _cloth_colour(rng)
    hair_r = rng.random()
    bag_r = rng.random()
    lower = _cloth_colour(rng, neutral_p=0.45)
    return {
        "height": rng.uniform(0.9, 1.0),
        "width": rng.uniform(0.85, 1.2),
        "skin": _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95)),
        "hair": (_hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.04, 0.45)) if hair_r < 0.85
                 else _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.55, 0.9))),
        "hair_style": "long" if hair_r < 0.3 else ("short" if hair_r < 0.9 else "hat"),
        "hat": _cloth_colour(rng),
        "upper": upper,
        "upper2": _other_colour(rng, upper),
        "pattern": _PATTERNS[int(rng.choice(len(_PATTERNS), p=_PATTERN_P))],
        "stripe_freq": rng.uniform(4.0, 9.0),
        "sleeves": ("short", "long", "jacket")[int(rng.choice(3, p=[0.4, 0.35, 0.25]))],
        "lower": lower,
        "lower_kind": ("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.6, 0.22, 0.18]))],
        "shoes": _cloth_colour(rng, neutral_p=0.6),
        "bag": "none" if bag_r < 0.45 else ("backpack" if bag_r < 0.7 else ("handbag" if bag_r < 0.85 else "shoulder")),
        "bag_colour": _cloth_colour(rng),
        "bag_side": 1.0 if rng.random() < 0.5 else -1.0,
    }


def _make_camera(seed: int, cam: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 23, cam])
    views = rng.dirichlet([1.0, 1.0, 0.6, 0.6]) * 0.7 + 0.3 * np.array([0.3, 0.3, 0.2, 0.2])
    return {
        "wall": _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.8)),
        "floor": _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.65)),
        "horizon": rng.uniform(0.5, 0.8),
        "texture": ("noise", "hlines", "vlines", "tiles")[int(rng.integers(4))],
        "texture_freq": rng.uniform(3.0, 10.0),
        "texture_amp": rng.uniform(0.01, 0.035),
        "clutter": int(rng.integers(1, 4)),
        "views": views / views.sum(),
        "scale": rng.uniform(0.84, 0.93),
        "dx": rng.uniform(-0.04, 0.04),
        "dy": rng.uniform(-0.02, 0.02),
        "gain": rng.uniform(0.88, 1.12, size=3).astype(np.float32),  # colour cast
        "saturation": rng.uniform(0.75, 1.05),
        "gamma": float(np.exp(rng.uniform(-0.3, 0.3))),
        "contrast": rng.uniform(0.75, 1.1),
        "brightness": rng.uniform(-0.08, 0.08),
        "light_dir": rng.uniform(-1.0, 1.0),
        "blur": rng.uniform(0.0, 0.8),
        "noise": rng.uniform(0.004, 0.02),
        "occ_p": rng.uniform(0.03, 0.2),
        "occ_kind": ("bottom", "side", "both")[int(rng.integers(3))],
        "occ_colour": _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.15, 0.75)),
        "passer_p": rng.uniform(0.05, 0.3),
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
    horizon = cam["horizon"] + rng.normal(0, 0.05)
    floor = fy > horizon
    # the scene changes along the camera's field of view: per-image tint around the camera's colours
    wall = np.clip(cam["wall"] * rng.uniform(0.75, 1.25) + rng.normal(0, 0.07, 3), 0, 1)
    ground = np.clip(cam["floor"] * rng.uniform(0.8, 1.2) + rng.normal(0, 0.04, 3), 0, 1)
    img = np.where(floor[..., None], ground, wall).astype(np.float32)
    img = img * (1.0 + 0.2 * (fx - 0.5) * rng.uniform(-1, 1))[..., None]  # light gradient -> (h, w, 3)
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
    # soft blobs (cars, plants, shop windows) blended into the scene, different in every image
    for _ in range(cam["clutter"] + int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0, 1) * h, rng.uniform(-0.1, 1.1) * w
        ry, rx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.1, 0.45) * w
        if rng.random() < 0.7:  # soft blob
            m = np.clip(1.6 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2, 0.0, 1.0)[..., None]
        else:  # hard-edged object (window, sign, car)
            m = ((np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)).astype(np.float32)[..., None]
        col = _hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.1, 0.9))
        img += m * rng.uniform(0.5, 0.9) * (col - img)
    return img


def _passer_by(img: np.ndarray, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, tw: float) -> None:
    """Part of another pedestrian at the left or right edge, behind the main person."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    c = side * rng.uniform(0.3, 0.42)
    s = rng.uniform(0.9, 1.1)
    h, w = img.shape[:2]
    for v0, v1, half, col in ((0.14, 0.52, tw * s, _cloth_colour(rng)),
                              (0.5, 0.95, tw * 0.8 * s, _cloth_colour(rng, 0.5)),
                              (0.02, 0.14, 0.05 * s, _hsv(0.07, 0.4, rng.uniform(0.3, 0.8)))):
        m = (np.abs(u - c) < half) & (v >= v0) & (v < v1)
        img[np.broadcast_to(m, (h, w))] = col


def _render(ident: dict, cam: dict, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy = np.arange(height, dtype=np.float32)[:, None]  # separable grid: masks are built by broadcasting
    xx = np.arange(width, dtype=np.float32)[None, :]
    img = _background(cam, rng, yy, xx)

    view = _VIEWS[int(rng.choice(4, p=cam["views"]))]
    side = view in ("left", "right")
    # loose detector boxes: the person's height, position and aspect ratio vary from image to image
    ph = height * cam["scale"] * ident["height"] * rng.uniform(0.84, 1.1)  # person height in pixels
    top = (height - ph) / 2 + (cam["dy"] + rng.uniform(-0.05, 0.05)) * height
    cx = width / 2 + (cam["dx"] + rng.uniform(-0.2, 0.2)) * width
    v = (yy - top) / ph  # 0 = top of the head, 1 = soles
    u = (xx - cx) / (ph * rng.uniform(0.88, 1.12))  # horizontal offset in units of the person height
    tw = 0.125 * ident["width"] * (0.62 if side else 1.0)  # torso half-width at the shoulders
    if rng.random() < cam["passer_p"]:
        _passer_by(img, rng, u, v, 0.125)
    if view == "left":
        u = -u
    stride = rng.uniform(0.0, 0.1) * (1.6 if side else 0.6)
    person = np.zeros((height, width), dtype=bool)

    def paint(mask, colour):
        m = np.broadcast_to(mask, (height, width))
        img[m] = colour
        person[m] = True

    def rect(u0, u1, v0, v1):
        return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)

    # long hair behind the shoulders
    if ident["hair_style"] == "long" and view != "back":
        paint(rect(-0.065, 0.065, 0.07, 0.24), ident["hair"])
    # backpack seen from the side sits behind the torso
    if ident["bag"] == "backpack" and side:
        paint(rect(-tw - 0.08, -tw + 0.02, 0.16, 0.44), ident["bag_colour"])
    # legs (two columns spreading with the walking stride), lower clothes
    dv = np.clip(v - 0.5, 0, None)
    lw = 0.05 * ident["width"]
    off = 0.0 if side else 0.05 * ident["width"]
    leg_a = (np.abs(u - (off + stride * dv)) < lw) & (v >= 0.5) & (v < 0.95)
    leg_b = (np.abs(u + (off + stride * dv)) < lw) & (v >= 0.5) & (v < 0.95)
    legs = leg_a | leg_b
    low_end = {"trousers": 0.95, "shorts": 0.7, "skirt": 0.5}[ident["lower_kind"]]
    paint(legs & (v >= low_end), ident["skin"])
    paint(legs & (v < low_end), ident["lower"])
    if ident["lower_kind"] == "skirt":
        half = tw * (0.9 + 0.6 * (v - 0.48) / 0.24)
        paint((np.abs(u) < half) & (v >= 0.48) & (v < 0.72), ident["lower"])
    # shoes
    for c in (off + stride * 0.45, -(off + stride * 0.45)):
        paint((np.abs(u - c - (0.015 if side else 0.0)) < lw * 1.25) & (v >= 0.94) & (v < 1.0), ident["shoes"])
    # torso with pattern
    vt = (v - 0.14) / 0.38
    phase = rng.uniform(0, 2 * np.pi)  # cloth folds shift patterns from image to image
    torso = np.broadcast_to((np.abs(u) < tw * (1.0 - 0.1 * vt)) & (v >= 0.14) & (v < 0.53), (height, width))
    pat = ident["pattern"]
    if pat == "hstripes":
        alt = np.sin(2 * np.pi * ident["stripe_freq"] * vt + phase) > 0
    elif pat == "vstripes":
        alt = np.zeros_like(torso) if side else np.sin(2 * np.pi * (ident["stripe_freq"] / 2.5) * u / tw + phase) > 0
    elif pat == "twotone":
        alt = vt > 0.45
    elif pat == "checks":
        alt = (np.sin(2 * np.pi * 3.0 * vt + phase) > 0) ^ (np.sin(2 * np.pi * 1.5 * u / tw + 2 * phase) > 0)
    elif pat == "print" and view != "back":  # large print on the front
        alt = ((u / (tw * 0.7)) ** 2 + ((vt - 0.4) / 0.28) ** 2) < 1.0
    else:
        alt = np.zeros_like(torso)
    alt = np.broadcast_to(alt, torso.shape)
    img[torso] = np.where(alt[torso][:, None], ident["upper2"], ident["upper"])
    person |= torso
    if pat == "logo" and view == "front":
        paint(rect(-0.05, 0.05, 0.21, 0.31), ident["upper2"])
    jacket = ident["sleeves"] == "jacket"
    if jacket and view == "front":  # open jacket: the shirt (second colour) shows in the middle
        paint(rect(-0.3 * tw, 0.3 * tw, 0.15, 0.53), ident["upper2"])
    if ident["bag"] == "shoulder" and view != "back":  # strap across the chest
        strap = np.abs(u * ident["bag_side"] - (0.9 * tw - (v - 0.14) * 0.5)) < 0.013
        paint(strap & (np.abs(u) < tw) & (v >= 0.14) & (v < 0.5), ident["bag_colour"])
    # arms: sleeves then skin, hands
    sleeve_end = 0.27 if ident["sleeves"] == "short" else 0.48
    for sgn in ((1.0,) if side else (1.0, -1.0)):
        a0 = 0.0 if side else tw * sgn
        swing = stride * (0.8 if side else 0.2) * (v - 0.15)
        arm = (np.abs(u - a0 - sgn * (0.024 + swing)) < 0.03) & (v >= 0.15) & (v < 0.5)
        paint(arm & (v < sleeve_end), ident["upper"] * 0.88)
        paint(arm & (v >= sleeve_end), ident["skin"])
    # bags in front / on the back
    if ident["bag"] == "backpack" and view == "back":
        paint(rect(-0.1, 0.1, 0.16, 0.44), ident["bag_colour"])
    elif ident["bag"] == "backpack" and view == "front":
        for s in (-0.07, 0.07):
            paint(rect(s - 0.014, s + 0.014, 0.14, 0.36), ident["bag_colour"])
    elif ident["bag"] in ("handbag", "shoulder"):
        bs = ident["bag_side"] * (-1.0 if view == "back" else 1.0)
        c = bs * (tw + 0.07) if not side else 0.03
        v0 = 0.4 if ident["bag"] == "handbag" else 0.36
        paint(rect(c - 0.045, c + 0.045, v0, v0 + 0.15), ident["bag_colour"])
    # neck, head, hair / hat
    paint(rect(-0.024, 0.024, 0.11, 0.15), ident["skin"])
    hu = 0.055 * (0.85 if side else 1.0)
    head = ((u / hu) ** 2 + ((v - 0.07) / 0.06) ** 2) < 1.0
    paint(head, ident["skin"])
    hair = head & ((v < 0.045) | (view == "back"))
    if side:
        hair |= head & (u < -0.01)
    paint(hair, ident["hair"])
    if ident["hair_style"] == "hat":
        paint(head & (v < 0.05), ident["hat"])
        paint(rect(-hu * 1.3, hu * 1.3, 0.04, 0.055), ident["hat"])

    # shading: round body (darker at the silhouette's sides), light from one side, fabric noise
    ur = np.clip(u / (tw + 0.06), -1.0, 1.0)
    shade = 1.0 - 0.3 * ur ** 2 + 0.12 * cam["light_dir"] * ur * (-1.0 if view == "left" else 1.0)
    shade = shade * (1.0 + 0.05 * _lowfreq_noise(rng, height, width, (12, 6)))
    shade = np.broadcast_to(shade, (height, width))
    img[person] *= shade[person][:, None]

    # occluders in front of the person
    if rng.random() < cam["occ_p"]:
        kind = cam["occ_kind"] if cam["occ_kind"] != "both" else ("bottom", "side")[int(rng.integers(2))]
        col = np.clip(cam["occ_colour"] * rng.uniform(0.8, 1.2), 0, 1)
        if kind == "bottom":
            img[np.broadcast_to(yy >= height * rng.uniform(0.75, 0.9), (height, width))] = col
        else:
            x0 = width * rng.choice([rng.uniform(-0.1, 0.1), rng.uniform(0.75, 0.95)])
            img[np.broadcast_to((xx >= x0) & (xx < x0 + width * rng.uniform(0.1, 0.2)), (height, width))] = col

    # cast shadow / sunlit patch over part of the scene
    if rng.random() < 0.35:
        edge = (rng.uniform(0.2, 0.8) * height - yy * rng.uniform(-0.6, 0.6) - xx) / (0.05 * height)
        img *= (1.0 + rng.choice([-0.35, 0.3]) * np.clip(edge, 0.0, 1.0))[..., None]

    # camera response: colour cast, saturation, contrast, brightness, gamma, noise
    img = img * cam["gain"] * rng.uniform(0.88, 1.12) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + cam["saturation"] * (img - grey)
    img = (img - 0.5) * cam["contrast"] * rng.uniform(0.9, 1.1) + 0.5 + cam["brightness"] + rng.uniform(-0.06, 0.06)
    img = np.clip(img, 0.0, 1.0) ** (cam["gamma"] * np.exp(rng.uniform(-0.15, 0.15)))
    img += cam["noise"] * rng.standard_normal(img.shape, dtype=np.float32)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mode="RGB")
    radius = (cam["blur"] + rng.uniform(0.0, 0.4)) * height / 128
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
        "Each identity is a drawn body template (clothing colours and pattern, sleeves/jacket, trousers/",
        "shorts/skirt, shoes, hair/hat, bag, height/width); each camera has its own scene, viewpoint mix,",
        "scale/offset, colour cast, saturation, gamma/contrast, shading, blur, noise, occluders and",
        "passers-by; each image adds jitter (box position/scale, pose, light, background clutter, shadow).",
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
        # mkdtemp makes the folder 0700; once renamed into place it is the dataset folder, which should
        # get the mode a plain mkdir would give it
        from ..io.atomic import current_umask

        os.chmod(tmp, 0o777 & ~current_umask())
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
