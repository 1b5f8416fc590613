"""The stages of one Cluster-Contrast (+ ISE) round as plain functions: paths in, paths out.

Each stage
- computes a digest of its input files' contents and its parameters,
- returns at once when its outputs exist with the same digest (resume),
- otherwise computes, writes every output atomically, then records the digest in a sidecar
  ``<output>.stage.json`` together with the stage's seconds and peak memory.

Ground-truth identities ride along in ``images.parquet`` for evaluation only: the training stage
reads image paths, camera ids and the pseudo-labels file, never the ``pid`` column (unless the run
is explicitly ``mode="supervised"``, where the labels file is built from ground truth by
:func:`ground_truth_labels`).
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..io.atomic import read_parquet, write_parquet
from ..io.features_io import read_features, write_features
from ..profiling import profile_stage
from . import cache
from .config import RunConfig

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_id", "path", "camid", "pid", "split")


class AllOutliersWarning(UserWarning):
    """Clustering produced no cluster: the round's training is skipped."""


class LowKnnRecallWarning(UserWarning):
    """An approximate k-NN backend found too few of the true neighbours (recall@k1 < KNN_RECALL_MIN)."""


#: below this recall@k1 (against exact k-NN on a sample) the clustering stage warns
KNN_RECALL_MIN = 0.9


# ----------------------------------------------------------------------------------------------
# helpers

