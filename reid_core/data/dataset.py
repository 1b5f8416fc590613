"""Map-style datasets over image paths (images opened with PIL, converted to RGB)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB; ``FileNotFoundError`` / ``ValueError`` naming the path otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image file does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() forces the full decode inside the try
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError (truncated), ...
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
