"""docs/CLI.md is the contract: every flag it names exists in the command's --help, and every flag --help
lists is documented (the shared ones in their own sections)."""
from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOC = (REPO / "docs" / "CLI.md").read_text()
COMMANDS = ["info", "prune", "explain", "fix", "finetune", "compress", "sweep", "export", "verify", "bench", "quantize"]
SHARED = {"--help", "--out", "--arch", "--arch-kwargs", "--trust-pickle", "--trust-code", "--input-size", "--mean",
          "--std", "--batch-size", "--device", "--seed", "--force", "--json", "--debug", "--data", "--batches"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def section(cmd: str) -> str:
    """The command's paragraph: from its synopsis to the next command's."""
    start = DOC.index(f"`explainfix {cmd} ")
    nxt = DOC.find("\n`explainfix ", start + 1)
    end = min(x for x in (nxt, DOC.find("\n## ", start)) if x != -1)
    return DOC[start:end]


def help_flags(cmd: str) -> set[str]:
    from typer.testing import CliRunner

    from explainfix_cli.cli import app

    r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})  # no truncated names
    assert r.exit_code == 0
    names = re.compile(r"^│\s+(?:\*\s+)?(--[a-z][a-z0-9-]*)")  # the option column, not the prose
    return {m.group(1) for line in r.output.splitlines() if (m := names.match(line))}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_docs_and_help_name_the_same_flags(cmd):
    documented = set(FLAG.findall(section(cmd)))
    have = help_flags(cmd)
    flags_in_doc_only = {f for f in documented - have if not f.startswith("--no-")}
    assert flags_in_doc_only == set(), f"docs/CLI.md names flags `{cmd} --help` lacks"
    assert have - documented - SHARED == set(), f"`{cmd} --help` has flags docs/CLI.md does not document"
    for flag in SHARED & have - {"--help"}:
        assert flag in DOC, flag
