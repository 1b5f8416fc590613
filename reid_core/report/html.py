"""Build ``<run>/report.html``: how a run went, on one page that needs nothing but the file itself.

Sections, all read from the run folder's Parquet files (nothing is recomputed except where said):

1. metrics per round (mAP, rank-1, ARI, clusters: plot + table);
2. clustering per round: cluster-size histograms and outliers (``round_NNN/pseudo_labels.parquet``);
3. training loss per iteration (``train_log.parquet``);
4. the ISE plan summary per round (``ise_plan.parquet``; absent when ISE was off);
5. a 2-D t-SNE embedding of the last round's training features coloured by pseudo-label (and by
   ground-truth identity where known) - computed here, on at most ``max_embed_points`` images;
6. ranked lists of the best and worst queries by AP under the evaluation protocol - the query and
   gallery features of the last checkpoint are extracted here (a few seconds at 128 x 64);
7. configuration (``config.json``) and library versions (recorded with the metrics, and now).

Images are PNG inside ``data:`` URIs and the CSS is inline: no script, no external request, so the
page opens the same from a laptop, a CI artifact or a Prefect link.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import atomic_path

__all__ = ["build_report", "report_summary"]

_METRIC_COLS = ("round", "mAP", "rank1", "rank5", "mINP", "nmi", "ari", "pair_precision", "n_clusters",
                "n_outliers", "elapsed_seconds")
_PCT = {"mAP", "rank1", "rank5", "rank10", "mINP"}
#: tab20 without its two greys (grey is for outliers)
_PALETTE = np.array(["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
                     "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#bcbd22", "#dbdb8d",
                     "#17becf", "#9edae5"])


# ------------------------------------------------------------------------------------------- helpers

def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_bytes(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] | None = None):
    fig = Figure(figsize=size or (4.8 * ncols, 3.4 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{uri}">'


def _fmt(value: Any, col: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        if col in _PCT:
            return f"{100 * float(value):.1f}"
        return f"{float(value):.3f}" if abs(float(value)) < 100 else f"{float(value):.0f}"
    return html.escape(str(value))


def _table(df: pd.DataFrame, caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}{' %' if c in _PCT else ''}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(v, c)}</td>" for c, v in zip(df.columns, r)) + "</tr>"
                   for r in df.itertuples(index=False))
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _rounds(run_dir: Path) -> list[int]:
    out = []
    for d in run_dir.iterdir():
        if d.is_dir() and d.name.startswith("round_") and d.name[6:].isdigit():
            out.append(int(d.name[6:]))
    return sorted(out)


def _round_file(run_dir: Path, r: int, name: str) -> Path:
    return run_dir / f"round_{r:03d}" / name


def _read_metrics(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "metrics.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    frames = [pd.read_parquet(_round_file(run_dir, r, "metrics.parquet")) for r in _rounds(run_dir)
              if _round_file(run_dir, r, "metrics.parquet").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------------------- sections

def _metrics_section(metrics: pd.DataFrame) -> str:
    from ..evaluation.plots import plot_metrics_over_rounds

    if metrics.empty:
        return "<p>No metrics yet (no round has been evaluated).</p>"
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_metrics_over_rounds(metrics, Path(tmp) / "m.png").read_bytes()
    cols = [c for c in _METRIC_COLS if c in metrics.columns]
    return _img(_png_uri(png), "mAP, rank-1, ARI and clusters per round") + _table(
        metrics[cols].sort_values("round"), "Retrieval metrics in % (query/gallery); pseudo-label quality as fractions")


def _cluster_section(run_dir: Path, rounds: list[int], max_panels: int = 6) -> tuple[str, pd.DataFrame]:
    rows, sizes = [], {}
    for r in rounds:
        path = _round_file(run_dir, r, "pseudo_labels.parquet")
        if not path.is_file():
            continue
        labels = pd.read_parquet(path, columns=["label"])["label"].to_numpy()
        counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
        counts = counts[counts > 0]
        sizes[r] = counts
        rows.append({"round": r, "images": len(labels), "clusters": len(counts), "outliers": int((labels < 0).sum()),
                     "outlier_fraction": float((labels < 0).mean()) if len(labels) else np.nan,
                     "largest": int(counts.max()) if len(counts) else 0,
                     "median_size": float(np.median(counts)) if len(counts) else np.nan,
                     "singleton_like (<=2)": int((counts <= 2).sum())})
    table = pd.DataFrame(rows)
    if table.empty:
        return "<p>No pseudo-labels in this run (supervised runs train on ground truth).</p>", table
    shown = list(sizes)
    if len(shown) > max_panels:  # evenly spaced rounds, always the first and the last
        shown = [shown[i] for i in np.unique(np.linspace(0, len(shown) - 1, max_panels).round().astype(int))]
    ncols = min(3, len(shown))
    nrows = (len(shown) + ncols - 1) // ncols
    fig, axes = _figure(ncols, nrows, size=(4.2 * ncols, 3.0 * nrows))
    top = max(int(c.max()) for c in sizes.values() if len(c)) if any(len(c) for c in sizes.values()) else 1
    bins = np.unique(np.geomspace(1, max(top, 2) + 1, 20).astype(int))
    for ax, r in zip(axes.ravel(), shown):
        c = sizes[r]
        if len(c):
            ax.hist(c, bins=bins, color="#2563eb", edgecolor="white")
            ax.set_xscale("log")
        outl = table.loc[table["round"] == r, "outliers"].iloc[0]
        ax.set_title(f"round {r}: {len(c)} clusters, {outl} outliers", fontsize=9)
        ax.set_xlabel("cluster size (images)")
        ax.set_ylabel("clusters")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(shown):]:
        ax.set_visible(False)
    hist = _fig_bytes(fig)
    fig, axes = _figure(size=(5.0, 3.0))
    ax = axes[0, 0]
    ax.bar(table["round"], table["outliers"], color="#9ca3af")
    ax.set_xlabel("round")
    ax.set_ylabel("outliers (grey bars)")
    ax.set_xticks(table["round"].to_numpy())
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(table["round"], table["clusters"], color="#dc2626", marker="o")
    ax2.set_ylabel("clusters (red line)", color="#dc2626")
    ax2.set_ylim(bottom=0)
    counts_png = _fig_bytes(fig)
    body = (_img(_png_uri(hist), "cluster-size histograms per round") +
            _img(_png_uri(counts_png), "outliers and clusters per round") + _table(table))
    return body, table


def _train_section(run_dir: Path, rounds: list[int]) -> str:
    frames = []
    for r in rounds:
        path = _round_file(run_dir, r, "train_log.parquet")
        if path.is_file():
            df = pd.read_parquet(path)
            if len(df) and "loss" in df.columns:
                frames.append(df.assign(round=r))
    if not frames:
        return "<p>No training log.</p>"
    log = pd.concat(frames, ignore_index=True)
    log["step"] = np.arange(len(log))
    fig, axes = _figure(size=(6.0, 3.0))
    ax = axes[0, 0]
    ax.plot(log["step"], log["loss"], color="#111827", lw=1, label="loss")
    for col, colour in (("loss_memory", "#2563eb"), ("loss_lp", "#dc2626")):
        if col in log.columns and log[col].notna().any():
            ax.plot(log["step"], log[col], color=colour, lw=1, label=col)
    for r, sub in log.groupby("round"):
        ax.axvline(sub["step"].iloc[0], color="#d1d5db", lw=0.8)
    ax.set_xlabel("iteration (all rounds; grey lines = round starts)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    agg = {"iterations": ("loss", "size"), "mean_loss": ("loss", "mean")}
    if "images_per_s" in log.columns:
        agg["images_per_s"] = ("images_per_s", "mean")
    if "mean_cos_support" in log.columns:
        agg["mean_cos_support"] = ("mean_cos_support", "mean")
    table = log.groupby("round").agg(**agg).reset_index()
    return _img(_png_uri(_fig_bytes(fig)), "training loss per iteration") + _table(table)


def _ise_section(run_dir: Path, rounds: list[int]) -> str:
    rows = []
    for r in rounds:
        path = _round_file(run_dir, r, "ise_plan.parquet")
        if not path.is_file():
            continue
        plan = pd.read_parquet(path)
        if plan.empty or "label" not in plan.columns:
            rows.append({"round": r, "clusters": 0})
            continue
        w = plan["n_samples"].to_numpy(dtype=np.float64)
        rows.append({
            "round": r,
            "clusters": int(plan["label"].nunique()),
            "pairs": len(plan),
            "neighbours per cluster": len(plan) / max(plan["label"].nunique(), 1),
            "pushed to nearest centroid": float(w[plan["centroid_rank"].to_numpy() == 1].sum() / max(w.sum(), 1)),
            "mean centroid cosine": float(np.average(plan["centroid_cosine"], weights=w)),
            "mean sample-to-neighbour cosine": float(np.average(plan["mean_sample_cosine"], weights=w)),
            "lambda start": float(plan["lambda_start"].iloc[0]),
            "lambda end": float(plan["lambda_end"].iloc[0]),
        })
    if not rows:
        return "<p>ISE was off in this run (no <code>ise_plan.parquet</code>).</p>"
    return ("<p>Per round: towards which neighbouring clusters ISE moves each cluster's support samples "
            "(weighted by samples). <em>pushed to nearest centroid</em> = share of samples whose chosen "
            "neighbour is their cluster centroid's nearest other centroid.</p>" + _table(pd.DataFrame(rows)))


def _embedding_section(run_dir: Path, rounds: list[int], images: pd.DataFrame | None, max_points: int,
                       seed: int) -> str:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from ..io.features_io import read_features

    last = [r for r in rounds if _round_file(run_dir, r, "features.parquet").is_file()
            and _round_file(run_dir, r, "pseudo_labels.parquet").is_file()]
    if not last:
        return "<p>No training features in this run (supervised runs do not cluster).</p>"
    r = last[-1]
    ids, feats = read_features(_round_file(run_dir, r, "features.parquet"))
    pl = pd.read_parquet(_round_file(run_dir, r, "pseudo_labels.parquet")).set_index("image_id")["label"]
    labels = pl.reindex(ids).fillna(-1).to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(max_points, len(ids)), replace=False))
    x = feats[pick].astype(np.float32)
    if len(x) < 5:
        return "<p>Too few training images for an embedding.</p>"
    t0 = time.perf_counter()
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed,
              max_iter=750).fit_transform(x)
    seconds = time.perf_counter() - t0
    panels = [("pseudo-label", labels[pick])]
    if images is not None and "pid" in images.columns:
        pid = images.set_index("image_id")["pid"].reindex(ids[pick]).fillna(-1).to_numpy(dtype=np.int64)
        if (pid >= 0).all():
            _, pid = np.unique(pid, return_inverse=True)
            panels.append(("ground-truth identity (never seen by training)", pid))
    fig, axes = _figure(len(panels), 1, size=(5.2 * len(panels), 4.6))
    for ax, (title, lab) in zip(axes.ravel(), panels):
        out = lab < 0
        ax.scatter(xy[out, 0], xy[out, 1], s=4, c="#d1d5db", label="outlier" if out.any() else None)
        ax.scatter(xy[~out, 0], xy[~out, 1], s=5, c=_PALETTE[np.asarray(lab[~out]) % len(_PALETTE)])
        n_groups = len(np.unique(lab[~out]))
        ax.set_title(f"coloured by {title} ({n_groups} groups)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if out.any():
            ax.legend(fontsize=8, loc="lower right")
    return (_img(_png_uri(_fig_bytes(fig)), "t-SNE of training features") +
            f"<p>Round {r} training features (extracted with round {r - 1}'s model, the ones clustered in round "
            f"{r}), {len(pick)} of {len(ids)} images, PCA to 50-d then t-SNE ({seconds:.1f} s). "
            "Colours repeat every 18 groups; grey = outliers.</p>")


def _ranked_section(run_dir: Path, cfg: dict[str, Any], rounds: list[int], images: pd.DataFrame | None,
                    n_show: int, top_k: int, progress: bool) -> str:
    from ..evaluation import distance_matrix, evaluate_rank
    from ..evaluation.ranked_lists import RankedList, as_pid, draw_ranked_lists
    from ..device import pick_device
    from ..features import extract_features
    from ..pipeline.config import RunConfig
    from ..pipeline.stages import _build_or_load_model

    if images is None:
        return "<p>No <code>images.parquet</code>.</p>"
    query = images[images["split"] == "query"].reset_index(drop=True)
    gallery = images[images["split"] == "gallery"].reset_index(drop=True)
    if query.empty or gallery.empty:
        return "<p>No query/gallery split in this run's data.</p>"
    missing = [p for p in pd.concat([query["path"].head(3), gallery["path"].head(3)]) if not os.path.isfile(p)]
    if missing:
        return f"<p>Ranked lists skipped: the run's images are not at their recorded paths (e.g. <code>{html.escape(missing[0])}</code>).</p>"
    ckpts = [r for r in rounds if _round_file(run_dir, r, "checkpoint.pt").is_file()]
    ckpt = _round_file(run_dir, ckpts[-1], "checkpoint.pt") if ckpts else None
    run_cfg = RunConfig.from_dict({k: v for k, v in cfg.items() if k in RunConfig.__dataclass_fields__})
    device = pick_device(run_cfg.device)
    model = _build_or_load_model(ckpt, run_cfg, device)
    t0 = time.perf_counter()
    both = pd.concat([query["path"], gallery["path"]]).tolist()
    feats = extract_features(model, both, height=run_cfg.height, width=run_cfg.width,
                             batch_size=run_cfg.extract_batch_size, device=device, flip=run_cfg.flip, bf16=False,
                             progress=progress)
    qf, gf = feats[:len(query)], feats[len(query):]
    dist = distance_matrix(qf, gf, metric="cosine", device="cpu")
    qp, gp = query["pid"].to_numpy(), gallery["pid"].to_numpy()
    qc, gc = query["camid"].to_numpy(), gallery["camid"].to_numpy()
    res = evaluate_rank(dist, qp, gp, qc, gc, return_per_query=True)
    per = res["per_query"]
    valid = per[per["valid"]].sort_values(["ap", "query_index"], kind="stable")
    if valid.empty:
        return "<p>No query has a correct match in the gallery.</p>"
    worst = valid.head(n_show)["query_index"].tolist()
    best = valid.tail(n_show)["query_index"].tolist()[::-1]
    seconds = time.perf_counter() - t0

    def lists(indices: list[int], tag: str) -> list[RankedList]:
        out = []
        ap_of = per.set_index("query_index")["ap"]
        for qi in indices:
            d = dist[qi].astype(np.float64).copy()
            # what the protocol ignores: junk and the same identity seen by the same camera
            ignore = (gp == -1) | ((gp == qp[qi]) & (gc == qc[qi]) & (qc[qi] >= 0) & (gc >= 0))
            d[ignore] = np.inf
            order = np.argsort(d, kind="stable")[:top_k]
            out.append(RankedList(query_path=str(query["path"].iloc[qi]), query_pid=as_pid(qp[qi]),
                                  gallery_paths=[str(p) for p in gallery["path"].to_numpy()[order]],
                                  gallery_pids=[as_pid(v) for v in gp[order]], distances=d[order].tolist(),
                                  title=f"{tag} AP {100 * ap_of[qi]:.1f}%: {Path(str(query['path'].iloc[qi])).name}"))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        png_best = draw_ranked_lists(lists(best, "best"), Path(tmp) / "best.png").read_bytes()
        png_worst = draw_ranked_lists(lists(worst, "worst"), Path(tmp) / "worst.png").read_bytes()
    which = f"round {ckpts[-1]}'s checkpoint" if ckpt is not None else "the starting model"
    return (f"<p>Model: {which}; {len(query)} queries, {len(gallery)} gallery images; mAP "
            f"{100 * res['mAP']:.1f}%, features extracted for this page in {seconds:.1f} s (fp32). "
            "Green = same identity, red = another identity; same-camera matches and junk are left out, "
            "as in the evaluation.</p>"
            f"<h3>Best {len(best)} queries</h3>" + _img(_png_uri(png_best), "ranked lists of the best queries", "lists") +
            f"<h3>Worst {len(worst)} queries</h3>" + _img(_png_uri(png_worst), "ranked lists of the worst queries", "lists"))


def _versions(metrics: pd.DataFrame) -> pd.DataFrame:
    import sklearn
    import torch

    rows = []
    for col in ("torch_version", "sklearn_version", "python_version", "machine", "cpu_model", "batch_per_device"):
        if col in metrics.columns and len(metrics):
            rows.append({"what": col, "recorded with the run": metrics[col].iloc[-1]})
    now = {"torch_version": torch.__version__, "sklearn_version": sklearn.__version__,
           "python_version": platform.python_version()}
    table = pd.DataFrame(rows, columns=["what", "recorded with the run"])
    table["when this page was built"] = table["what"].map(now).fillna("")
    return table


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#111827;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
table{border-collapse:collapse;margin:10px 0;font-size:13px} caption{text-align:left;color:#6b7280;padding:4px 0}
th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:right} th{background:#f3f4f6}
td:first-child,th:first-child{text-align:left} img.plot{max-width:100%;display:block;margin:8px 0}
img.lists{max-width:100%;display:block;margin:8px 0;border:1px solid #e5e7eb}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{background:#f9fafb;border:1px solid #e5e7eb;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:1.4em} pre{background:#f9fafb;border:1px solid #e5e7eb;padding:8px;font-size:12px;overflow:auto}
nav{margin:12px 0} nav a{margin-right:12px}
"""


