"""Global pooling layers for re-ID feature maps.

``GeM`` (generalised mean pooling) computes, per channel ``c`` of a map ``x`` (B, C, H, W)::

    f_c = ( mean_{h,w} max(x_{c,h,w}, eps) ** p ) ** (1 / p)

``p = 1`` is average pooling; ``p -> inf`` tends to max pooling. ``p`` is learnable by default
(initialised to 3, as in Cluster-Contrast). Pooling runs in float32 even under bf16 autocast:
``pow`` with ``p = 3`` on bf16 inputs loses too many bits. float64 inputs stay float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bf16 to float32; leave float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class GeM(nn.Module):
    """Generalised mean pooling over the spatial dimensions: (B, C, H, W) -> (B, C)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM: p must be > 0, got {p}")
        if eps <= 0:
            raise ValueError(f"GeM: eps must be > 0, got {eps}")
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"GeM expects a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        x = _at_least_fp32(x)
        p = self.p.to(x.dtype)
        x = x.clamp(min=self.eps).pow(p)
        return x.mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


class AvgPool(nn.Module):
    """Global average pooling (float32): (B, C, H, W) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _at_least_fp32(x).mean(dim=(2, 3))


class MaxPool(nn.Module):
    """Global max pooling (float32): (B, C, H, W) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(_at_least_fp32(x), 1).flatten(1)


POOLINGS = ("gem", "avg", "max")


def build_pooling(name: str) -> nn.Module:
    """Pooling layer by name: ``"gem"`` (learnable p=3), ``"avg"`` or ``"max"``."""
    if name == "gem":
        return GeM()
    if name == "avg":
        return AvgPool()
    if name == "max":
        return MaxPool()
    raise ValueError(f"pooling={name!r} is not supported; choose one of {POOLINGS}")
