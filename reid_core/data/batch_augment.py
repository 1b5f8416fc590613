"""Training images decoded once into a uint8 store in RAM, augmented a whole batch at a time.

The plain training path (``TrainConfig.train_data="loader"``) decodes every JPEG again at every
iteration in a DataLoader worker and runs the torchvision transforms image by image
(:func:`reid_core.data.transforms.build_train_transform`). On a 2-core machine that worker takes
a core away from the model step. The ``"memory"`` path does instead:

* :class:`ImageStore`: each image is decoded and resized (bicubic, PIL, the transform's first op)
  the first time a batch needs it, into one uint8 ``(N, H, W, 3)`` array (7,983 Market crops at
  128x64: 196 MB), and reused by every later iteration and round of the process;
* :class:`BatchAugment`: the rest of the recipe on the whole batch, in the main process, with
  the same distributions as the torchvision ops: horizontal flip (p 0.5), zero pad 10 + random
  crop back to size (one gather for flip + crop, on uint8), to float + ImageNet normalisation,
  random erasing (p 0.5, area 0.02-0.4 of the image, aspect 0.3-3.3 log-uniform, up to 10 tries,
  filled with 0 = the mean colour after normalisation).

Random draws come from a ``torch.Generator`` that the caller seeds, so a run is reproducible for a
seed. The draws differ from the torchvision path's (other generator, other order), so the two
paths see differently augmented batches; with the same parameters (:meth:`BatchAugment.apply`)
the pixels are bit-identical (``tests/data/test_batch_augment.py`` checks against the torchvision
ops applied image by image).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD, _check_size

__all__ = ["AugmentParams", "BatchAugment", "ImageStore", "image_store"]


class ImageStore:
    """uint8 ``(N, H, W, 3)`` copies of ``paths``, decoded on first use (bicubic resize to H x W).

    ``store.batch(indices)`` returns a uint8 tensor ``(B, H, W, 3)``; images not decoded yet are
    decoded then (missing or unreadable files raise an error naming the file).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], height: int, width: int) -> None:
        self.height, self.width = _check_size(height, width)
        self.paths = [os.fspath(p) for p in (paths.tolist() if hasattr(paths, "tolist") else paths)]
        self.pixels = np.empty((len(self.paths), self.height, self.width, 3), dtype=np.uint8)
        self.loaded = np.zeros(len(self.paths), dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def batch(self, indices) -> torch.Tensor:
        from ..features import load_image_uint8

        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices: expected a 1-D sequence, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.paths)):
            raise IndexError(f"indices: must lie in [0, {len(self.paths) - 1}], got [{idx.min()}, {idx.max()}]")
        for i in np.unique(idx[~self.loaded[idx]]):
            self.pixels[i] = load_image_uint8(self.paths[i], self.height, self.width)
            self.loaded[i] = True
        return torch.from_numpy(self.pixels[idx])


