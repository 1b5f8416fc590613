"""``reid --help`` lists every command, one line each (at the usual 80-column terminal)."""
from __future__ import annotations

import argparse
import re


def test_help_lists_every_command_on_one_line(monkeypatch):
    from reid_core.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = list(sub.choices)
    assert {"evaluate", "run", "synth", "eps-sweep", "query", "export", "report"} <= set(names)
    lines = parser.format_help().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "COMMAND")
    block = lines[start + 1:start + 1 + len(names)]
    assert [re.match(r"^\s+(\S+)\s{2,}\S", line).group(1) for line in block] == names, block
    assert all(len(line) <= 80 for line in block)
    assert not lines[start + 1 + len(names)].startswith(" " * 8)  # no wrapped continuation line


def test_config_command_prints_every_knob(capsys):
    """``reid config`` shows the resolved RunConfig: every field, defaults filled in, flags applied."""
    import dataclasses
    import json

    from reid_core.cli import main
    from reid_core.pipeline import RunConfig

    assert main(["config", "--camera-norm", "true", "--split-factor", "4", "--lp-positive", "own"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {f.name for f in dataclasses.fields(RunConfig)}
    assert shown["camera_norm"] is True and shown["split_factor"] == 4.0 and shown["lp_positive"] == "own"
    assert shown["eps"] == RunConfig().eps
