"""bench/supervised_table.py: the claims table's arithmetic and verdicts (no training here)."""
from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("supervised_table")


def rows(variant, maps, ev="global", train_seconds=100.0):
    return [{"variant": variant, "eval": ev, "seed": s, "iterations": 150, "train_seconds": train_seconds,
             "mAP": m, "rank1": m + 0.1, "mINP": m - 0.1} for s, m in enumerate(maps)]


def test_claims_gain_spread_and_verdicts(bench):
    df = pd.DataFrame(
        rows("id", [0.60, 0.62, 0.61]) + rows("id+verification", [0.66, 0.65, 0.67])  # clear gain
        + rows("triplet", [0.40, 0.44, 0.42]) + rows("quadruplet", [0.41, 0.43, 0.45])  # within noise
        + rows("triplet_improved", [0.30, 0.31, 0.29], train_seconds=150.0)  # clear loss
        + rows("id+triplet", [0.70, 0.71, 0.69]) + rows("mutual", [0.72])  # one seed only
    )
    t = bench.claims_table(df).set_index("claim")
    verif = t.loc["ID + verification beats ID alone"]
    want_gain = statistics.mean([0.66, 0.65, 0.67]) - statistics.mean([0.60, 0.62, 0.61])
    want_spread = max(statistics.stdev([0.66, 0.65, 0.67]), statistics.stdev([0.60, 0.62, 0.61]))
    assert verif["gain"] == pytest.approx(want_gain) and verif["spread"] == pytest.approx(want_spread)
    assert verif["verdict"] == "reproduced" and verif["seeds"] == 3
    assert t.loc["quadruplet beats triplet", "verdict"] == "inconclusive (within noise)"
    improved = t.loc["improved triplet beats triplet"]
    assert improved["verdict"] == "not reproduced"
    assert improved["train_s_ratio"] == pytest.approx(1.5)
    assert t.loc["mutual learning beats one network at equal compute", "verdict"] == "inconclusive (one seed)"
    # claims whose variants were not run are left out, not invented
    assert "SoftTriple with K = 10 centres beats K = 1" not in t.index
    md = bench.markdown(df)
    assert "| 001 | ID + verification beats ID alone |" in md and "reproduced" in md


def test_cross_evaluation_claim_compares_two_evaluations_of_one_variant(bench):
    df = pd.DataFrame(rows("aligned", [0.50, 0.52, 0.51]) + rows("aligned", [0.40, 0.41, 0.42], ev="global+local"))
    t = bench.claims_table(df).set_index("claim")
    c = t.loc["AlignedReID: global + local distance beats global alone at test time"]
    assert c["gain"] == pytest.approx(0.41 - 0.51) and c["verdict"] == "not reproduced"


def test_mutual_learning_gets_half_the_iterations(bench, tmp_path):
    args = bench.build_parser().parse_args(["--runs-dir", str(tmp_path)])
    spec, overrides, cost = bench.VARIANTS["mutual"]
    assert overrides == {"mutual_learning": True} and cost == 2.0
    assert max(1, int(round(args.iters / cost))) == 25
    with pytest.raises(SystemExit):
        bench.main(["--variants", "nope", "--summary-only", "--out", str(tmp_path / "x.parquet")])


def test_verdict_rule(bench):
    assert bench.verdict(0.02, 0.01) == "reproduced"
    assert bench.verdict(-0.02, 0.01) == "not reproduced"
    assert bench.verdict(0.005, 0.01) == "inconclusive (within noise)"
    assert bench.verdict(0.5, np.nan) == "inconclusive (one seed)"
