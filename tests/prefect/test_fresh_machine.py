"""Every documented entry point on a fresh machine: the README's direct command
``python -m flows.cluster_contrast ...`` with a brand-new PREFECT_HOME and none of the PREFECT_*
variables that scripts/ and the test fixtures set, so the settings must come from prefect.toml."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def _fresh_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home / "never-used-prefect-home")  # does not exist yet, as on a new machine
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = str(REPO)
    return env


def test_prefect_toml_settings_apply_from_the_repository_root(tmp_path):
    code = ("import json; from prefect.settings import get_current_settings as g; s = g(); "
            "print(json.dumps([s.server.ephemeral.startup_timeout_seconds, s.server.analytics_enabled, "
            "s.server.database.timeout]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_fresh_env(tmp_path), capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [120, False, 60.0]


def test_direct_flow_command_works_with_a_fresh_prefect_home(tiny_market, tmp_path):
    runs = tmp_path / "runs"
    sets = dict(pretrained=False, height=64, width=32, min_samples=2, k1=6, k2=2, num_workers=0, device="cpu",
                bf16=False, extract_batch_size=32, lr=1e-3)
    cmd = [sys.executable, "-m", "flows.cluster_contrast", "--name", "fresh", "--dataset", "market1501",
           "--data-root", str(tiny_market), "--rounds", "1", "--iters", "1", "--p", "2", "--k", "4",
           "--runs-dir", str(runs)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_fresh_env(tmp_path), capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "database is locked" not in output, output[-4000:]
    assert "Timed out while attempting to connect" not in output
    metrics = pd.read_parquet(runs / "fresh" / "metrics.parquet")
    assert list(metrics["round"]) == [0, 1]
    assert (runs / "fresh" / "report.html").is_file()  # the flow writes the run report too
    assert (tmp_path / "never-used-prefect-home").is_dir()  # Prefect used the fresh home it was given
