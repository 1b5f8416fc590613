"""BN neck and AlignedReID local branch."""
from __future__ import annotations

import torch
from torch import nn


class BNNeck(nn.Module):
    """BatchNorm1d on the pooled feature, with its bias frozen at 0 (BNNeck of "Bag of Tricks").

    The weight is initialised to 1 and trained; the bias stays 0 (``requires_grad=False``), so the
    feature is not shifted and the cosine geometry of the normalised output is kept.
    Runs in float32 (half/bf16 inputs are upcast), also under bf16 autocast.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            return self.bn(x)


class LocalBranch(nn.Module):
    """AlignedReID local branch: one horizontal stripe per row of the last feature map.

    (B, C, H, W) -> mean over W -> (B, C, H, 1) -> 1x1 conv to ``dim`` + BN + ReLU -> (B, H, dim).
    """

    def __init__(self, in_channels: int, dim: int = 128) -> None:
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv2d(in_channels, dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.dim() != 4:
            raise ValueError(f"LocalBranch expects a (B, C, H, W) map, got shape {tuple(fmap.shape)}")
        rows = fmap.mean(dim=3, keepdim=True)  # (B, C, H, 1)
        out = self.relu(self.bn(self.conv(rows)))  # (B, dim, H, 1)
        return out.squeeze(3).permute(0, 2, 1).contiguous()  # (B, H, dim)
