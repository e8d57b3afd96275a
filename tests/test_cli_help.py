"""`--help` reads at 80 columns: every flag name whole, grouped into panels (docs/CLI.md is checked against the
flags themselves by test_contract.py)."""
from __future__ import annotations

import re

import pytest

from tests.test_contract import COMMANDS

OPTION = re.compile(r"^│ {1,4}(?:\* +)?(--[a-z][a-z0-9-]*)(\S*)")  # the option column: the flag and what touches it
PANEL = re.compile(r"^╭─ (\w+) ─")


def help_text(cmd: str, columns: int) -> str:
    """``explainfix CMD --help`` as a terminal ``columns`` wide shows it."""
    import typer.rich_utils
    from typer.testing import CliRunner

    from explainfix_cli.cli import app

    with pytest.MonkeyPatch.context() as mp:  # typer reads TERMINAL_WIDTH once, at import: set its copy, then restore it
        mp.setattr(typer.rich_utils, "MAX_WIDTH", columns)
        r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    return r.output


def flags(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if (m := OPTION.match(line)) and not m.group(2)}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_flag_name_is_whole_at_80_columns(cmd):
    narrow = help_text(cmd, 80)
    assert flags(narrow) == flags(help_text(cmd, 300))
    cut = [line for line in narrow.splitlines() if OPTION.match(line) and OPTION.match(line).group(2)]
    assert cut == [], f"`{cmd} --help` cuts flag names at 80 columns"


@pytest.mark.parametrize("cmd, panels", [
    ("prune", ["Options", "Model", "Data", "Budget", "Recovery", "Output", "Run"]),
    ("compress", ["Options", "Model", "Data", "Budget", "Recovery", "Gates", "Bench", "Output", "Run"]),
])
def test_help_is_grouped_into_panels(cmd, panels):
    text = help_text(cmd, 80)
    assert [m.group(1) for line in text.splitlines() if (m := PANEL.match(line))] == ["Arguments", *panels]
    budget = text[text.index("╭─ Budget"):text.index("╭─ Recovery")]
    for flag in ("--target-macs", "--target-params", "--pct", "--rank", "--floor", "--allow-inexact-folds"):
        assert re.search(rf"│ {flag}\s", budget), flag