def _fingerprint(paths: Sequence[str], height: int, width: int) -> str:
    """Digest of the paths, each file's size and modification time, and the image size."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{height}x{width}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # reported with the file name when the image is decoded
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


_STORE: tuple[str, ImageStore] | None = None


def image_store(paths: Sequence[str | os.PathLike], height: int, width: int) -> ImageStore:
    """The process's :class:`ImageStore` for these paths and size: kept between calls (rounds of
    one run in one process reuse the decoded images), replaced when the paths, a file's size or
    modification time, or the size change. One store is kept at a time."""
    global _STORE
    paths = [os.fspath(p) for p in (paths.tolist() if hasattr(paths, "tolist") else paths)]
    height, width = _check_size(height, width)
    key = _fingerprint(paths, height, width)
    if _STORE is None or _STORE[0] != key:
        _STORE = None  # free the old pixels before allocating the new ones
        _STORE = (key, ImageStore(paths, height, width))
    return _STORE[1]


@dataclass
class AugmentParams:
    """Per-image random parameters of one batch (all tensors of length B, int64 / bool).

    ``flip``: mirror horizontally; ``top``, ``left``: crop offset in the zero-padded image
    (0..2*pad); ``erase``: apply random erasing; ``ei``, ``ej``, ``eh``, ``ew``: the erased
    rectangle (rows ``ei..ei+eh-1``, columns ``ej..ej+ew-1``; meaningful where ``erase``)."""

    flip: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    erase: torch.Tensor
    ei: torch.Tensor
    ej: torch.Tensor
    eh: torch.Tensor
    ew: torch.Tensor


class BatchAugment:
    """Batched version of :func:`reid_core.data.transforms.build_train_transform` after its resize.

    ``aug(uint8 (B, H, W, 3), generator) -> float32 (B, 3, H, W)`` (channels_last memory layout),
    ImageNet-normalised. ``sample(B, generator)`` draws the parameters and ``apply(batch, params)``
    uses them, so tests can replay the same parameters through the torchvision ops.
    """

    def __init__(self, height: int, width: int, flip_p: float = 0.5, pad: int = 10, erase_p: float = 0.5,
                 erase_scale: tuple[float, float] = (0.02, 0.4), erase_ratio: tuple[float, float] = (0.3, 3.3),
                 erase_tries: int = 10) -> None:
        self.height, self.width = _check_size(height, width)
        if not 0 <= flip_p <= 1 or not 0 <= erase_p <= 1:
            raise ValueError(f"flip_p and erase_p must lie in [0, 1], got {flip_p}, {erase_p}")
        if int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
        if not 0 < erase_scale[0] <= erase_scale[1] or not 0 < erase_ratio[0] <= erase_ratio[1]:
            raise ValueError(f"erase_scale / erase_ratio: need 0 < lo <= hi, got {erase_scale}, {erase_ratio}")
        if int(erase_tries) < 1:
            raise ValueError(f"erase_tries must be >= 1, got {erase_tries}")
        self.flip_p, self.pad, self.erase_p = float(flip_p), int(pad), float(erase_p)
        self.erase_scale, self.erase_ratio = tuple(map(float, erase_scale)), tuple(map(float, erase_ratio))
        self.erase_tries = int(erase_tries)

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters of ``n`` images (same distributions as the torchvision ops)."""
        g = generator
        H, W, pad = self.height, self.width, self.pad
        flip = torch.rand(n, generator=g) < self.flip_p
        top = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        left = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        erase = torch.rand(n, generator=g) < self.erase_p
        # random erasing: up to `erase_tries` rectangles per image, the first one that fits is used
        t = self.erase_tries
        lo_s, hi_s = self.erase_scale
        area = H * W * (lo_s + (hi_s - lo_s) * torch.rand(n, t, generator=g, dtype=torch.float64))
        lo, hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        aspect = torch.exp(lo + (hi - lo) * torch.rand(n, t, generator=g, dtype=torch.float64))
        eh = torch.round(torch.sqrt(area * aspect)).long()
        ew = torch.round(torch.sqrt(area / aspect)).long()
        fits = (eh < H) & (ew < W)
        first = fits.long().argmax(dim=1)
        rows = torch.arange(n)
        eh, ew = eh[rows, first], ew[rows, first]
        erase &= fits.any(dim=1)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        ei = torch.floor(u[:, 0] * (H - eh + 1).clamp(min=1)).long()
        ej = torch.floor(u[:, 1] * (W - ew + 1).clamp(min=1)).long()
        eh, ew = torch.where(erase, eh, 0), torch.where(erase, ew, 0)
        return AugmentParams(flip=flip, top=top, left=left, erase=erase, ei=ei, ej=ej, eh=eh, ew=ew)

    def apply(self, batch: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Flip + pad/crop (uint8), normalise, erase: float32 ``(B, 3, H, W)``, channels_last layout."""
        if batch.dtype != torch.uint8 or batch.dim() != 4 or tuple(batch.shape[1:]) != (self.height, self.width, 3):
            raise ValueError(f"batch: expected uint8 (B, {self.height}, {self.width}, 3), got {batch.dtype} "
                             f"{tuple(batch.shape)}")
        B, H, W, pad = batch.shape[0], self.height, self.width, self.pad
        if len(params.flip) != B:
            raise ValueError(f"params: drawn for {len(params.flip)} images, batch has {B}")
        padded = batch.new_zeros((B, H + 2 * pad, W + 2 * pad, 3))
        padded[:, pad:pad + H, pad:pad + W] = batch
        rows = params.top[:, None] + torch.arange(H)                                   # (B, H)
        cols = params.left[:, None] + torch.arange(W)                                  # (B, W)
        cols = torch.where(params.flip[:, None], (W + 2 * pad - 1) - cols, cols)       # flip before the crop
        b = torch.arange(B)[:, None, None]
        crop = padded[b, rows[:, :, None], cols[:, None, :]]                           # (B, H, W, 3) uint8
        # the same float ops in the same order as ToTensor + Normalize: bit-identical pixels
        x = crop.permute(0, 3, 1, 2).float().div_(255.0)
        x.sub_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).div_(torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        if bool(params.erase.any()):
            r = torch.arange(H)[None, :]
            c = torch.arange(W)[None, :]
            in_r = (r >= params.ei[:, None]) & (r < (params.ei + params.eh)[:, None])   # (B, H)
            in_c = (c >= params.ej[:, None]) & (c < (params.ej + params.ew)[:, None])   # (B, W)
            mask = (in_r[:, :, None] & in_c[:, None, :] & params.erase[:, None, None]).unsqueeze(1)
            x.masked_fill_(mask, 0.0)
        return x

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(batch, self.sample(batch.shape[0], generator))
