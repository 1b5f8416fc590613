"""Camera-aware feature normalisation before clustering.

An ImageNet (or early) re-ID feature carries a strong camera signature: background, light and
viewpoint are shared by everyone a camera sees, so images of *different* people in one camera are
often closer than images of one person in two cameras. k-reciprocal neighbours and DBSCAN then
group by camera, and clusters chain through a camera's crowd.

:func:`camera_normalize` removes each camera's mean feature (over the images of that camera that
are being clustered) and renormalises::

    f_hat = normalize( f - strength * mean_{j : cam_j = cam_i} f_j )

It reads camera ids only, never identities, and needs no training. Images with an unknown camera
(``-1``) are centred on the mean of all images with an unknown camera, so a set without camera ids
(all ``-1``) is centred once on its global mean: a shift shared by every image, which changes
cosine similarities only slightly. ``strength = 0`` returns the features unchanged (renormalised).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["camera_normalize", "has_camera_ids"]


def has_camera_ids(camids: Any) -> bool:
    """True when at least two distinct known (``>= 0``) camera ids are present."""
    if camids is None:
        return False
    cams = np.asarray(camids)
    known = cams[cams >= 0]
    return len(np.unique(known)) >= 2


def camera_normalize(features: Any, camids: Any, strength: float = 1.0) -> np.ndarray:
    """Features ``(N, D)`` minus ``strength`` x their camera's mean feature, L2-normalised (float32).

    ``camids``: ``(N,)`` integer camera ids (``-1`` = unknown) or ``None`` (no camera ids: the
    features are only renormalised). Raises ``ValueError`` on a shape mismatch or a strength
    outside ``[0, 1]``.
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features: expected an (N, D) array, got shape {x.shape}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength!r}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if camids is None or float(strength) == 0.0 or len(x) == 0:
        return x
    cams = np.asarray(camids)
    if cams.shape != (len(x),):
        raise ValueError(f"camids: expected shape ({len(x)},), got {cams.shape}")
    if cams.dtype.kind not in "iu":
        raise ValueError(f"camids: expected integer camera ids, got dtype {cams.dtype}")
    cams = np.where(cams < 0, -1, cams).astype(np.int64)
    _, group = np.unique(cams, return_inverse=True)
    sums = np.zeros((group.max() + 1, x.shape[1]), dtype=np.float64)
    np.add.at(sums, group, x.astype(np.float64))
    means = (sums / np.bincount(group)[:, None]).astype(np.float32)
    out = x - float(strength) * means[group]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    # an image equal to its camera's mean (e.g. a camera with one image) keeps its own direction
    out = np.where(norms > 1e-6, out / np.maximum(norms, 1e-12), x)
    return out.astype(np.float32)
