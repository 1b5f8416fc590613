"""Batched feature extraction: image files -> L2-normalised float32 features (N, D).

The pipeline keeps the model busy:

* images are decoded (JPEG: torchvision's libjpeg-turbo decoder, pixel-identical to PIL's on
  Market-1501 and ~2.5x cheaper; other formats: PIL) and resized with PIL's bicubic filter, as
  ``reid_core.data.transforms.build_eval_transform`` does (as in Cluster-Contrast), into a uint8
  (B, H, W, 3) batch. With ``num_workers=0`` one background thread prepares the next batches while
  the model runs the current one (``decode="thread"``, the default; the decoders release the GIL)
  or the calling thread decodes each batch before its forward (``decode="inline"``); with ``num_workers > 0`` a ``DataLoader`` with that many worker
  processes does it (for a GPU machine with many cores).
* the uint8 batch goes to the device as is (4x fewer bytes than float) and is normalised there with
  ImageNet mean/std by torch's intra-op threads. The permuted (B, 3, H, W) view is already in
  channels_last layout, which oneDNN prefers on CPU. Measured CPU cost per 128x64 Market JPEG:
  ~0.04 ms decode + ~0.03 ms normalise, a few % of the MobileNetV2 forward.
* the forward runs on an inference copy of the model (conv+BN folded) under
  ``torch.inference_mode`` and, where supported (``resolve_bf16``), bf16 autocast. Convs whose
  following BN would amplify bf16 rounding (see ``reid_core.models.inference``) stay in fp32, as
  do pooling and BN neck; the output is re-normalised in float32.
"""
from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

try:  # deprecated since torchvision 0.29 in favour of TorchCodec; PIL does the work if it goes away
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - depends on the installed torchvision
    decode_jpeg = None

from .device import autocast, loader_context, pick_device, resolve_bf16
from .models.inference import inference_copy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_JPEG_MAGIC = b"\xff\xd8\xff"
#: how ``extract_features`` decodes without worker processes (see its docstring)
DECODE_MODES = ("inline", "thread")

__all__ = ["extract_features", "load_image_uint8", "decode_batch", "normalize_uint8_batch", "inference_runner"]


def _decode_jpeg_rgb(data: np.ndarray) -> np.ndarray | None:
    """Decode JPEG bytes with torchvision (libjpeg-turbo, ~2.5x faster than going through PIL and
    pixel-identical to PIL's decode on Market-1501); ``None`` when torchvision cannot."""
    if decode_jpeg is None:
        return None
    try:
        chw = decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        return None
    return chw.permute(1, 2, 0).numpy()


def load_image_uint8(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """Decode ``path`` as RGB and resize to (height, width) with bicubic filtering: uint8 (H, W, 3).

    JPEG files are decoded by torchvision, other formats (and JPEGs it rejects) by PIL; the resize
    is PIL's bicubic, as in ``build_eval_transform``. Raises ``FileNotFoundError`` / ``ValueError``
    naming the file.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: image file does not exist") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image file ({exc})") from exc
    from .data.dataset import check_image_size, to_rgb

    if data.size == 0:
        raise ValueError(f"{path}: empty (0-byte) image file")
    try:
        with Image.open(io.BytesIO(data.tobytes())) as img:  # header only: size check before any decode
            check_image_size(path, img.size)
            arr = _decode_jpeg_rgb(data) if data[:3].tobytes() == _JPEG_MAGIC else None
            if arr is None:
                arr = np.asarray(to_rgb(img))
        if arr.shape[:2] != (height, width):
            arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.BICUBIC))
        return arr
    except Exception as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(os.fspath(path)):
            raise
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def decode_batch(paths: Sequence[str], height: int, width: int) -> torch.Tensor:
    """Decode and resize ``paths`` into one uint8 tensor (B, H, W, 3)."""
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = load_image_uint8(p, height, width)
    return torch.from_numpy(out)


def normalize_uint8_batch(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) on ``device``, ImageNet-normalised, channels_last layout.

    Equals ``Normalize(mean, std)(ToTensor()(img))`` up to float rounding.
    """
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


class _ImageFiles(torch.utils.data.Dataset):
    """Picklable dataset for DataLoader workers: index -> uint8 (H, W, 3) tensor."""

    def __init__(self, paths: Sequence[str], height: int, width: int) -> None:
        self.paths, self.height, self.width = paths, height, width

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_image_uint8(self.paths[i], self.height, self.width))


