"""Inference copies of a model: conv+BN folding and fp32 islands for bf16.

Why fp32 islands: in the ImageNet MobileNetV2 the 1x1 expand conv of block 2 has output channels
that are nearly constant (BN running mean up to ~77, running std ~0.02). BN then subtracts two
almost equal numbers and scales the difference by ~25: with bf16 inputs/weights (8-bit mantissa)
the rounding error of the conv output is amplified ~1500x, and the final features drift to a
cosine of ~0.98 against fp32. :func:`fp32_sensitive_convs` finds such convs from their BN
statistics (``max |running_mean| / sqrt(running_var + eps)`` above a threshold) and
:func:`keep_convs_fp32_` makes them ignore autocast.

Even then, rounding errors made in the first, high-resolution layers grow through the rest of the
network (measured on Market crops, ImageNet MobileNetV2 at 256x128, 64 images: min cosine to fp32
0.9967 with only the sensitive conv in fp32; 0.9993 with the convs up to output stride 4 in fp32
too; 0.9997 up to stride 4 including the stride-4 stage). So by default the convs whose output
stride is <= 4 (stem and first stage, found by :func:`early_convs`) also stay fp32; everything else
runs in bf16.
"""
from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .backbones import ResNetTrunk
from .neck import LocalBranch

DEFAULT_FP32_THRESHOLD = 50.0
DEFAULT_FP32_MAX_STRIDE = 4

# Modules whose forward applies ``bnX`` right after ``convX`` (checked by hand for each class).
_ATTRIBUTE_PAIR_CLASSES = (
    torchvision.models.resnet.Bottleneck, torchvision.models.resnet.BasicBlock, ResNetTrunk, LocalBranch,
)


class FP32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that always runs in float32, also inside a bf16/fp16 autocast region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str, str]]:
    """``(parent, conv_attr, bn_attr, qualified_conv_name)`` for every Conv2d directly followed by a BatchNorm2d.

    Found in ``nn.Sequential`` containers (consecutive children) and in the known blocks that apply
    ``bnX`` right after ``convX`` (torchvision ResNet blocks, ``ResNetTrunk``, ``LocalBranch``).
    """
    pairs = []
    for prefix, parent in model.named_modules():
        children = parent._modules
        if isinstance(parent, nn.Sequential):
            keys = list(children)
            candidates = list(zip(keys, keys[1:]))
        elif isinstance(parent, _ATTRIBUTE_PAIR_CLASSES):
            candidates = [(k, "bn" + k[4:]) for k in children if k.startswith("conv") and "bn" + k[4:] in children]
        else:
            continue
        for conv_key, bn_key in candidates:
            if isinstance(children[conv_key], nn.Conv2d) and isinstance(children[bn_key], nn.BatchNorm2d):
                name = f"{prefix}.{conv_key}" if prefix else conv_key
                pairs.append((parent, conv_key, bn_key, name))
    return pairs


def fp32_sensitive_convs(model: nn.Module, threshold: float = DEFAULT_FP32_THRESHOLD) -> list[str]:
    """Names of convs whose following BN amplifies rounding error more than ``threshold`` times."""
    names = []
    for parent, conv_key, bn_key, name in conv_bn_pairs(model):
        bn = parent._modules[bn_key]
        if bn.running_mean is None or bn.running_var is None:
            continue
        ratio = bn.running_mean.abs() / (bn.running_var + bn.eps).sqrt()
        if float(ratio.max()) > threshold:
            names.append(name)
    return names


def early_convs(model: nn.Module, max_stride: int = DEFAULT_FP32_MAX_STRIDE, probe_hw: tuple[int, int] = (64, 32)) -> list[str]:
    """Names of the convs whose output stride is <= ``max_stride`` (found with one tiny probe forward)."""
    if max_stride < 1:
        return []
    found: list[str] = []
    hooks = []
    height = probe_hw[0]
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            def hook(_m, _inp, out, name=name):
                if out.shape[-2] * max_stride >= height:
                    found.append(name)
            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, *probe_hw, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(found))


def _as_fp32_conv(conv: nn.Conv2d) -> FP32Conv2d:
    new = FP32Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    new.load_state_dict(conv.state_dict())
    new.train(conv.training)
    return new


def keep_convs_fp32_(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named convs (in place) by :class:`FP32Conv2d`; state-dict keys do not change."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = parent._modules[attr]
        if not isinstance(conv, FP32Conv2d):
            parent._modules[attr] = _as_fp32_conv(conv)
    return model


def fuse_conv_bn_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into it (in place; eval mode only)."""
    if model.training:
        raise ValueError("fuse_conv_bn_: put the model in eval mode first (BN folding uses running statistics)")
    for parent, conv_key, bn_key, _ in conv_bn_pairs(model):
        conv, bn = parent._modules[conv_key], parent._modules[bn_key]
        fused = fuse_conv_bn_eval(conv, bn)
        if isinstance(conv, FP32Conv2d):
            fused = _as_fp32_conv(fused)
        parent._modules[conv_key] = fused
        parent._modules[bn_key] = nn.Identity()
    return model


def inference_copy(model: nn.Module, bf16: bool = False, fuse_bn: bool = True,
                   fp32_threshold: float = DEFAULT_FP32_THRESHOLD,
                   fp32_max_stride: int = DEFAULT_FP32_MAX_STRIDE) -> nn.Module:
    """A deep copy of ``model`` in eval mode, ready for fast inference; ``model`` is not touched.

    With ``bf16`` the convs found by :func:`fp32_sensitive_convs` and :func:`early_convs` (output
    stride <= ``fp32_max_stride``; 0 disables) stay in fp32; with ``fuse_bn`` BN
    layers are folded into the preceding convs (same outputs up to float rounding, fewer passes
    over memory). The BN neck (BatchNorm1d) is kept as it is.
    """
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    if bf16:
        names = fp32_sensitive_convs(twin, fp32_threshold) + early_convs(twin, fp32_max_stride)
        keep_convs_fp32_(twin, list(dict.fromkeys(names)))
    if fuse_bn:
        fuse_conv_bn_(twin)
    return twin
