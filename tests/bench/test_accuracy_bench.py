"""bench/accuracy.py: configuration overrides and the summary table (no training here)."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("accuracy")


def parse(bench, tmp_path, *extra):
    return bench.build_parser().parse_args(["--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), *extra])


def test_set_overrides_fields_with_json_values(bench, tmp_path):
    ns = parse(bench, tmp_path, "--set", "memory_mode=momentum", "--set", "lr=7e-4", "--set", "extra_losses=[\"triplet\"]")
    cfg = bench.market_config("cc_ise", 3, ns)
    assert cfg.memory_mode == "momentum"
    assert cfg.lr == pytest.approx(7e-4)
    assert cfg.extra_losses == ["triplet"]
    assert cfg.use_ise is True and cfg.seed == 3 and cfg.name == "cc_ise-s3"


def test_set_rejects_malformed_and_unknown_fields(bench, tmp_path):
    with pytest.raises(ValueError, match="field=value"):
        bench.market_config("cc", 0, parse(bench, tmp_path, "--set", "memory_mode"))
    with pytest.raises(TypeError):
        bench.market_config("cc", 0, parse(bench, tmp_path, "--set", "no_such_field=1"))
    with pytest.raises(ValueError, match="methods"):
        bench.market_config("nope", 0, parse(bench, tmp_path))


def test_imagenet_method_never_trains(bench, tmp_path):
    cfg = bench.market_config("imagenet", 0, parse(bench, tmp_path, "--set", "rounds=5"))
    assert cfg.rounds == 0


def test_planned_rounds_follow_the_budget(bench, tmp_path):
    # the ISE schedule spans cfg.rounds: it must be the run's planned length, not a far-away cap
    assert bench.market_config("cc_ise", 0, parse(bench, tmp_path, "--budget-minutes", "10")).rounds == 10
    assert bench.market_config("cc_ise", 0, parse(bench, tmp_path, "--budget-minutes", "0.2")).rounds == 1
    assert bench.market_config("cc", 0, parse(bench, tmp_path, "--budget-minutes", "10", "--rounds", "7")).rounds == 7


def test_summary_takes_the_last_round_of_each_seed(bench):
    rows = []
    # method cc: seed 0 ends at round 2 with mAP 0.30, seed 1 at round 3 with 0.40; earlier rounds lower
    for seed, final in ((0, 0.30), (1, 0.40)):
        last = 2 + seed
        for r in range(last + 1):
            m = final if r == last else 0.05 * r
            rows.append(dict(method="cc", seed=seed, round=r, mAP=m, rank1=m + 0.1, mINP=m / 2, ari=0.1 * r,
                             n_clusters=100 + r, seconds=60.0 * r))
    rows.append(dict(method="imagenet", seed=0, round=0, mAP=0.1, rank1=0.2, mINP=0.02, ari=np.nan,
                     n_clusters=np.nan, seconds=0.0))
    summary = bench.summarize(pd.DataFrame(rows)).set_index("method")
    assert list(summary.index) == ["imagenet", "cc"]
    assert summary.loc["cc", "mAP"] == pytest.approx(0.35)
    assert summary.loc["cc", "mAP_std"] == pytest.approx(np.std([0.30, 0.40], ddof=1))
    assert summary.loc["cc", "rounds"] == pytest.approx(2.5)
    assert summary.loc["cc", "seconds"] == pytest.approx((120 + 180) / 2)
    table = bench.markdown_table(summary.reset_index())
    cc_line = next(line for line in table.splitlines() if line.startswith("| cc "))
    assert "| 35.0 |" in cc_line and "| 3.50 |" in cc_line


def test_camera_lever_methods_and_tags(bench, tmp_path):
    cam = bench.market_config("cc_cam", 1, parse(bench, tmp_path))
    assert cam.use_ise is False and cam.camera_norm and cam.split_factor == 4.0 and cam.cam_inter_weight > 0
    both = bench.market_config("cc_cam_ise", 1, parse(bench, tmp_path, "--tag", "x"))
    assert both.use_ise and both.camera_norm and both.lp_positive == "own" and not both.ise_update_with_support
    assert both.ise_horizon == 1500 and both.name == "cc_cam_ise-x-s1"
    # the winner: cc_cam's levers and schedule + ISE's regime from iteration 1,000, i.e. the config of
    # the measured late-ISE forks (cc_cam_ise --set step_size=25 --set ise_start=1000)
    late = bench.market_config("cc_cam_ise_late", 2, parse(bench, tmp_path)).to_dict()
    forked = bench.market_config("cc_cam_ise", 2, parse(bench, tmp_path, "--set", "step_size=25",
                                                        "--set", "ise_start=1000")).to_dict()
    assert {k: v for k, v in late.items() if k != "name"} == {k: v for k, v in forked.items() if k != "name"}
    plain = bench.market_config("cc_cam", 2, parse(bench, tmp_path)).to_dict()
    differ = {k for k in late if late[k] != plain[k]}
    assert differ == {"name", "use_ise", "ise_start", "ise_update_with_support", "lp_positive", "ise_horizon"}
    assert late["ise_start"] == 1000 and late["step_size"] == 25
    # --set still wins over a method's levers
    off = bench.market_config("cc_cam", 0, parse(bench, tmp_path, "--set", "split_factor=0"))
    assert off.split_factor == 0 and off.camera_norm


def test_summary_at_iterations_cuts_every_seed_at_the_same_point(bench):
    rows = []
    for seed, maps in ((0, [0.1, 0.2, 0.3, 0.4]), (1, [0.1, 0.25, 0.35])):
        for r, m in enumerate(maps):
            rows.append(dict(method="cc_cam", seed=seed, round=r, iterations=50 * r, mAP=m, rank1=m, mINP=m,
                             ari=0.5, n_clusters=400, seconds=10.0 * r, cpu_model="AMD EPYC"))
    rows.append(dict(method="imagenet", seed=0, round=0, iterations=0, mAP=0.1, rank1=0.2, mINP=0.02, ari=np.nan,
                     n_clusters=np.nan, seconds=0.0, cpu_model="AMD EPYC"))
    df = pd.DataFrame(rows)
    at100 = bench.summarize(df, at_iterations=100).set_index("method")
    assert at100.loc["cc_cam", "mAP"] == pytest.approx((0.3 + 0.35) / 2) and at100.loc["cc_cam", "iterations"] == 100
    assert at100.loc["imagenet", "mAP"] == pytest.approx(0.1)  # the untrained row stays
    last = bench.summarize(df).set_index("method")
    assert last.loc["cc_cam", "mAP"] == pytest.approx((0.4 + 0.35) / 2)
    table = bench.markdown_table(at100.reset_index())
    assert "| iterations |" in table.splitlines()[0] and "| AMD EPYC |" in table


def test_compare_rows_reads_one_method_of_another_rows_file(bench, tmp_path):
    import pandas as pd

    path = tmp_path / "base.parquet"
    pd.DataFrame({"method": ["cc_cam", "cc_cam", "cc", "cc_cam:step25"], "seed": [0, 1, 0, 2],
                  "mAP": [0.7, 0.72, 0.5, 0.73]}).to_parquet(path)
    (rows,) = bench.compare_rows([f"{path}:cc_cam"])
    assert list(rows["method"]) == ["cc_cam", "cc_cam"] and list(rows["seed"]) == [0, 1]
    (tagged,) = bench.compare_rows([f"{path}:cc_cam:step25"])  # a --tag variant's name has its own colon
    assert list(tagged["seed"]) == [2]
    with pytest.raises(SystemExit, match="PARQUET:METHOD"):
        bench.compare_rows(["no-colon"])
    with pytest.raises(SystemExit, match="no such rows file"):
        bench.compare_rows([f"{tmp_path / 'missing.parquet'}:cc_cam"])
    with pytest.raises(SystemExit, match="no rows of method 'supervised'"):
        bench.compare_rows([f"{path}:supervised"])


def test_fork_from_spec_errors_name_the_problem(bench):
    assert bench.parse_fork("runs/cc_cam-s{seed}:20") == ("runs/cc_cam-s{seed}", 20)
    assert bench.parse_fork("C:/runs/x:3") == ("C:/runs/x", 3)
    with pytest.raises(ValueError, match="RUN_DIR:ROUND"):
        bench.parse_fork("runs/cc_cam-s0")
    with pytest.raises(ValueError, match="not an integer"):
        bench.parse_fork("runs/cc_cam-s0:last")
    with pytest.raises(ValueError, match=">= 1"):
        bench.parse_fork("runs/cc_cam-s0:0")


def test_fork_from_branches_each_seed_and_counts_the_parent_rounds(bench, tmp_path):
    from reid_core.data.synthetic import generate_synthetic

    data = tmp_path / "synth"
    generate_synthetic(data, n_ids=12, n_cams=2, images_per_id_cam=3, seed=2)
    common = ["--data-root", str(data), "--runs-dir", str(tmp_path / "runs"), "--methods", "cc", "--seeds", "0",
              "--height", "64", "--width", "32", "--p", "4", "--k", "4", "--eps", "0.7", "--budget-minutes", "100",
              "--num-workers", "0", "--quiet", "--set", "min_samples=2", "--set", "k1=6", "--set", "k2=3",
              "--set", "extract_batch_size=32"]
    bench.main(common + ["--rounds", "2", "--iters", "2", "--out", str(tmp_path / "parent.parquet")])
    parent = pd.read_parquet(tmp_path / "parent.parquet")
    bench.main(common + ["--rounds", "3", "--iters", "3", "--tag", "late", "--out", str(tmp_path / "child.parquet"),
                         "--fork-from", str(tmp_path / "runs" / "{method}-s{seed}") + ":1"])
    child = pd.read_parquet(tmp_path / "child.parquet").sort_values("round")
    assert list(child["round"]) == [0, 1, 2, 3]
    assert list(child["inherited"]) == [True, True, False, False]
    # the parent's 2 iterations a round up to round 1, then the child's 3
    assert list(child["iterations"]) == [0, 2, 5, 8]
    assert list(child["images_seen"]) == [0, 32, 80, 128]
    assert list(child["method"].unique()) == ["cc:late"]
    # inherited rounds are the parent's rows; the wall clock continues from the parent's
    p1 = parent[parent["round"] == 1].iloc[0]
    c1 = child[child["round"] == 1].iloc[0]
    assert c1["mAP"] == p1["mAP"] and c1["seconds"] == pytest.approx(p1["elapsed_seconds"])
    assert child["seconds"].iloc[2] > c1["seconds"]
    assert (tmp_path / "runs" / "cc-late-s0" / "fork.json").exists()
    with pytest.raises(FileNotFoundError, match="config.json"):
        bench.main(common + ["--rounds", "3", "--tag", "nope", "--out", str(tmp_path / "x.parquet"),
                             "--fork-from", str(tmp_path / "runs" / "absent-s{seed}") + ":1"])
