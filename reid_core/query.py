"""Search a gallery with query images using a trained model (``reid query``).

* **Model**: a checkpoint file, a run folder (its last ``round_NNN/checkpoint.pt``; input size
  from its ``config.json``) or nothing (the backbone's ImageNet weights).
* **Gallery**: a Market-1501-style root (its ``bounding_box_test`` split), a manifest
  (CSV / TSV / Parquet; the ``gallery`` rows when the column ``split`` has any, else every row) or
  any folder of images (searched recursively). Identities come from the manifest's ``pid`` or from
  Market-style file names (``0002_c1s1_000451_03.jpg``); otherwise they are unknown.
* **Queries**: image files or folders (a Market root contributes its ``query`` split).
* **Gallery feature cache**: ``<cache_dir>/gallery-<key>.parquet``, the key being a SHA-256 of the
  gallery images' *contents* (in gallery order), the model (checkpoint file contents, or the state
  of the built backbone) and the extraction settings. A second query against the same gallery and
  model reads the features instead of extracting them again; any changed image or model misses.
* **Ranking**: cosine distance (``1 - cos``), ties broken by gallery order; optionally k-reciprocal
  re-ranking (:func:`reid_core.evaluation.rerank.re_ranking`). No camera filtering: this is a
  search, not the benchmark protocol.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .io.atomic import write_parquet
from .io.hashing import file_digest

log = logging.getLogger(__name__)

__all__ = ["ModelSource", "resolve_model", "load_model", "load_gallery", "list_queries", "gallery_features",
           "rank_gallery", "run_query", "QueryResult", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
_ROUND_DIR = re.compile(r"^round_(\d{3,})$")


# ----------------------------------------------------------------------------------------------- model

@dataclass
class ModelSource:
    """Where the model comes from and the input size it expects."""

    checkpoint: Path | None
    backbone: str
    height: int
    width: int
    run_dir: Path | None = None


def _last_checkpoint(run_dir: Path) -> Path:
    rounds = sorted((int(m.group(1)), d) for d in run_dir.iterdir()
                    if d.is_dir() and (m := _ROUND_DIR.match(d.name)) and (d / "checkpoint.pt").is_file())
    if not rounds:
        raise FileNotFoundError(f"{run_dir}: run folder has no round_NNN/checkpoint.pt (has the run trained a round?)")
    return rounds[-1][1] / "checkpoint.pt"


def _checkpoint_backbone(path: Path) -> tuple[str, dict[str, Any]]:
    from .io.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or "name" not in ckpt["config"]:
        raise ValueError(f"{path}: not a model checkpoint of this project (no 'config' with the backbone name)")
    run_cfg: dict[str, Any] = {}
    if isinstance(ckpt.get("run_config"), str):
        try:
            run_cfg = json.loads(ckpt["run_config"])
        except ValueError:
            run_cfg = {}
    return str(ckpt["config"]["name"]), run_cfg


def resolve_model(source: str | os.PathLike | None, backbone: str | None = None, height: int | None = None,
                  width: int | None = None) -> ModelSource:
    """Resolve ``source`` (checkpoint file, run folder or None = ImageNet backbone) to a :class:`ModelSource`.

    ``backbone`` given together with a checkpoint must match the checkpoint's backbone, else
    ``ValueError`` naming the file and both backbones. ``height``/``width`` override the input size
    recorded with the run (default 128 x 64).
    """
    from .models import BACKBONES

    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"backbone: {backbone!r} is not one of {BACKBONES}")
    run_dir = None
    run_cfg: dict[str, Any] = {}
    if source is None:
        ckpt = None
        found = backbone or "mobilenet_v2"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            run_dir = path
            ckpt = _last_checkpoint(path)
            if (path / "config.json").is_file():
                try:
                    run_cfg = json.loads((path / "config.json").read_text())
                except ValueError as exc:
                    raise ValueError(f"{path / 'config.json'}: not valid JSON ({exc})") from exc
        elif path.is_file():
            ckpt = path
        else:
            raise FileNotFoundError(f"{path}: neither a checkpoint file nor a run folder")
        found, ckpt_run_cfg = _checkpoint_backbone(ckpt)
        run_cfg = run_cfg or ckpt_run_cfg
        if backbone is not None and backbone != found:
            raise ValueError(f"{ckpt}: checkpoint holds a {found} model, but backbone {backbone} was asked for; "
                             f"drop --backbone or pass a {backbone} checkpoint")
        if run_cfg.get("backbone") not in (None, found):
            raise ValueError(f"{ckpt}: checkpoint holds a {found} model, but its run's config says "
                             f"backbone {run_cfg['backbone']!r}")
    h = int(height or run_cfg.get("height") or 128)
    w = int(width or run_cfg.get("width") or 64)
    if h <= 0 or w <= 0:
        raise ValueError(f"height and width must be > 0, got {h}x{w}")
    return ModelSource(checkpoint=ckpt, backbone=found, height=h, width=w, run_dir=run_dir)


def load_model(src: ModelSource):
    """The model of ``src`` on the run-time device (CUDA when present, else CPU), in eval mode
    (checkpoints load with ``weights_only=True``)."""
    from .device import pick_device
    from .models import build_model, model_from_checkpoint

    device = pick_device("auto")
    if src.checkpoint is not None:
        return model_from_checkpoint(src.checkpoint, device)
    return build_model(src.backbone, pretrained=True).to(device).eval()


def model_digest(src: ModelSource, model) -> str:
    """Content key of the model: the checkpoint file's bytes, or the built model's state."""
    if src.checkpoint is not None:
        return "ckpt:" + file_digest(src.checkpoint)
    h = hashlib.sha256(src.backbone.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "state:" + h.hexdigest()


# ----------------------------------------------------------------------------------------------- images

def _market_pid_cam(path: str) -> tuple[int, int]:
    from .data.market import parse_market_name

    try:
        return parse_market_name(path)
    except ValueError:
        return -1, -1


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _folder_table(files: list[Path]) -> pd.DataFrame:
    parsed = [_market_pid_cam(str(p)) for p in files]
    return pd.DataFrame({"path": [str(p) for p in files],
                         "pid": np.array([p for p, _ in parsed], dtype=np.int64),
                         "camid": np.array([c for _, c in parsed], dtype=np.int64)})


def _market_root(folder: Path, split_folder: str) -> bool:
    if (folder / split_folder).is_dir():
        return True
    subs = [d for d in folder.iterdir() if d.is_dir()]
    return len(subs) == 1 and (subs[0] / split_folder).is_dir()


def load_gallery(source: str | os.PathLike) -> pd.DataFrame:
    """Gallery table (``path, pid, camid``; -1 = unknown) from a Market root, a manifest or a folder."""
    from .data import load_manifest, load_market1501

    src = Path(source).expanduser()
    if src.is_file():
        if src.suffix.lower() not in MANIFEST_SUFFIXES:
            raise ValueError(f"{src}: a gallery is a folder or a manifest ({', '.join(MANIFEST_SUFFIXES)}), "
                             f"not a '{src.suffix}' file")
        df = load_manifest(src)
        if (df["split"] == "gallery").any():
            df = df[df["split"] == "gallery"]
        df = df[["path", "pid", "camid"]]
    elif src.is_dir():
        if _market_root(src, "bounding_box_test"):
            df = load_market1501(src, splits=("gallery",))[["path", "pid", "camid"]]
        else:
            df = _folder_table(_image_files(src))
    else:
        raise FileNotFoundError(f"{src}: gallery folder or manifest does not exist")
    if len(df) == 0:
        raise ValueError(f"{src}: the gallery holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return df.reset_index(drop=True)


def list_queries(sources: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Query table (``path, pid, camid``) from image files and folders (a Market root gives its query split)."""
    from .data import load_market1501

    if not sources:
        raise ValueError("no query image given")
    frames = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_file():
            frames.append(_folder_table([p]))
        elif p.is_dir():
            if _market_root(p, "query"):
                frames.append(load_market1501(p, splits=("query",))[["path", "pid", "camid"]])
            else:
                files = _image_files(p)
                if not files:
                    raise ValueError(f"{p}: query folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
                frames.append(_folder_table(files))
        else:
            raise FileNotFoundError(f"{p}: query image or folder does not exist")
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------- features

def _extract(model, paths: list[str], src: ModelSource, batch_size: int, flip: bool, bf16: Any,
             progress: bool) -> np.ndarray:
    from .features import extract_features

    return extract_features(model, paths, height=src.height, width=src.width, batch_size=batch_size,
                            device=next(model.parameters()).device,
                            flip=flip, bf16=bf16, progress=progress)


def gallery_cache_key(gallery: pd.DataFrame, model_key: str, src: ModelSource, flip: bool, bf16: Any) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_key, "height": src.height, "width": src.width, "flip": bool(flip),
                         "bf16": str(bf16)}, sort_keys=True).encode())
    for path in gallery["path"]:
        try:
            h.update(file_digest(path).encode())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path}: gallery image does not exist") from exc
    return h.hexdigest()


