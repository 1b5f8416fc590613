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


def naive_paired_gain(rows, baseline):
    """From the definition: for each non-baseline row, its value minus the baseline's value at the
    same seed and x (the last such row of each method counts), skipping points the baseline lacks."""
    last = {}
    for method, seed, x, y in rows:
        last[(method, seed, x)] = y
    out = []
    for (method, seed, x), y in sorted(last.items()):
        if method != baseline and (baseline, seed, x) in last:
            out.append((method, seed, x, y - last[(baseline, seed, x)]))
    return out


def test_paired_gain_matches_a_plain_loop():
    from reid_core.evaluation.plots import paired_gain

    rng = np.random.default_rng(0)
    rows = []
    for method in ("base", "a", "b"):
        for seed in (0, 1, 2):
            for x in (0, 50, 100, 150):
                if method == "b" and x == 150 and seed == 1:
                    continue  # a point only the baseline has
                if method == "base" and x == 100 and seed == 2:
                    continue  # a point the baseline lacks: left out
                rows.append((method, seed, x, float(rng.random())))
    rows.append(("a", 0, 50, 0.123456789))  # a rerun appended the same round: the last row counts
    df = pd.DataFrame(rows, columns=["method", "seed", "iterations", "mAP"])
    got = paired_gain(df, "base")
    want = naive_paired_gain(rows, "base")
    assert len(got) == len(want) == 2 * 3 * 4 - 1 - 2
    assert list(zip(got["method"], got["seed"], got["iterations"])) == [w[:3] for w in want]
    np.testing.assert_allclose(got["gain"].to_numpy(np.float64), [w[3] for w in want], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="nope"):
        paired_gain(df, "nope")


def test_plot_with_baseline_adds_the_paired_gain_panel(tmp_path):
    from matplotlib.figure import Figure

    from reid_core.evaluation.plots import draw_paired_gain

    df = pd.DataFrame(dict(method=["base"] * 4 + ["late"] * 4, seed=[0, 0, 1, 1] * 2, iterations=[50, 100] * 4,
                           mAP=[0.50, 0.60, 0.52, 0.62, 0.50, 0.61, 0.52, 0.65]))
    assert_png(plot_map_vs_time(df, tmp_path / "g.png", x="iterations", units="seed", baseline="base"))
    lines = draw_paired_gain(Figure().add_subplot(), df, "base")
    zero, seed0, seed1, mean = lines
    np.testing.assert_allclose(zero.get_ydata(), [0, 0])
    np.testing.assert_allclose(seed0.get_ydata(), [0, 1], atol=1e-9)  # points of mAP, per seed
    np.testing.assert_allclose(seed1.get_ydata(), [0, 3], atol=1e-9)
    np.testing.assert_allclose(mean.get_ydata(), [0, 2], atol=1e-9)
    assert mean.get_color() == seed0.get_color() != zero.get_color()
    with pytest.raises(ValueError, match="missing"):
        plot_map_vs_time(df.drop(columns=["seed"]), tmp_path / "bad.png", x="iterations", units="seed",
                         baseline="base")


def test_failed_plot_keeps_existing_file(tmp_path):
    target = tmp_path / "cmc.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        plot_cmc({"a": np.array([])}, target)
    assert target.read_bytes() == b"old"
    plot_cmc(np.array([0.5, 1.0]), target)
    assert_png(target)
