"""Matplotlib figures for evaluation results, written atomically as PNG.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas directly (no pyplot, so
no global backend switch, no GUI, safe in worker processes) and saved through
:func:`reid_core.io.atomic_path`. Each function returns the written path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid_core.io import atomic_path

__all__ = ["plot_cmc", "plot_metrics_over_rounds", "plot_eps_sweep", "plot_map_vs_time", "draw_map_vs_time",
           "paired_gain", "draw_paired_gain"]


def _new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] | None = None):
    size = size or (4.5 * ncols, 3.5 * nrows)
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _require(df: pd.DataFrame, cols: Sequence[str], name: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; has {list(df.columns)}")


def _percent_scale(df: pd.DataFrame, y: str) -> float:
    """100 for a retrieval metric stored as a fraction (drawn in %), else 1."""
    vals = df[y].to_numpy(dtype=np.float64)
    return 100.0 if y in ("mAP", "mINP", "rank1", "rank5", "rank10") and np.nanmax(np.abs(vals), initial=0) <= 1.0 else 1.0


def _groups(df: pd.DataFrame, hue: str | None):
    if hue and hue in df.columns:
        for key, sub in df.groupby(hue, sort=True, dropna=False):
            yield str(key), sub
    else:
        yield None, df


def plot_cmc(cmc: Any, path: str | os.PathLike, title: str = "CMC") -> Path:
    """Plot CMC curve(s): ``cmc`` is a 1-D array (``cmc[k-1]`` = rank-k accuracy in [0, 1]) or a
    mapping ``{label: array}`` for several methods."""
    curves = dict(cmc) if isinstance(cmc, Mapping) else {None: cmc}
    if not curves:
        raise ValueError("plot_cmc: no curve given")
    fig, axes = _new_figure()
    ax = axes[0, 0]
    for label, curve in curves.items():
        y = np.asarray(curve, dtype=np.float64).reshape(-1)
        if y.size == 0:
            raise ValueError(f"plot_cmc: empty CMC curve{'' if label is None else f' for {label!r}'}")
        ranks = np.arange(1, y.size + 1)
        ax.plot(ranks, 100.0 * y, marker="o", markersize=3, label=label)
    ax.set_xlabel("rank k")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(k is not None for k in curves):
        ax.legend(fontsize=8)
    return _save(fig, path)


_ROUND_PANELS = (("mAP", "mAP (%)", 100.0), ("rank1", "rank-1 (%)", 100.0), ("ari", "pseudo-label ARI", 1.0),
                 ("n_clusters", "clusters", 1.0))


def plot_metrics_over_rounds(metrics_df: pd.DataFrame, path: str | os.PathLike, x: str = "round") -> Path:
    """Four panels vs ``round``: mAP, rank-1, pseudo-label ARI, number of clusters.

    One line per value of a ``method`` column when it exists. A panel whose column is absent (or
    all NaN) says so instead of failing; at least one of the four columns must exist.
    """
    _require(metrics_df, [x], "metrics_df")
    present = [c for c, _, _ in _ROUND_PANELS if c in metrics_df.columns]
    if not present:
        raise ValueError(f"metrics_df: none of {[c for c, _, _ in _ROUND_PANELS]} present; has {list(metrics_df.columns)}")
    fig, axes = _new_figure(ncols=2, nrows=2)
    has_method = "method" in metrics_df.columns
    for ax, (col, ylabel, scale) in zip(axes.ravel(), _ROUND_PANELS):
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if col not in metrics_df.columns or metrics_df[col].isna().all():
            ax.text(0.5, 0.5, f"no '{col}'", ha="center", va="center", transform=ax.transAxes)
            continue
        for label, sub in _groups(metrics_df, "method"):
            sub = sub.sort_values(x)
            ax.plot(sub[x].to_numpy(), scale * sub[col].to_numpy(dtype=np.float64), marker="o", markersize=3, label=label)
        if has_method:
            ax.legend(fontsize=7)
    return _save(fig, path)


_SWEEP_QUALITY = ("ari", "nmi", "pair_precision", "pair_recall", "pair_f", "coverage")


def plot_eps_sweep(sweep_df: pd.DataFrame, path: str | os.PathLike, x: str = "eps") -> Path:
    """DBSCAN eps sweep: left panel ``n_clusters`` / ``n_outliers`` vs ``eps``; right panel the
    pseudo-label quality columns that exist (ari, nmi, pair_precision, pair_recall, pair_f,
    coverage). One line style per ``method`` when that column exists."""
    _require(sweep_df, [x], "sweep_df")
    counts = [c for c in ("n_clusters", "n_outliers") if c in sweep_df.columns]
    quality = [c for c in _SWEEP_QUALITY if c in sweep_df.columns and not sweep_df[c].isna().all()]
    if not counts and not quality:
        raise ValueError(f"sweep_df: needs n_clusters/n_outliers or a quality column; has {list(sweep_df.columns)}")
    fig, axes = _new_figure(ncols=2)
    ax_c, ax_q = axes[0]
    for label, sub in _groups(sweep_df, "method"):
        sub = sub.sort_values(x)
        prefix = "" if label is None else f"{label}: "
        for c in counts:
            ax_c.plot(sub[x].to_numpy(), sub[c].to_numpy(dtype=np.float64), marker="o", markersize=3, label=prefix + c)
        for c in quality:
            ax_q.plot(sub[x].to_numpy(), sub[c].to_numpy(dtype=np.float64), marker="o", markersize=3, label=prefix + c)
    ax_c.set_xlabel(x)
    ax_c.set_ylabel("count")
    ax_c.grid(alpha=0.3)
    ax_q.set_xlabel(x)
    ax_q.set_ylabel("score")
    ax_q.grid(alpha=0.3)
    if counts:
        ax_c.legend(fontsize=7)
    else:
        ax_c.text(0.5, 0.5, "no cluster counts", ha="center", va="center", transform=ax_c.transAxes)
    if quality:
        ax_q.legend(fontsize=7)
    else:
        ax_q.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax_q.transAxes)
    return _save(fig, path)


def plot_map_vs_time(
    df: pd.DataFrame, path: str | os.PathLike, x: str = "seconds", y: str = "mAP", hue: str | None = "method",
    units: str | None = None, baseline: str | None = None,
) -> Path:
    """Line plot of ``y`` (e.g. mAP, fractions shown in %) against ``x`` (e.g. wall-clock seconds),
    one colour per ``hue`` value (ignored when the column is absent).

    ``units`` (e.g. ``"seed"``) draws one line per unit inside each hue group, in the hue's colour and
    labelled once, so repeated runs are never joined into one zig-zag line. ``baseline`` (a ``hue``
    value; needs ``units``) adds a second panel: every other method's gain over the baseline, paired
    by unit and ``x`` (:func:`paired_gain`), which shows differences smaller than the curves' spread.
    """
    _require(df, [x, y], "df")
    if baseline is None:
        fig, axes = _new_figure(size=(5.5, 4.0))
    else:
        fig, axes = _new_figure(ncols=2, size=(11.0, 4.0))
    draw_map_vs_time(axes[0, 0], df, x=x, y=y, hue=hue, units=units)
    if baseline is not None:
        draw_paired_gain(axes[0, 1], df, baseline, x=x, y=y, hue=hue or "method", units=units or "seed")
    return _save(fig, path)


def paired_gain(df: pd.DataFrame, baseline: str, x: str = "iterations", y: str = "mAP", hue: str = "method",
                units: str = "seed") -> pd.DataFrame:
    """``y`` of every ``hue`` value other than ``baseline`` minus the baseline's ``y`` at the same
    ``units`` value (seed) and ``x``: columns ``hue, units, x, y, baseline_y, gain``, sorted.

    Points without a baseline row at the same (unit, x) are left out. Where a (method, unit, x)
    appears more than once (a rerun appended the same round again), the last row counts.
    """
    _require(df, [x, y, hue, units], "df")
    if baseline not in set(df[hue]):
        raise ValueError(f"paired_gain: no rows with {hue} == {baseline!r}; have {sorted(map(str, set(df[hue])))}")
    keyed = df[[hue, units, x, y]].drop_duplicates([hue, units, x], keep="last")
    base = keyed[keyed[hue] == baseline].drop(columns=[hue]).rename(columns={y: "baseline_y"})
    others = keyed[keyed[hue] != baseline]
    out = others.merge(base, on=[units, x], how="inner")
    out["gain"] = out[y] - out["baseline_y"]
    return out.sort_values([hue, units, x]).reset_index(drop=True)


def draw_paired_gain(ax: Any, df: pd.DataFrame, baseline: str, x: str = "iterations", y: str = "mAP",
                     hue: str = "method", units: str = "seed") -> list:
    """Draw :func:`paired_gain` onto ``ax``: one thin line per (method, seed), the mean over seeds
    thick, a zero line, colours as in :func:`draw_map_vs_time` for the same ``df``."""
    gains = paired_gain(df, baseline, x=x, y=y, hue=hue, units=units)
    scale = _percent_scale(df, y)
    colours = {label: f"C{i % 10}" for i, (label, _) in enumerate(_groups(df, hue))}
    lines = [ax.axhline(0.0, color=colours.get(str(baseline), "k"), lw=1.0, label=f"{baseline} (baseline)")]
    for label, sub in gains.groupby(hue, sort=True):
        colour = colours.get(str(label), "k")
        for _, run in sub.groupby(units, sort=True):
            run = run.sort_values(x)
            (line,) = ax.plot(run[x].to_numpy(dtype=np.float64), scale * run["gain"].to_numpy(dtype=np.float64),
                              color=colour, alpha=0.35, lw=1.0)
            lines.append(line)
        mean = sub.groupby(x)["gain"].mean()
        (line,) = ax.plot(mean.index.to_numpy(dtype=np.float64), scale * mean.to_numpy(dtype=np.float64),
                          color=colour, lw=2.2, marker="o", markersize=3,
                          label=f"{label}: mean of {sub[units].nunique()} {units}(s)")
        lines.append(line)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} gain over {baseline}" + (" (points)" if scale == 100.0 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return lines


def draw_map_vs_time(ax: Any, df: pd.DataFrame, x: str = "seconds", y: str = "mAP", hue: str | None = "method",
                     units: str | None = None) -> list:
    """Draw :func:`plot_map_vs_time` onto ``ax``; returns the drawn lines."""
    _require(df, [x, y], "df")
    scale = _percent_scale(df, y)
    lines = []
    for i, (label, sub) in enumerate(_groups(df, hue)):
        runs = [(None, sub)] if not units or units not in sub.columns else list(sub.groupby(units, sort=True))
        for j, (_, run) in enumerate(runs):
            run = run.sort_values(x)
            (line,) = ax.plot(run[x].to_numpy(dtype=np.float64), scale * run[y].to_numpy(dtype=np.float64),
                              marker="o", markersize=3 if len(runs) > 1 else 6, color=f"C{i % 10}", alpha=0.85,
                              label=label if j == 0 else None)
            lines.append(line)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)" if scale == 100.0 else y)
    ax.grid(alpha=0.3)
    if hue and hue in df.columns:
        ax.legend(fontsize=8)
    return lines
