"""``reid report``: the HTML page of a run, its contents, and how it looks in a real headless Chromium."""
from __future__ import annotations

import base64
import html
import os
import re

import numpy as np
import pandas as pd
import pytest

from reid_core.report import build_report, report_summary
from reid_core.report.browser import find_chromium, inspect_page

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def report(tools_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return build_report(tools_run, out, max_embed_points=200, n_queries_shown=2, top_k=5)


def test_report_is_self_contained_and_has_every_section(report, tools_run):
    text = report.read_text(encoding="utf-8")
    for title in ("Metrics per round", "Pseudo-labels: cluster sizes and outliers", "Training loss", "ISE plan",
                  "2-D embedding of the features", "Ranked lists: best and worst queries",
                  "Configuration and versions"):
        assert f"<h2>{title}</h2>" in text, title
    # nothing loaded from elsewhere: every src is a data: URI, no script, no stylesheet link
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) >= 7 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and 'rel="stylesheet"' not in text
    for s in srcs:  # every embedded picture is a real PNG
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the numbers in the metrics table are the run's
    metrics = pd.read_parquet(tools_run / "metrics.parquet").sort_values("round")
    for value in metrics["mAP"]:
        assert f"<td>{100 * value:.1f}</td>" in text
    # cluster table agrees with the pseudo-labels file
    labels = pd.read_parquet(tools_run / "round_001" / "pseudo_labels.parquet")["label"].to_numpy()
    assert f"<td>{int((labels < 0).sum())}</td>" in text
    # configuration and versions
    import torch

    assert html.escape('"name": "tools"') in text and torch.__version__ in text


def test_report_summary_is_the_last_round(tools_run):
    s = report_summary(tools_run)
    m = pd.read_parquet(tools_run / "metrics.parquet").sort_values("round")
    assert s["rounds"] == 1 and s["mAP"] == pytest.approx(m["mAP"].iloc[-1])
    assert s["mAP_round0"] == pytest.approx(m["mAP"].iloc[0])


def test_report_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "missing")


def test_cli_report(tools_run, tmp_path, capsys):
    import json

    from reid_core.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(tools_run), "--out", str(out), "--max-embed-points", "100", "--no-ranked-lists",
                 "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["report"] == str(out) and out.is_file() and "Ranked lists" not in out.read_text()


_NO_CHROMIUM = "no chromium binary (apt-get install chromium, or set REID_CHROMIUM)"
# .ci/run installs chromium and sets REID_REQUIRE_CHROMIUM=1: there a missing browser is a failure, not a skip
needs_chromium = pytest.mark.skipif(find_chromium() is None and os.environ.get("REID_REQUIRE_CHROMIUM") != "1",
                                    reason=_NO_CHROMIUM)


@needs_chromium
def test_report_in_headless_chromium(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    page = inspect_page(report, screenshot=shot, width=1200)
    assert page["console_errors"] == []
    assert page["title"] == "reid run tools"
    assert len(page["sections"]) == 7
    # every picture decoded by the browser, with its real size
    assert len(page["images"]) >= 7
    assert all(i["complete"] and i["w"] > 100 and i["h"] > 100 for i in page["images"]), page["images"]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[1] == 1200 and img.shape[0] == page["height"] > 2000
    # the plots are on the screenshot: blue histogram bars / lines, and green + red ranked-list borders
    def share(rgb, tol=40):
        return float((np.abs(img - np.array(rgb)).sum(axis=2) < tol).mean())
    assert share((37, 99, 235)) > 1e-4   # histogram bars, query borders
    assert share((22, 163, 74)) > 1e-5   # green border: same identity
    assert share((220, 38, 38)) > 1e-5   # red border: another identity
    assert float((img.sum(axis=2) < 600).mean()) > 0.05  # not a blank page


@needs_chromium
def test_browser_check_does_see_console_errors_and_broken_images(tmp_path):
    """The control: a page with a console error, a thrown exception and a missing image must fail."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>bad</title></head><body>'
                   '<img alt="missing" src="missing.png"><script>console.error("boom"); null.x;</script>'
                   '</body></html>')
    page = inspect_page(bad)
    joined = " | ".join(page["console_errors"])
    assert "console.error: boom" in joined
    assert "exception: TypeError" in joined
    assert "missing.png" in joined
    assert page["images"][0]["w"] == 0