def _thread_batches(paths: Sequence[str], height: int, width: int, batch_size: int,
                    prefetch: int = 2) -> Iterator[torch.Tensor]:
    """Yield uint8 batches decoded by one background thread, ``prefetch`` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work() -> None:
        try:
            for start in range(0, len(paths), batch_size):
                if stop.is_set():
                    return
                item = decode_batch(paths[start:start + batch_size], height, width)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # re-raised in the consumer, with the file name in the message
            q.put(exc)
            return
        q.put(None)

    thread = threading.Thread(target=work, name="reid-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _loader_batches(paths: Sequence[str], height: int, width: int, batch_size: int, num_workers: int,
                    pin_memory: bool) -> Iterator[torch.Tensor]:
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, height, width), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
        multiprocessing_context=loader_context(num_workers),
    )
    yield from loader


def _use_channels_last(device: torch.device, bf16: bool) -> bool:
    # oneDNN runs convolutions fastest in NHWC on CPU (measured in bench/extract.py); on CUDA,
    # channels_last pays off with bf16 tensor cores.
    return device.type == "cpu" or bf16


def _bf16_resident_weights_(net: nn.Module) -> int:
    """Store the weights of the convs that autocast runs in bf16 as bf16 (the fp32 islands,
    ``FP32Conv2d``, keep theirs): autocast would cast them again at every forward (one copy of
    every weight per batch, not cached outside autograd); the cast is the same, so the features
    are bit-identical. Returns the number of convs converted."""
    n = 0
    for m in net.modules():
        if type(m) is nn.Conv2d:
            m.to(torch.bfloat16)
            n += 1
    return n


@contextlib.contextmanager
def inference_runner(model: nn.Module, device: str | torch.device = "auto", bf16: bool | str = "auto",
                     fuse_bn: bool = True, bf16_weights: bool = True,
                     compile: bool = False) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Yield ``run(x) -> float32 L2-normalised (B, D)`` backed by an inference copy of ``model``.

    ``x`` is a normalised float (B, 3, H, W) batch already on the device. ``model`` itself is not
    changed (mode, device, layout): the forward runs on ``reid_core.models.inference.inference_copy``
    (eval mode, conv+BN folded, bf16-sensitive convs kept in fp32), moved to the device and, on CPU
    or with bf16, to channels_last layout. With bf16 and ``bf16_weights`` the other convs keep
    their weights in bf16 (bit-identical features, no per-batch weight casts). ``compile`` runs the
    copy through ``torch.compile`` (inductor, no freezing; ``bench/extract.py --compile``). Shared by :func:`extract_features` and
    ``bench/extract.py`` so both time the same forward.
    """
    dev = pick_device(device)
    use_bf16 = resolve_bf16(bf16, dev)
    channels_last = _use_channels_last(dev, use_bf16)
    net = inference_copy(model, bf16=use_bf16, fuse_bn=fuse_bn).to(dev)
    if use_bf16 and bf16_weights:
        _bf16_resident_weights_(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if compile else net

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with torch.inference_mode(), autocast(dev, use_bf16):
            out = forward(x)
        if isinstance(out, dict):
            out = out["bn_feat"]
        return F.normalize(out.float(), dim=1)

    run.device = dev  # type: ignore[attr-defined]
    run.bf16 = use_bf16  # type: ignore[attr-defined]
    run.channels_last = channels_last  # type: ignore[attr-defined]
    run.model = net  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        del net


def _feature_dim(model: nn.Module) -> int | None:
    dim = getattr(model, "feat_dim", None)
    return int(dim) if dim is not None else None


def extract_features(model: nn.Module, paths: Sequence[str | os.PathLike], height: int = 256, width: int = 128,
                     batch_size: int = 128, device: str | torch.device = "auto", flip: bool = False,
                     bf16: bool | str = "auto", num_workers: int = 0, progress: bool = True,
                     decode: str = "thread", bf16_weights: bool = True) -> np.ndarray:
    """Features of the images at ``paths``: float32 (N, D), rows L2-normalised, in ``paths`` order.

    Images are resized to (``height``, ``width``) (bicubic, as ``build_eval_transform``) and
    normalised with ImageNet mean/std; the model runs in eval mode on ``device`` (``"auto"``: CUDA
    if present) through an inference copy, so ``model`` itself is not changed.
    ``flip=True`` averages each feature with the feature of the horizontally flipped image, then
    re-normalises. ``bf16="auto"`` uses bf16 autocast where the device supports it.
    ``num_workers=0`` decodes in one background thread that prefetches while the model runs
    (``decode="thread"``, the default) or in the calling thread right before each batch's forward
    (``decode="inline"``: no thread beside torch's intra-op threads; measured 7% slower on a busy
    2-core EPYC, kept as an option for machines where the overlap does not pay); ``> 0`` uses a
    DataLoader with that many worker processes.
    ``bf16_weights``: see :func:`inference_runner` (same features either way).
    An empty ``paths`` returns a (0, D) array (D = ``model.feat_dim``; a model without
    ``feat_dim`` raises ``ValueError`` for empty input).
    Unreadable or missing images raise an error naming the file.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be > 0, got {height}x{width}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    if n == 0:
        dim = _feature_dim(model)
        if dim is None:
            raise ValueError("extract_features: empty paths and the model has no feat_dim to size the (0, D) output")
        return np.zeros((0, dim), dtype=np.float32)

    out: np.ndarray | None = None
    with inference_runner(model, device, bf16, bf16_weights=bf16_weights) as run:
        dev = run.device  # type: ignore[attr-defined]
        if num_workers > 0:
            batches = _loader_batches(paths, height, width, batch_size, num_workers, pin_memory=dev.type == "cuda")
        elif decode == "thread":
            batches = _thread_batches(paths, height, width, batch_size)
        else:
            batches = (decode_batch(paths[s:s + batch_size], height, width) for s in range(0, n, batch_size))
        start = 0
        with tqdm(total=n, desc="extract features", unit="img", disable=not progress) as bar:
            try:
                for batch in batches:
                    x = normalize_uint8_batch(batch, dev)
                    feats = run(x)
                    if flip:
                        feats = F.normalize(feats + run(x.flip(3)), dim=1)
                    feats = feats.cpu().numpy()
                    if out is None:
                        out = np.empty((n, feats.shape[1]), dtype=np.float32)
                    out[start:start + len(feats)] = feats
                    start += len(feats)
                    bar.update(len(feats))
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
    assert out is not None and start == n
    return out
