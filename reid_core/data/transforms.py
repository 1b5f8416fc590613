"""Image transforms: PIL.Image (RGB) -> float tensor (3, H, W), ImageNet mean/std normalised.

Built on torchvision.transforms (v1 API, operating on PIL images before ``ToTensor``).
The training pipeline follows the usual re-ID recipe (as in Cluster-Contrast):
resize, random horizontal flip, pad 10 + random crop back to size, to tensor, normalise,
random erasing (p=0.5, erased area filled with 0 = the mean colour after normalisation).
Randomness comes from ``torch``'s global generator (seed it with ``reid_core.device.set_seed``;
DataLoader workers get distinct seeds from PyTorch).
"""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_size(height: int, width: int) -> tuple[int, int]:
    h, w = int(height), int(width)
    if h <= 0 or w <= 0 or h != height or w != width:
        raise ValueError(f"height/width: must be positive integers (got {height!r}, {width!r})")
    return h, w


def build_eval_transform(height: int = 256, width: int = 128) -> T.Compose:
    """Deterministic: resize to (height, width), to tensor, ImageNet normalise."""
    h, w = _check_size(height, width)
    return T.Compose([
        T.Resize((h, w), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def build_train_transform(
    height: int = 256,
    width: int = 128,
    flip_p: float = 0.5,
    pad: int = 10,
    erase_p: float = 0.5,
) -> T.Compose:
    """Random augmentation for training (see module docstring); output shape (3, height, width)."""
    h, w = _check_size(height, width)
    ops = [T.Resize((h, w), interpolation=InterpolationMode.BICUBIC)]
    if flip_p > 0:
        ops.append(T.RandomHorizontalFlip(p=flip_p))
    if pad > 0:
        ops += [T.Pad(pad), T.RandomCrop((h, w))]
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erase_p > 0:
        ops.append(T.RandomErasing(p=erase_p, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0))
    return T.Compose(ops)
