"""Run-time device selection, bf16 autocast and seeding.

No code here moves anything to a fixed GPU: callers ask :func:`pick_device` and move tensors with ``.to(device)``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import torch


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the device to run on.

    ``"auto"`` (or ``None``) picks CUDA when available, else CPU. An explicit ``"cuda"`` on a
    machine without CUDA raises a clear error instead of failing deep inside PyTorch.
    """
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .errors import ReidError

    class DeviceError(ReidError, RuntimeError):
        """An unknown or unavailable device (a RuntimeError, as before; shown as one line by the CLI)."""

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"device: {device!r} is not a device name ({exc}); use 'cpu', 'cuda' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device: {device!r} was requested but CUDA is not available on this machine; "
                          "use 'cpu' or 'auto'")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul support (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; what ``lscpu`` prints as "Model name"), plus ``AMX``
    when it has AMX tiles: results of one wall-clock budget differ between CPU kinds, so every
    result row records it. ``"unknown"`` where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown")
    return f"{name} (AMX)" if "amx_bf16" in text else name


def resolve_bf16(bf16: bool | str | None, device: torch.device) -> bool:
    """Resolve a ``bf16`` option ("auto", True, False) for ``device``."""
    if bf16 in (None, "auto"):
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_supports_bf16()
    if isinstance(bf16, str):
        return bf16.lower() in ("1", "true", "yes", "on")
    return bool(bf16)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast context for ``device`` (a no-op context when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def loader_context(num_workers: int):
    """Multiprocessing context for DataLoader workers: ``spawn``.

    Forking a process that already runs threads (Prefect's API client and event loop, the
    extraction prefetch thread, tqdm's monitor) is unsafe: forked workers were seen exiting with
    code 1 at shutdown after Prefect had run in the same process. Spawned workers start clean;
    they cost about 2 s of start-up per loader (once per round).
    """
    if num_workers <= 0:
        return None
    import multiprocessing

    return multiprocessing.get_context("spawn")
