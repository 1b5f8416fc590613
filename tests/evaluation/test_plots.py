"""Plot functions write a real, non-empty PNG atomically and reject bad frames clearly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reid_core.evaluation import plot_cmc, plot_eps_sweep, plot_map_vs_time, plot_metrics_over_rounds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no leftovers


def test_plot_cmc(tmp_path):
    cmc = np.array([0.5, 0.6, 0.7, 0.72, 0.8])
    assert_png(plot_cmc(cmc, tmp_path / "cmc.png"))
    assert_png(plot_cmc({"a": cmc, "b": cmc * 0.9}, tmp_path / "sub" / "cmc2.png"))
    with pytest.raises(ValueError, match="empty"):
        plot_cmc(np.array([]), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_metrics_over_rounds(tmp_path):
    rows = []
    for method in ("cc", "ise"):
        for r in range(4):
            rows.append(dict(method=method, round=r, mAP=0.1 * r, rank1=0.2 * r, ari=0.3, n_clusters=500 + r))
    df = pd.DataFrame(rows)
    assert_png(plot_metrics_over_rounds(df, tmp_path / "rounds.png"))
    # single method, no ARI column (no ground truth): still plots
    assert_png(plot_metrics_over_rounds(df[df.method == "cc"].drop(columns=["method", "ari"]), tmp_path / "r2.png"))
    with pytest.raises(ValueError, match="round"):
        plot_metrics_over_rounds(df.drop(columns=["round"]), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="none of"):
        plot_metrics_over_rounds(df[["round"]], tmp_path / "bad.png")


def test_plot_eps_sweep(tmp_path):
    eps = np.linspace(0.4, 0.7, 4)
    df = pd.DataFrame(dict(eps=eps, n_clusters=[300, 400, 350, 200], n_outliers=[900, 500, 300, 100],
                           ari=[0.5, 0.6, 0.55, 0.4], nmi=[0.8, 0.85, 0.83, 0.7]))
    assert_png(plot_eps_sweep(df, tmp_path / "eps.png"))
    assert_png(plot_eps_sweep(df[["eps", "n_clusters", "n_outliers"]], tmp_path / "eps2.png"))
    with pytest.raises(ValueError, match="eps"):
        plot_eps_sweep(df.drop(columns=["eps"]), tmp_path / "bad.png")


def test_plot_map_vs_time(tmp_path):
    df = pd.DataFrame(dict(method=["a", "a", "b", "b"], seconds=[10, 20, 15, 30], mAP=[0.2, 0.3, 0.25, 0.4]))
    assert_png(plot_map_vs_time(df, tmp_path / "t.png"))
    assert_png(plot_map_vs_time(df.drop(columns=["method"]), tmp_path / "t2.png"))
    with pytest.raises(ValueError, match="seconds"):
        plot_map_vs_time(df.drop(columns=["seconds"]), tmp_path / "bad.png")


def test_map_vs_time_draws_one_line_per_seed_in_the_method_colour():
    from matplotlib.figure import Figure

    from reid_core.evaluation.plots import draw_map_vs_time

    df = pd.DataFrame(dict(method=["a"] * 4 + ["b"] * 2, seed=[0, 0, 1, 1, 0, 0],
                           seconds=[10, 20, 12, 22, 5, 9], mAP=[0.2, 0.3, 0.25, 0.35, 0.1, 0.15]))
    lines = draw_map_vs_time(Figure().add_subplot(), df, units="seed")
    assert len(lines) == 3
    a0, a1, b0 = lines
    assert a0.get_color() == a1.get_color() != b0.get_color()
    assert [ln.get_label() for ln in lines][0] == "a" and lines[2].get_label() == "b"
    assert lines[1].get_label().startswith("_")  # second seed of "a" has no legend entry
    np.testing.assert_allclose(a1.get_xdata(), [12, 22])
    np.testing.assert_allclose(a1.get_ydata(), [25, 35])  # fractions drawn in %
    # without units the two seeds of "a" become one line sorted by time
    assert len(draw_map_vs_time(Figure().add_subplot(), df)) == 2


def test_failed_plot_keeps_existing_file(tmp_path):
    target = tmp_path / "cmc.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        plot_cmc({"a": np.array([])}, target)
    assert target.read_bytes() == b"old"
    plot_cmc(np.array([0.5, 1.0]), target)
    assert_png(target)