def report_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The headline numbers of a run (last evaluated round): for artifacts and logs."""
    metrics = _read_metrics(Path(run_dir))
    if metrics.empty:
        return {"rounds": 0}
    last = metrics.sort_values("round").iloc[-1]
    out: dict[str, Any] = {"rounds": int(last["round"])}
    for key in ("mAP", "rank1", "mINP", "ari", "n_clusters", "n_outliers"):
        if key in metrics.columns and pd.notna(last.get(key)):
            out[key] = float(last[key]) if key not in ("n_clusters", "n_outliers") else int(last[key])
    if "mAP" in metrics.columns and (metrics["round"] == 0).any():
        out["mAP_round0"] = float(metrics.loc[metrics["round"] == 0, "mAP"].iloc[0])
    return out


def build_report(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None, max_embed_points: int = 1500,
                 n_queries_shown: int = 4, top_k: int = 10, ranked_lists: bool = True, seed: int = 0,
                 progress: bool = False) -> Path:
    """Write the run's HTML report (default ``<run_dir>/report.html``, atomically); returns its path."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder does not exist")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a run folder (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from exc
    t0 = time.perf_counter()
    rounds = _rounds(run_dir)
    metrics = _read_metrics(run_dir)
    images = pd.read_parquet(run_dir / "images.parquet") if (run_dir / "images.parquet").is_file() else None
    summary = report_summary(run_dir)

    sections: list[tuple[str, str, str]] = [
        ("metrics", "Metrics per round", _metrics_section(metrics)),
        ("clusters", "Pseudo-labels: cluster sizes and outliers",
         ("<p>Supervised run: these labels are the ground-truth identities.</p>" if cfg.get("mode") == "supervised"
          else "") + _cluster_section(run_dir, rounds)[0]),
        ("training", "Training loss", _train_section(run_dir, rounds)),
        ("ise", "ISE plan", _ise_section(run_dir, rounds)),
        ("embedding", "2-D embedding of the features", _embedding_section(run_dir, rounds, images,
                                                                           max_embed_points, seed)),
    ]
    if ranked_lists:
        sections.append(("ranked", "Ranked lists: best and worst queries",
                         _ranked_section(run_dir, cfg, rounds, images, n_queries_shown, top_k, progress)))
    sections.append(("config", "Configuration and versions",
                     _table(_versions(metrics)) + "<pre>" + html.escape(json.dumps(cfg, indent=2, sort_keys=True)) + "</pre>"))

    cards = "".join(f'<div class="card">{html.escape(label)}<b>{value}</b></div>' for label, value in (
        ("rounds", summary.get("rounds", 0)),
        ("mAP", f"{100 * summary['mAP']:.1f}%" if "mAP" in summary else "-"),
        ("rank-1", f"{100 * summary['rank1']:.1f}%" if "rank1" in summary else "-"),
        ("mAP at round 0", f"{100 * summary['mAP_round0']:.1f}%" if "mAP_round0" in summary else "-"),
        ("pseudo-label ARI", f"{summary['ari']:.3f}" if "ari" in summary else "-"),
        ("clusters", summary.get("n_clusters", "-")),
    ))
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    name = html.escape(str(cfg.get("name", run_dir.name)))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>reid run {name}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run <code>{name}</code></h1>"
        f"<p>{html.escape(str(cfg.get('mode', '')))} {html.escape(str(cfg.get('backbone', '')))} on "
        f"<code>{html.escape(str(cfg.get('dataset', '')))}</code> "
        f"({html.escape(str(cfg.get('data_root', '')))}), input {cfg.get('height')}x{cfg.get('width')}, "
        f"P x K = {cfg.get('p')} x {cfg.get('k')}, {cfg.get('iters')} iterations a round, ISE {cfg.get('use_ise')}. "
        f"Folder: <code>{html.escape(str(run_dir.resolve()))}</code>. Page built {time.strftime('%Y-%m-%d %H:%M')} "
        f"in {{seconds}} s.</p>"
        f'<div class="cards">{cards}</div><nav>{nav}</nav>{body}</body></html>\n'
    )
    page = page.replace("{seconds}", f"{time.perf_counter() - t0:.1f}")
    out = Path(out_path) if out_path is not None else run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
