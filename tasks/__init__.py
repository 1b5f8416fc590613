"""Prefect tasks: one thin ``@task`` per ``reid_core.pipeline.stages`` function.

Each task takes paths and plain values, calls the stage (which skips itself when its outputs are
fresh and writes atomically) and returns the output path(s). No logic lives here; see
``tasks/_common.py`` for the caching and retry choices.
"""
from .clustering import build_pseudo_labels, ground_truth_labels
from .evaluation import evaluate
from .features import extract_features, extract_features_shard, merge_features
from .indexing import index_images
from .ise import plan_ise
from .reporting import collect_metrics, write_profile
from .training import train_epoch

__all__ = ["index_images", "extract_features", "extract_features_shard", "merge_features", "build_pseudo_labels", "plan_ise", "train_epoch", "evaluate",
           "ground_truth_labels", "write_profile", "collect_metrics"]
