"""Map-style datasets over image paths (images opened with PIL, converted to RGB)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF


def check_image_size(path: str | os.PathLike, size: tuple[int, int]) -> None:
    """Refuse an image whose header claims more pixels than PIL's ``Image.MAX_IMAGE_PIXELS``
    (a decompression bomb); checked before any decoder allocates the pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    w, h = size
    if limit is not None and w * h > limit:
        raise ValueError(f"{os.fspath(path)}: image of {w} x {h} = {w * h} pixels is above the limit of {limit} "
                         "(decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS)")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of any PIL mode. 16/32-bit integer and float images are scaled to 8 bits first
    (``convert("RGB")`` alone clips them, turning a 16-bit photo white); palette, grey, CMYK, RGBA
    (alpha dropped) go through PIL's own conversion."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
            arr8 = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        else:
            arr = arr.astype(np.int64)
            top = 255 if arr.max(initial=0) <= 255 else (65535 if arr.max() <= 65535 else int(arr.max()))
            arr8 = (np.clip(arr, 0, top) * 255 // max(top, 1)).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB; ``FileNotFoundError`` / ``ValueError`` naming the path otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            check_image_size(path, im.size)
            return to_rgb(im)  # the conversion forces the full decode inside the try
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError (truncated), ...
        if isinstance(exc, ValueError) and str(exc).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc


def _as_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    out = [os.fspath(p) for p in (paths.tolist() if hasattr(paths, "tolist") else paths)]
    return out


class ImageDataset(Dataset):
    """``ds[i] -> (transform(image_i), i)``; ``transform=None`` gives a float tensor in [0, 1]."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable | None = None):
        self.paths = _as_paths(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int):
        img = read_image(self.paths[index])
        return self.transform(img) if self.transform is not None else TF.to_tensor(img)

    def __getitem__(self, index: int):
        return self._load(index), index


class TrainDataset(ImageDataset):
    """``ds[i] -> (transform(image_i), label_i, i)``; labels are int64 (pseudo-labels, -1 allowed)."""

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int], transform: Callable | None = None):
        super().__init__(paths, transform)
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(self.paths):
            raise ValueError(f"labels: need one label per path ({len(self.paths)} paths, labels shape {labels.shape})")
        if len(labels) and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: must be integers (dtype {labels.dtype})")
        self.labels = labels.astype(np.int64)

    def __getitem__(self, index: int):
        return self._load(index), int(self.labels[index]), index
