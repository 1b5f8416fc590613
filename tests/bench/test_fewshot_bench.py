"""bench/fewshot.py: the variant names resolve to RunConfig overrides, 'winner' to the issue-11 winner."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def fewshot(load_bench):
    return load_bench("fewshot")


def test_winner_is_the_accuracy_bench_winner(fewshot, load_bench):
    name, values = fewshot.parse_variant("winner")
    assert name == "winner"
    accuracy = load_bench("accuracy")
    assert values == accuracy.WINNER
    assert {k: values[k] for k in accuracy.CAM_LEVERS} == accuracy.CAM_LEVERS
    assert values["use_ise"] is True and values["ise_start"] == 1000
    assert values["camera_norm"] is True and values["cam_inter_weight"] > 0  # camera proxies are on


def test_defaults_levers_and_custom_variants(fewshot):
    assert fewshot.parse_variant("defaults") == ("defaults", {})
    assert fewshot.parse_variant("levers")[1] == fewshot.LEVERS
    name, values = fewshot.parse_variant("mine:eps=0.5;camera_norm=true;cluster_method=hdbscan")
    assert name == "mine" and values == {"eps": 0.5, "camera_norm": True, "cluster_method": "hdbscan"}


def test_malformed_variant_names_the_problem(fewshot):
    with pytest.raises(ValueError, match="winner"):
        fewshot.parse_variant("unknown")
    with pytest.raises(ValueError, match="field=value"):
        fewshot.parse_variant("x:eps")
