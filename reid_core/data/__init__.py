"""Datasets (Market-1501 layout, manifest folders, synthetic persons), transforms and samplers.

Names are imported lazily, so reading an images table (``load_market1501``, ``load_manifest``)
does not import torch / torchvision.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "dataset": ["ImageDataset", "TrainDataset", "read_image"],
    "manifest": ["load_images", "load_manifest"],
    "market": ["MARKET_FOLDERS", "SPLIT_ORDER", "load_market1501", "parse_market_name", "summarize_images"],
    "samplers": ["PKBatchSampler", "PKSampler"],
    "synthetic": ["DEFAULT_OUT_DIR", "ensure_synthetic", "generate_synthetic", "is_synthetic_complete",
                  "render_person"],
    "transforms": ["IMAGENET_MEAN", "IMAGENET_STD", "build_eval_transform", "build_train_transform"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'reid_core.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