def gallery_features(model, gallery: pd.DataFrame, src: ModelSource, cache_dir: str | os.PathLike | None,
                     model_key: str, batch_size: int = 128, flip: bool = False, bf16: Any = False,
                     progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of the gallery, read from / written to the Parquet cache. Returns ``(features, info)``."""
    from .io.features_io import read_features, write_features

    info: dict[str, Any] = {"cache_hit": False, "cache_file": None}
    if cache_dir is None:
        return _extract(model, gallery["path"].tolist(), src, batch_size, flip, bf16, progress), info
    t0 = time.perf_counter()
    key = gallery_cache_key(gallery, model_key, src, flip, bf16)
    info["hash_seconds"] = time.perf_counter() - t0
    cache_file = Path(cache_dir) / f"gallery-{key[:24]}.parquet"
    info["cache_file"] = str(cache_file)
    if cache_file.is_file():
        try:
            ids, feats = read_features(cache_file)
            if len(ids) == len(gallery) and np.array_equal(ids, np.arange(len(gallery))):
                info["cache_hit"] = True
                return np.array(feats, dtype=np.float32), info  # writable copy (Arrow buffers are read-only)
            log.warning("%s: cached gallery features do not fit the gallery; extracting again", cache_file)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable cache (%s); extracting again", cache_file, exc)
    feats = _extract(model, gallery["path"].tolist(), src, batch_size, flip, bf16, progress)
    write_features(cache_file, np.arange(len(gallery)), feats, 0)
    return feats, info


# ----------------------------------------------------------------------------------------------- ranking

def rank_gallery(q_feat: np.ndarray, g_feat: np.ndarray, top_k: int, rerank: bool = False,
                 rerank_params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(order, distance)``, both (Nq, k): gallery indices best first and their distances.

    Cosine distance ``1 - cos`` (or the re-ranked distance); ties go to the lower gallery index.
    """
    from .evaluation.ranking import distance_matrix, stable_rank_order

    if len(g_feat) == 0:
        raise ValueError("the gallery holds no images")
    if rerank:
        from .evaluation.rerank import re_ranking

        params = {"k1": 20, "k2": 6, "lambda_value": 0.3, **(rerank_params or {})}
        dist = re_ranking(q_feat, g_feat, **params)
    else:
        dist = distance_matrix(q_feat, g_feat, metric="cosine", device="cpu")
    k = min(int(top_k), dist.shape[1])
    order = stable_rank_order(np.ascontiguousarray(dist, dtype=np.float32))[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@dataclass
class QueryResult:
    table: pd.DataFrame
    out_path: Path
    png_path: Path | None
    info: dict[str, Any] = field(default_factory=dict)


def _nullable_pid(values: np.ndarray) -> pd.Series:
    s = pd.Series(np.asarray(values, dtype=np.int64)).astype("Int64")
    return s.where(s >= 0, pd.NA)


def run_query(queries: Sequence[str | os.PathLike], gallery: str | os.PathLike, out_path: str | os.PathLike,
              model: str | os.PathLike | None = None, backbone: str | None = None, top_k: int = 10,
              rerank: bool = False, cache_dir: str | os.PathLike | None = "data/cache", png_path: str | os.PathLike | None = "auto",
              max_png_rows: int = 20, height: int | None = None, width: int | None = None, flip: bool = False,
              bf16: Any = False, batch_size: int = 128, progress: bool = False) -> QueryResult:
    """Top-``top_k`` gallery matches of every query -> Parquet ``out_path`` (+ a ranked-list PNG).

    Parquet columns: ``query`` (0-based query index), ``query_path``, ``query_pid``, ``rank``
    (1-based), ``gallery_path``, ``gallery_pid``, ``distance``, ``match`` (same identity; null when
    either identity is unknown). ``png_path="auto"`` writes ``<out_path>.png`` beside the Parquet
    file, ``None`` skips the picture (only the first ``max_png_rows`` queries are drawn).
    """
    from .evaluation.ranked_lists import RankedList, as_pid, draw_ranked_lists

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    t_start = time.perf_counter()
    src = resolve_model(model, backbone=backbone, height=height, width=width)
    gal = load_gallery(gallery)
    qry = list_queries(queries)
    net = load_model(src)
    g_feat, info = gallery_features(net, gal, src, cache_dir, model_digest(src, net) if cache_dir else "",
                                    batch_size=batch_size, flip=flip, bf16=bf16, progress=progress)
    t_q = time.perf_counter()
    q_feat = _extract(net, qry["path"].tolist(), src, batch_size, flip, bf16, progress)
    order, dist = rank_gallery(q_feat, g_feat, top_k, rerank=rerank)
    info["query_seconds"] = time.perf_counter() - t_q
    nq, k = order.shape
    flat = order.reshape(-1)
    q_idx = np.repeat(np.arange(nq), k)
    q_pid = _nullable_pid(qry["pid"].to_numpy()[q_idx])
    g_pid = _nullable_pid(gal["pid"].to_numpy()[flat])
    match = (q_pid == g_pid).astype("boolean")
    table = pd.DataFrame({
        "query": q_idx.astype(np.int64),
        "query_path": qry["path"].to_numpy()[q_idx],
        "query_pid": q_pid,
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), nq),
        "gallery_path": gal["path"].to_numpy()[flat],
        "gallery_pid": g_pid,
        "distance": dist.reshape(-1).astype(np.float64),
        "match": match,
    })
    out_path = Path(out_path)
    write_parquet(table, out_path)
    png = None
    if png_path is not None:
        png = out_path.with_suffix(".png") if png_path == "auto" else Path(png_path)
        lists = [RankedList(query_path=str(qry["path"].iloc[i]), query_pid=as_pid(qry["pid"].iloc[i]),
                            gallery_paths=[str(p) for p in gal["path"].to_numpy()[order[i]]],
                            gallery_pids=[as_pid(v) for v in gal["pid"].to_numpy()[order[i]]],
                            distances=dist[i].tolist()) for i in range(min(nq, max_png_rows))]
        draw_ranked_lists(lists, png, thumb_height=128, thumb_width=64)
    info.update({"n_queries": nq, "n_gallery": len(gal), "top_k": k, "rerank": bool(rerank),
                 "backbone": src.backbone, "checkpoint": str(src.checkpoint) if src.checkpoint else None,
                 "input_size": f"{src.height}x{src.width}", "seconds": time.perf_counter() - t_start})
    known = table["match"].notna()
    if known.any():
        first = table[table["rank"] == 1]
        if first["match"].notna().any():
            info["rank1_of_known"] = float(first["match"].dropna().astype(bool).mean())
    return QueryResult(table=table, out_path=out_path, png_path=png, info=info)