def _done(outputs: list[Path], digest: str, prof: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    cache.mark_done(outputs, digest, {"seconds": prof.get("seconds"), "peak_rss_mb": prof.get("peak_rss_mb"), **(extra or {})})


def _train_view(images: pd.DataFrame) -> pd.DataFrame:
    """The columns training may see: no ``pid``."""
    train = images[images["split"] == "train"]
    return train[["image_id", "path", "camid"]].reset_index(drop=True)


def _build_or_load_model(checkpoint_path: str | Path | None, cfg: RunConfig, device):
    from ..models import build_model, model_from_checkpoint

    if checkpoint_path is not None or cfg.init_checkpoint:
        path = checkpoint_path if checkpoint_path is not None else cfg.init_checkpoint
        model = model_from_checkpoint(path, device)
        _check_backbone(model, path, cfg)
        return model
    model = build_model(cfg.backbone, pretrained=cfg.pretrained)
    return model.to(device)


def _check_backbone(model, path, cfg: RunConfig) -> None:
    """A checkpoint of another backbone would run under the wrong name (and the wrong feature size)."""
    found = getattr(model, "config", {}).get("name")
    if found is not None and found != cfg.backbone:
        raise ValueError(f"{path}: checkpoint holds a {found} model, but RunConfig.backbone is {cfg.backbone}; "
                         f"set backbone={found} or use a {cfg.backbone} checkpoint")


def round_seed(cfg: RunConfig, round_idx: int) -> int:
    return int(cfg.seed) * 1000 + int(round_idx)


# ----------------------------------------------------------------------------------------------
# index

def index_images(dataset: str, data_root: str | Path, out_path: str | Path) -> Path:
    """Build ``images.parquet``. Always re-lists the data (cheap) but rewrites the file only when
    its content changed, so unchanged data keeps downstream stages cached."""
    from ..data import load_manifest, load_market1501

    out_path = Path(out_path)
    with profile_stage() as prof:
        if dataset == "synthetic":
            from ..data.synthetic import ensure_synthetic

            ensure_synthetic(data_root)
            df = load_market1501(data_root)
        elif dataset == "market1501":
            df = load_market1501(data_root)
        elif dataset == "manifest":
            df = load_manifest(data_root)
        else:
            raise ValueError(f"dataset: unknown dataset {dataset!r} (synthetic, market1501, manifest)")
        df = df[list(IMAGE_COLUMNS)].reset_index(drop=True)
        if (df["split"] == "train").sum() == 0:
            raise ValueError(f"{data_root}: no training images found")
    if out_path.exists():
        try:
            old = pd.read_parquet(out_path)[list(IMAGE_COLUMNS)]
            pd.testing.assert_frame_equal(old, df, check_dtype=False)
            same = True
        except Exception:  # unreadable or different old file: rewrite it
            same = False
        if same:
            digest = cache.stage_digest([out_path], {"stage": "index"})
            if cache.staleness([out_path], digest) is not None:  # killed before its record was written
                _done([out_path], digest, prof, {"n_images": len(df), "splits": df["split"].value_counts().to_dict()})
            return out_path
    write_parquet(df, out_path)
    digest = cache.stage_digest([out_path], {"stage": "index"})
    _done([out_path], digest, prof, {"n_images": len(df), "splits": df["split"].value_counts().to_dict()})
    return out_path


# ----------------------------------------------------------------------------------------------
# extract

class RunFolderAccessError(RuntimeError):
    """A worker cannot read or write the run folder (not on storage every worker sees)."""


def check_run_folder_access(inputs: list[str | Path | None], out_dir: str | Path) -> None:
    """Fail clearly when this process (e.g. a Dask worker on another machine) cannot read the
    stage's input files or write into ``out_dir``: run folders must sit on storage every worker sees
    at the same path (NFS, a cluster file system, a shared volume)."""
    import os
    import socket

    host = socket.gethostname()
    hint = ("put runs_dir (and data_root) on storage every worker mounts at the same path, "
            "see docs/RUNNING_ON_A_CLUSTER.md")
    for p in inputs:
        if p is not None and not os.access(p, os.R_OK):
            raise RunFolderAccessError(f"worker on host {host!r} cannot read {p}: {hint}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderAccessError(f"worker on host {host!r} cannot create {out_dir} ({exc}): {hint}") from exc
    if not os.access(out_dir, os.W_OK):
        raise RunFolderAccessError(f"worker on host {host!r} cannot write into {out_dir}: {hint}")


def shard_slice(n: int, shard: int, n_shards: int) -> slice:
    """Rows of shard ``shard`` of ``n_shards`` contiguous, near-equal shards of ``n`` rows."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard must lie in [0, {n_shards}), got {shard}")
    return slice(n * shard // n_shards, n * (shard + 1) // n_shards)


def feature_part_path(out_path: str | Path, shard: int, n_shards: int) -> Path:
    """Where shard ``shard`` of ``features.parquet`` goes: ``features.parts/part-SSSSS-of-NNNNN.parquet``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".parts") / f"part-{shard:05d}-of-{n_shards:05d}.parquet"


def extract_features_stage(images_path: str | Path, checkpoint_path: str | Path | None, cfg: RunConfig,
                           round_idx: int, out_path: str | Path, splits: tuple[str, ...] = ("train",),
                           progress: bool = True, shard: tuple[int, int] | None = None) -> Path:
    """Features of the images of ``splits`` with the model of ``checkpoint_path`` (None = initial model).

    ``shard=(s, n)``: only the s-th of n contiguous slices of those images (one part of a sharded
    extraction, resumed on its own; :func:`merge_feature_parts` joins the parts)."""
    from ..device import pick_device
    from ..features import extract_features

    out_path = Path(out_path)
    params = {"stage": "extract", **cfg.model_params(), "flip": cfg.flip, "bf16": cfg.bf16, "splits": list(splits),
              "init_checkpoint": cfg.init_checkpoint, "round": round_idx}
    if shard is not None:
        check_run_folder_access([images_path, checkpoint_path], out_path.parent)
        params["shard"] = [int(shard[0]), int(shard[1])]
    digest = cache.stage_digest([images_path, checkpoint_path, cfg.init_checkpoint if checkpoint_path is None else None], params)
    if cache.is_fresh([out_path], digest):
        return out_path
    images = read_parquet(images_path, required=IMAGE_COLUMNS)
    subset = images[images["split"].isin(splits)]
    if shard is not None:
        subset = subset.iloc[shard_slice(len(subset), int(shard[0]), int(shard[1]))]
    with profile_stage() as prof:
        device = pick_device(cfg.device)
        model = _build_or_load_model(checkpoint_path, cfg, device)
        feats = extract_features(model, subset["path"].tolist(), height=cfg.height, width=cfg.width,
                                 batch_size=cfg.extract_batch_size, device=device, flip=cfg.flip,
                                 bf16=cfg.bf16, progress=progress, decode=cfg.extract_decode,
                                 bf16_weights=cfg.extract_bf16_weights)
        write_features(out_path, subset["image_id"].to_numpy(), feats, round_idx)
    _done([out_path], digest, prof, {"n_images": len(subset), "images_per_s": len(subset) / max(prof["seconds"], 1e-9),
                                     **({"shard": int(shard[0]), "n_shards": int(shard[1])} if shard else {})})
    return out_path


def merge_feature_parts(part_paths: list[str | Path], round_idx: int, out_path: str | Path) -> Path:
    """Concatenate the parts of a sharded extraction, in shard order, into ``features.parquet``
    (same rows and order as an unsharded extraction). Skipped when the parts are unchanged."""
    out_path = Path(out_path)
    part_paths = [Path(p) for p in part_paths]
    if not part_paths:
        raise ValueError("merge_feature_parts: no parts given")
    digest = cache.stage_digest(part_paths, {"stage": "merge_features", "round": round_idx})
    if cache.is_fresh([out_path], digest):
        return out_path
    with profile_stage() as prof:
        ids, feats = zip(*(read_features(p) for p in part_paths))
        all_ids = np.concatenate(ids)
        if len(np.unique(all_ids)) != len(all_ids):
            raise ValueError(f"{out_path}: the parts {[p.name for p in part_paths]} overlap (an image_id twice)")
        write_features(out_path, all_ids, np.concatenate(feats), round_idx)
    _done([out_path], digest, prof, {"n_images": int(len(all_ids)), "n_parts": len(part_paths),
                                     "extract_seconds_per_part": [cache.read_meta(p).get("seconds") for p in part_paths]})
    return out_path


# ----------------------------------------------------------------------------------------------
# cluster

def compute_pseudo_labels(feats: np.ndarray, camids: np.ndarray | None, cfg: RunConfig,
                          progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Pseudo-labels of one round from features (+ camera ids), with every clustering lever of
    ``cfg``; returns ``(labels, info)`` where ``info`` holds the eps / k1 used and the timings.

    Levers (all label-free; each off by default):
    ``camera_norm`` removes each camera's mean feature first (:mod:`reid_core.cluster.camera`);
    ``k1_per_cluster`` sets k1 from a first clustering pass (``k1_per_cluster`` x its median
    cluster size, clipped to 10..``k1``); ``eps_rho`` sets eps from the distance distribution
    (:func:`~reid_core.cluster.pseudo_labels.eps_from_density`, at most ``EPS_RHO_MAX``; ``cfg.eps``
    is then unused); ``split_factor`` re-clusters clusters above ``split_factor`` x the median
    cluster size with a tighter eps (:func:`~reid_core.cluster.pseudo_labels.split_large_clusters`).
    """
    from ..cluster.camera import camera_normalize, has_camera_ids
    from ..cluster.jaccard import compute_jaccard_distance
    from ..cluster.pseudo_labels import cluster_features, eps_from_density, split_large_clusters

    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    x = feats
    info["camera_norm_applied"] = bool(cfg.camera_norm and has_camera_ids(camids))
    if info["camera_norm_applied"]:
        x = camera_normalize(feats, camids)
    eps = float(cfg.eps)
    # DBSCAN only looks at pairs within eps: storing the rest would cost memory for nothing
    cutoff = max(eps, EPS_RHO_MAX if cfg.eps_rho else 0.0) if cfg.cluster_method == "dbscan" else None
    k1 = int(cfg.k1)
    knn_result = None
    if cfg.knn != "exact":  # search once; measure its recall; both Jaccard passes reuse it
        from ..cluster.knn import knn_search, sampled_recall

        t_knn = time.perf_counter()
        n = len(x)
        knn_result = knn_search(x, min(max(k1, int(cfg.k2)), n), cfg.knn, search_option=dict(cfg.knn_options),
                                progress=progress, device=_knn_device(cfg))
        info["knn_seconds"] = time.perf_counter() - t_knn
        if cfg.knn_recall_sample:
            rec = sampled_recall(x, knn_result, k1, n_sample=cfg.knn_recall_sample, seed=cfg.seed)
            info["knn_recall"] = rec["recall"]
            info["knn_recall_k"] = rec["k"]
            info["knn_recall_sample"] = rec["n_sample"]
            if rec["recall"] < KNN_RECALL_MIN:
                message = (f"k-NN backend {cfg.knn!r} found only {rec['recall']:.3f} of the exact {rec['k']} nearest "
                           f"neighbours (recall@k1 on {rec['n_sample']} sampled images, want >= {KNN_RECALL_MIN}); "
                           "pseudo-labels may degrade. Widen the search (knn_options nprobe / ef_search) or use "
                           "knn='faiss' (exact).")
                log.warning(message)
                warnings.warn(message, LowKnnRecallWarning, stacklevel=2)
    # the exact backend takes its options (bf16 pre-filter: prefilter / margin / block) here
    search_option = dict(cfg.knn_options) or None
    dist = compute_jaccard_distance(x, k1=k1, k2=cfg.k2, knn=cfg.knn, max_distance=cutoff, progress=progress,
                                    knn_result=knn_result, search_option=search_option)
    if cfg.eps_rho:
        eps = eps_from_density(dist, cfg.eps_rho, eps_max=EPS_RHO_MAX)
    labels = cluster_features(dist, method=cfg.cluster_method, eps=eps, min_samples=cfg.min_samples,
                              min_cluster_size=cfg.min_samples)
    if cfg.k1_per_cluster and (labels >= 0).any():
        median = float(np.median(np.bincount(labels[labels >= 0])))
        new_k1 = int(np.clip(round(cfg.k1_per_cluster * median), min(10, k1), k1))
        if new_k1 != k1:
            k1 = new_k1
            dist = compute_jaccard_distance(x, k1=k1, k2=min(cfg.k2, k1), knn=cfg.knn, max_distance=cutoff,
                                            progress=progress, knn_result=knn_result, search_option=search_option)
            if cfg.eps_rho:
                eps = eps_from_density(dist, cfg.eps_rho, eps_max=EPS_RHO_MAX)
            labels = cluster_features(dist, method=cfg.cluster_method, eps=eps, min_samples=cfg.min_samples,
                                      min_cluster_size=cfg.min_samples)
    info["jaccard_seconds"] = time.perf_counter() - t0
    if cfg.split_factor and (labels >= 0).any():
        sizes = np.bincount(labels[labels >= 0])
        max_size = max(int(np.ceil(cfg.split_factor * np.median(sizes))), 2 * cfg.min_samples)
        info["split_max_size"] = max_size
        info["n_split"] = int((sizes > max_size).sum())
        if info["n_split"]:
            labels = split_large_clusters(dist, labels, max_size, eps=eps, min_samples=cfg.min_samples)
    info["eps_used"] = eps
    info["k1_used"] = k1
    return np.asarray(labels, dtype=np.int64), info


def _knn_device(cfg: RunConfig) -> str:
    """The device of the k-NN search: CUDA when the run is on CUDA (faiss uses it only when it was
    built with GPU support), else the CPU."""
    from ..device import pick_device

    return str(pick_device(cfg.device))


# the largest eps the density rule may choose (and the Jaccard cut-off it then needs)
EPS_RHO_MAX = 0.8


def build_pseudo_labels(features_path: str | Path, cfg: RunConfig, round_idx: int, out_path: str | Path,
                        progress: bool = True, images_path: str | Path | None = None,
                        previous_labels_path: str | Path | None = None) -> Path:
    """k-reciprocal Jaccard distance + DBSCAN/HDBSCAN -> ``pseudo_labels.parquet`` (-1 = outlier).

    ``images_path`` gives the camera ids for ``cfg.camera_norm`` (the only column read besides
    ``image_id``; identities are never read here). The labels' health (largest cluster's share,
    outliers, change against ``previous_labels_path``) goes to the sidecar, and a
    :class:`~reid_core.cluster.pseudo_labels.DegenerateClusteringWarning` is raised when it looks
    degenerate (:func:`~reid_core.cluster.pseudo_labels.clustering_health`)."""
    from ..cluster.pseudo_labels import DegenerateClusteringWarning, cluster_stats, clustering_health

    out_path = Path(out_path)
    params = {"stage": "cluster", **cfg.cluster_params(), "round": round_idx}
    digest = cache.stage_digest([features_path, images_path if cfg.camera_norm else None], params)
    if cache.is_fresh([out_path], digest):
        return out_path
    ids, feats = read_features(features_path)
    camids = None
    if cfg.camera_norm:
        if images_path is None:
            raise ValueError("build_pseudo_labels: camera_norm needs images_path (for the camera ids)")
        images = read_parquet(images_path, required=("image_id", "camid"))
        camids = images.set_index("image_id").loc[ids, "camid"].to_numpy()
    with profile_stage() as prof:
        labels, info = compute_pseudo_labels(feats, camids, cfg, progress=False)
        stats = cluster_stats(labels)
        df = pd.DataFrame({"image_id": ids, "label": labels,
                           "round": np.full(len(ids), round_idx, dtype=np.int64)})
        write_parquet(df, out_path)
    previous = None
    if previous_labels_path is not None and Path(previous_labels_path).exists():
        previous = read_parquet(previous_labels_path, required=("image_id", "label"))["label"].to_numpy()
    health = clustering_health(labels, previous)
    if stats["n_clusters"] == 0:
        warnings.warn(f"round {round_idx}: clustering found no cluster ({len(ids)} outliers, eps={info['eps_used']:.3f}); "
                      "training is skipped this round. Try a larger eps.", AllOutliersWarning, stacklevel=2)
    for message in health["warnings"]:
        log.warning("round %d pseudo-labels look degenerate: %s", round_idx, message)
        warnings.warn(f"round {round_idx}: {message}", DegenerateClusteringWarning, stacklevel=2)
    _done([out_path], digest, prof, {**{k: (int(v) if isinstance(v, (int, np.integer)) else float(v))
                                        for k, v in stats.items()}, **info,
                                     **{f"health_{k}": v for k, v in health.items()}})
    return out_path


def ground_truth_labels(images_path: str | Path, out_path: str | Path, round_idx: int = 0) -> Path:
    """Supervised mode only: labels from ground-truth pids of the train split (contiguous 0..C-1)."""
    out_path = Path(out_path)
    digest = cache.stage_digest([images_path], {"stage": "gt_labels", "round": round_idx})
    if cache.is_fresh([out_path], digest):
        return out_path
    images = read_parquet(images_path, required=IMAGE_COLUMNS)
    train = images[images["split"] == "train"]
    if (train["pid"] < 0).any():
        raise ValueError(f"{images_path}: supervised mode needs a pid for every training image; "
                         f"{int((train['pid'] < 0).sum())} have none")
    _, labels = np.unique(train["pid"].to_numpy(), return_inverse=True)
    with profile_stage() as prof:
        df = pd.DataFrame({"image_id": train["image_id"].to_numpy(), "label": labels.astype(np.int64),
                           "round": np.full(len(train), round_idx, dtype=np.int64)})
        write_parquet(df, out_path)
    _done([out_path], digest, prof, {"n_clusters": int(labels.max() + 1) if len(labels) else 0, "n_outliers": 0})
    return out_path


def _labels_and_centroids(features_path, pseudo_labels_path):
    ids, feats = read_features(features_path)
    pl = read_parquet(pseudo_labels_path, required=("image_id", "label"))
    label_of = dict(zip(pl["image_id"].to_numpy().tolist(), pl["label"].to_numpy().tolist()))
    missing = [i for i in ids[:5].tolist() if i not in label_of]
    if missing:
        raise ValueError(f"{pseudo_labels_path}: no label for image_id(s) {missing} of {features_path}")
    labels = np.array([label_of[i] for i in ids.tolist()], dtype=np.int64)
    return ids, feats, labels


def centroids_from(feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """L2-normalised mean feature of each cluster 0..C-1 (outliers ignored)."""
    keep = labels >= 0
    n_clusters = int(labels[keep].max()) + 1 if keep.any() else 0
    cent = np.zeros((n_clusters, feats.shape[1]), dtype=np.float64)
    np.add.at(cent, labels[keep], feats[keep].astype(np.float64))
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return cent.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# ISE plan

def ise_lambda_range(cfg: RunConfig, round_idx: int) -> tuple[float, float, int, int]:
    """(lambda at the round's first iteration, at its last, t0, T) for the global schedule."""
    from ..cluster.ise import lambda_schedule
    from ..train import ise_horizon

    total = ise_horizon(train_config(cfg, round_idx), max(cfg.rounds, 1))  # the T training uses
    t0 = (round_idx - 1) * cfg.iters
    t1 = round_idx * cfg.iters - 1

    def lam(t: int) -> float:
        return 0.0 if t < cfg.ise_start else lambda_schedule(min(t, total), total, cfg.ise_lambda0)

    return lam(t0), lam(t1), t0, total


def plan_ise(features_path: str | Path, pseudo_labels_path: str | Path, cfg: RunConfig, round_idx: int,
             out_path: str | Path) -> Path:
    """Per-round ISE inspection table: each cluster's nearest other clusters and the lambda range."""
    from ..cluster.ise import nearest_cluster_table

    out_path = Path(out_path)
    params = {"stage": "ise_plan", **cfg.ise_params(), "rounds": cfg.rounds, "iters": cfg.iters, "round": round_idx}
    digest = cache.stage_digest([features_path, pseudo_labels_path], params)
    if cache.is_fresh([out_path], digest):
        return out_path
    with profile_stage() as prof:
        ids, feats, labels = _labels_and_centroids(features_path, pseudo_labels_path)
        cent = centroids_from(feats, labels)
        lam0, lam1, t0, total = ise_lambda_range(cfg, round_idx)
        if len(cent) >= 2:
            table = nearest_cluster_table(feats[labels >= 0], labels[labels >= 0], cent, k=cfg.ise_k)
        else:
            table = pd.DataFrame()
        table = table.copy()
        table["round"] = round_idx
        table["lambda_start"] = lam0
        table["lambda_end"] = lam1
        write_parquet(table, out_path)
    _done([out_path], digest, prof, {"lambda_start": lam0, "lambda_end": lam1, "n_rows": len(table)})
    return out_path


# ----------------------------------------------------------------------------------------------
# train

# TrainConfig fields that a run derives instead of copying from a RunConfig field of the same name
TRAIN_CONFIG_DERIVED = {"epochs": "planned rounds (one round = one epoch)", "seed": "round_seed(seed, round)"}


def train_config_fields() -> list[str]:
    import dataclasses

    from ..train import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


def train_config(cfg: RunConfig, round_idx: int):
    """The :class:`reid_core.train.TrainConfig` of round ``round_idx`` (one round = one epoch).

    Every TrainConfig field comes from the RunConfig field of the same name, except the ones in
    ``TRAIN_CONFIG_DERIVED``: RunConfig is the one place where a run's training defaults live, and
    ``--set`` / flow ``overrides`` / deployments reach every training knob."""
    from ..train import TrainConfig

    missing = [f for f in train_config_fields() if f not in TRAIN_CONFIG_DERIVED and not hasattr(cfg, f)]
    if missing:  # a TrainConfig field was added without its RunConfig twin
        raise TypeError(f"RunConfig has no field for TrainConfig.{missing}")
    values = {f: getattr(cfg, f) for f in train_config_fields() if f not in TRAIN_CONFIG_DERIVED}
    return TrainConfig(epochs=max(cfg.rounds, 1), seed=round_seed(cfg, round_idx), **values)


def _model_for_training(checkpoint_in, cfg: RunConfig, device, num_classes: int):
    """Model of checkpoint ``checkpoint_in`` (or the initial model) and that checkpoint's dict."""
    from ..io.checkpoint import load_checkpoint
    from ..models import model_from_checkpoint

    if checkpoint_in is not None:
        model = model_from_checkpoint(checkpoint_in, device)
        _check_backbone(model, checkpoint_in, cfg)
        return model, load_checkpoint(checkpoint_in, map_location="cpu")
    if cfg.mode == "supervised":
        from ..supervised import build_supervised_model

        model = build_supervised_model(cfg.backbone, cfg.pretrained, num_classes, cfg.supervised_loss)
        if cfg.init_checkpoint:
            init = model_from_checkpoint(cfg.init_checkpoint, "cpu")
            _check_backbone(init, cfg.init_checkpoint, cfg)
            result = model.load_state_dict(init.state_dict(), strict=False)
            log.info("initialised from %s (missing %s)", cfg.init_checkpoint, result.missing_keys)
        return model.to(device), {}
    return _build_or_load_model(None, cfg, device), {}


def train_epoch_stage(images_path: str | Path, pseudo_labels_path: str | Path, features_path: str | Path | None,
                      checkpoint_in: str | Path | None, cfg: RunConfig, round_idx: int,
                      out_checkpoint: str | Path, out_log: str | Path,
                      on_progress: Callable[[float], None] | None = None, progress: bool = True) -> tuple[Path, Path]:
    """One epoch (``cfg.iters`` iterations) of round ``round_idx``; writes checkpoint r
    (model + optimizer + scheduler [+ objective]) and the per-iteration training log.

    Unsupervised: contrastive loss against a cluster memory built from this round's features and
    pseudo-labels (+ ISE, + optional metric losses on pseudo-labels). Supervised: the
    ``cfg.supervised_loss`` objective on ground-truth labels (from :func:`ground_truth_labels`).
    """
    from ..distributed import in_process_group
    from ..errors import NonFiniteLossError

    out_checkpoint, out_log = Path(out_checkpoint), Path(out_log)
    params = {"stage": "train", **cfg.train_params(), "round": round_idx, "init_checkpoint": cfg.init_checkpoint,
              "pretrained": cfg.pretrained}
    digest = cache.stage_digest([images_path, pseudo_labels_path, features_path, checkpoint_in], params)
    if cache.is_fresh([out_checkpoint, out_log], digest):
        return out_checkpoint, out_log
    if cfg.train_nproc > 1 and not in_process_group():
        run_under_torchrun(images_path, pseudo_labels_path, features_path, checkpoint_in, cfg, round_idx,
                           out_checkpoint, out_log)
        return out_checkpoint, out_log

    try:
        return _train_epoch(images_path, pseudo_labels_path, features_path, checkpoint_in, cfg, round_idx,
                            out_checkpoint, out_log, digest, on_progress, progress)
    except NonFiniteLossError as exc:
        # nothing of this round was written: the previous round's checkpoint stays the latest
        raise NonFiniteLossError(
            f"{out_checkpoint}: round {round_idx}, iteration {exc.iteration}: loss is {exc.value}; the round is "
            f"stopped and nothing written, the latest checkpoint stays {checkpoint_in or 'the initial model'} "
            f"(try a lower lr, or bf16=false)", iteration=exc.iteration, value=exc.value) from exc


def _train_epoch(images_path, pseudo_labels_path, features_path, checkpoint_in, cfg: RunConfig, round_idx: int,
                 out_checkpoint: Path, out_log: Path, digest: str, on_progress, progress: bool) -> tuple[Path, Path]:
    from ..device import pick_device, set_seed
    from ..io.checkpoint import save_checkpoint
    from ..models import model_checkpoint_state
    from ..train import (build_camera_memory, build_ise, build_memory, build_optimizer, build_scheduler,
                         set_adam_options_, train_epoch)

    from ..distributed import rank_and_world

    rank, world = rank_and_world()  # (0, 1) outside a torch.distributed group
    images = read_parquet(images_path, required=IMAGE_COLUMNS)
    train_view = _train_view(images)  # never carries pid
    pl = read_parquet(pseudo_labels_path, required=("image_id", "label"))
    with profile_stage() as prof:
        by_id = train_view.set_index("image_id")
        unknown = np.setdiff1d(pl["image_id"].to_numpy(), by_id.index.to_numpy())
        if len(unknown):
            raise ValueError(f"{pseudo_labels_path}: image_id(s) {unknown[:5].tolist()} are not training images of {images_path}")
        ids = pl["image_id"].to_numpy()
        labels = pl["label"].to_numpy().astype(np.int64)
        paths = by_id.loc[ids, "path"].tolist()
        camids = by_id.loc[ids, "camid"].to_numpy()
        keep = labels >= 0
        n_clusters = int(labels.max()) + 1 if keep.any() else 0
        device = pick_device(cfg.device)
        set_seed(round_seed(cfg, round_idx))
        tcfg = train_config(cfg, round_idx)
        model, state = _model_for_training(checkpoint_in, cfg, device, n_clusters)
        objective = None
        if cfg.mode == "supervised":
            from ..supervised import Objective, build_supervised_optimizer, train_supervised_epoch

            objective = Objective(cfg.supervised_loss, model.feat_dim, n_clusters,
                                  aligned_local_weight=cfg.aligned_local_weight,
                                  aligned_local_scale=cfg.aligned_local_scale,
                                  verification_weight=cfg.verification_weight)
            if "objective" in state:
                objective.load_state_dict(state["objective"])
            optimizer = build_supervised_optimizer(model, objective, tcfg)
        else:
            optimizer = build_optimizer(model, tcfg)
        scheduler = build_scheduler(optimizer, tcfg)
        partner = partner_scheduler = None
        if cfg.mutual_learning:
            from ..supervised import build_mutual_partner

            objective.to(device)
            partner = build_mutual_partner(model, objective, cfg.supervised_loss, n_clusters, tcfg, cfg.pretrained,
                                           cfg.backbone, init_seed=10**6 + int(cfg.seed), state=state)
            set_adam_options_(partner.optimizer, tcfg)
            partner_scheduler = build_scheduler(partner.optimizer, tcfg)
            if "partner_scheduler" in state:
                partner_scheduler.load_state_dict(state["partner_scheduler"])
                conform_schedule(partner_scheduler, tcfg)
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
            set_adam_options_(optimizer, tcfg)  # the saved param groups carry the writer's `fused` flag
        if "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
            conform_schedule(scheduler, tcfg)
        if n_clusters < 2:
            warnings.warn(f"round {round_idx}: {n_clusters} cluster(s) - nothing to contrast, training skipped",
                          AllOutliersWarning, stacklevel=2)
            log_df = pd.DataFrame({"round": pd.Series(dtype="int64"), "iteration": pd.Series(dtype="int64"),
                                   "loss": pd.Series(dtype="float64")})
        elif cfg.mode == "supervised":
            log_df = train_supervised_epoch(model, objective, paths, labels, camids, tcfg, optimizer,
                                            epoch=round_idx - 1, progress=progress, on_progress=on_progress,
                                            partner=partner)
            log_df.insert(0, "round", round_idx)
        else:
            if features_path is None:
                raise ValueError("train_epoch_stage: unsupervised training needs this round's features_path")
            fids, feats = read_features(features_path)
            row_of = pd.Series(np.arange(len(fids)), index=fids)
            feats = feats[row_of.loc[ids].to_numpy()]
            memory = build_memory(feats[keep], labels[keep], tcfg, device=device)
            camera_memory = build_camera_memory(feats[keep], labels[keep], camids[keep], tcfg, device=device)
            if tcfg.camera_proxies and camera_memory is None:
                log.warning("round %d: camera-aware proxies are on but some images have no camera id: "
                            "training without them", round_idx)
            ise = build_ise(memory, tcfg)
            extra = None
            if cfg.extra_losses:
                from ..supervised import PSEUDO_LABEL_TERMS, Objective

                bad = [t for t in cfg.extra_losses if t not in PSEUDO_LABEL_TERMS]
                if bad:
                    raise ValueError(f"RunConfig.extra_losses: {bad} cannot run on pseudo-labels; choose from {PSEUDO_LABEL_TERMS}")
                extra = Objective(cfg.extra_losses, model.feat_dim).to(device)
            log_df = train_epoch(model, [paths[i] for i in np.flatnonzero(keep)], labels[keep], camids[keep],
                                 memory, tcfg, optimizer, epoch=round_idx - 1, total_epochs=max(cfg.rounds, 1),
                                 ise=ise, progress=progress, extra_loss=extra, on_progress=on_progress,
                                 camera_memory=camera_memory)
            log_df.insert(0, "round", round_idx)
        scheduler.step()
        extras = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "round": round_idx,
                  "run_config": cfg.to_json()}
        if objective is not None:
            extras["objective"] = {k: v.detach().cpu() for k, v in objective.state_dict().items()}
        if partner is not None:
            from ..supervised import partner_state

            partner_scheduler.step()
            extras.update(partner_state(partner), partner_scheduler=partner_scheduler.state_dict())
        if rank == 0:  # every rank holds the same model and memory: one writes
            save_checkpoint(model_checkpoint_state(model, **extras), out_checkpoint)
            write_parquet(log_df, out_log)
    if rank == 0:
        _done([out_checkpoint, out_log], digest, prof, {"n_clusters": n_clusters, "n_train": int(keep.sum()),
                                                        "world_size": world, "per_device_batch": cfg.p * cfg.k,
                                                        "global_batch": cfg.p * cfg.k * world})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the outputs exist before any rank returns
    return out_checkpoint, out_log


def conform_schedule(scheduler, tcfg) -> bool:
    """Make a StepLR loaded from a checkpoint follow this run's schedule (``lr``, ``step_size``,
    ``gamma``) at the epoch it has reached; returns whether anything changed.

    A checkpoint carries the schedule of the run that wrote it. That is this run's own schedule
    except in a fork (:mod:`reid_core.pipeline.fork`) whose ablation is the schedule itself; then the
    learning rate is set to ``lr x gamma ** (epoch // step_size)``. When the schedule already
    matches, nothing is touched, so a resumed run keeps its learning rate to the last bit."""
    same = (scheduler.step_size == tcfg.step_size and scheduler.gamma == tcfg.gamma
            and all(b == tcfg.lr for b in scheduler.base_lrs))
    if same:
        return False
    scheduler.step_size, scheduler.gamma = int(tcfg.step_size), float(tcfg.gamma)
    scheduler.base_lrs = [float(tcfg.lr)] * len(scheduler.optimizer.param_groups)
    lr = float(tcfg.lr) * float(tcfg.gamma) ** (scheduler.last_epoch // int(tcfg.step_size))
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = float(tcfg.lr)
        group["lr"] = lr
    scheduler._last_lr = [lr] * len(scheduler.optimizer.param_groups)
    log.info("learning-rate schedule from the checkpoint replaced by this run's: lr %g at epoch %d "
             "(step %d, gamma %g)", lr, scheduler.last_epoch, tcfg.step_size, tcfg.gamma)
    return True


def torchrun_command(images_path, pseudo_labels_path, features_path, checkpoint_in, config_path: str | Path,
                     round_idx: int, out_checkpoint, out_log, nproc: int) -> list[str]:
    """The ``torchrun`` command line of a DDP training stage on this node (``nproc`` ranks)."""
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
           "-m", "reid_core.pipeline.ddp", "--config", str(config_path), "--round", str(int(round_idx)),
           "--images", str(images_path), "--labels", str(pseudo_labels_path), "--out-checkpoint", str(out_checkpoint),
           "--out-log", str(out_log)]
    if features_path is not None:
        cmd += ["--features", str(features_path)]
    if checkpoint_in is not None:
        cmd += ["--checkpoint-in", str(checkpoint_in)]
    return cmd


def run_under_torchrun(images_path, pseudo_labels_path, features_path, checkpoint_in, cfg: RunConfig,
                       round_idx: int, out_checkpoint: Path, out_log: Path) -> None:
    """Run the training stage as ``cfg.train_nproc`` DDP ranks with ``torchrun`` and wait for it;
    rank 0 writes the outputs and their sidecar (same digest as a one-process stage would check)."""
    import subprocess

    from ..io.atomic import atomic_path

    config_path = Path(out_checkpoint).with_name(Path(out_checkpoint).stem + ".ddp_config.json")
    with atomic_path(config_path) as tmp:
        tmp.write_text(cfg.to_json())
    cmd = torchrun_command(images_path, pseudo_labels_path, features_path, checkpoint_in, config_path, round_idx,
                           out_checkpoint, out_log, cfg.train_nproc)
    log.info("round %d: training on %d DDP ranks: %s", round_idx, cfg.train_nproc, " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"round {round_idx}: DDP training (torchrun, {cfg.train_nproc} ranks) failed with exit "
                           f"code {done.returncode}; command: {' '.join(cmd)}")


# ----------------------------------------------------------------------------------------------
# evaluate

def evaluate_stage(images_path: str | Path, checkpoint_path: str | Path | None, cfg: RunConfig, round_idx: int,
                   out_path: str | Path, pseudo_labels_path: str | Path | None = None,
                   extra: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Retrieval metrics on query/gallery (+ pseudo-label quality) -> one-row ``metrics.parquet``."""
    from ..device import pick_device
    from ..evaluation import evaluate_features, pseudo_label_quality
    from ..features import extract_features

    out_path = Path(out_path)
    params = {"stage": "evaluate", **cfg.model_params(), "flip": cfg.flip, "bf16": cfg.bf16, "rerank": cfg.rerank,
              "round": round_idx,
              "init_checkpoint": cfg.init_checkpoint, "extra": extra or {}}
    digest = cache.stage_digest([images_path, checkpoint_path, pseudo_labels_path], params)
    if cache.is_fresh([out_path], digest):
        return out_path
    images = read_parquet(images_path, required=IMAGE_COLUMNS)
    query = images[images["split"] == "query"]
    gallery = images[images["split"] == "gallery"]
    row: dict[str, Any] = {"round": round_idx, "method": method_name(cfg), "seed": cfg.seed}
    with profile_stage() as prof:
        if len(query) == 0 or len(gallery) == 0:
            raise ValueError(f"{images_path}: evaluation needs query and gallery images "
                             f"(found {len(query)} query, {len(gallery)} gallery)")
        device = pick_device(cfg.device)
        model = _build_or_load_model(checkpoint_path, cfg, device)
        both = pd.concat([query, gallery])
        t0 = time.perf_counter()
        feats = extract_features(model, both["path"].tolist(), height=cfg.height, width=cfg.width,
                                 batch_size=cfg.extract_batch_size, device=device, flip=cfg.flip, bf16=cfg.bf16,
                                 progress=progress, decode=cfg.extract_decode,
                                 bf16_weights=cfg.extract_bf16_weights)
        row["eval_extract_seconds"] = time.perf_counter() - t0
        nq = len(query)
        res = evaluate_features(feats[:nq], feats[nq:], query["pid"].to_numpy(), gallery["pid"].to_numpy(),
                                query["camid"].to_numpy(), gallery["camid"].to_numpy(), rerank=cfg.rerank)
        for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
            row[key] = float(res[key])
        row["n_queries"] = int(res.get("n_queries", nq))
        row["n_skipped_queries"] = int(res.get("n_skipped", 0))
        if pseudo_labels_path is not None:
            pl = read_parquet(pseudo_labels_path, required=("image_id", "label"))
            gt = images.set_index("image_id").loc[pl["image_id"].to_numpy(), "pid"].to_numpy()
            if (gt >= 0).all():
                q = pseudo_label_quality(pl["label"].to_numpy(), gt)
                for key in ("nmi", "ari", "pair_precision", "pair_recall", "pair_f"):
                    row[key] = float(q[key]) if q.get(key) is not None else math.nan
            labels = pl["label"].to_numpy()
            row["n_clusters"] = int(len(np.unique(labels[labels >= 0])))
            row["n_outliers"] = int((labels < 0).sum())
        for key, value in (extra or {}).items():
            row[key] = value
    row["evaluate_seconds"] = prof["seconds"]
    df = pd.DataFrame([row])
    write_parquet(df, out_path)
    _done([out_path], digest, prof)
    return out_path


def method_name(cfg: RunConfig) -> str:
    if cfg.mode == "supervised":
        return "supervised"
    if cfg.rounds == 0:
        return "imagenet"
    if not cfg.use_ise:
        return "cluster_contrast"
    if cfg.ise_interp and cfg.ise_lp:
        return "cluster_contrast+ise"
    return "cluster_contrast+ise_interp" if cfg.ise_interp else "cluster_contrast+ise_lp"


def stage_profile(paths: dict[str, Path | None]) -> pd.DataFrame:
    """Seconds and peak memory of each stage, read back from the sidecars."""
    rows = []
    for stage, path in paths.items():
        if path is None:
            continue
        meta = cache.read_meta(path)
        rows.append({"stage": stage, "seconds": meta.get("seconds"), "peak_rss_mb": meta.get("peak_rss_mb")})
    return pd.DataFrame(rows)
