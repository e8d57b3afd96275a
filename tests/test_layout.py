"""The house rules (README, "How it works"): imports run one way, checked by import-linter; modules stay small."""
from __future__ import annotations

import os
import sys
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT)], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold_and_catch_an_up_import(tmp_path):
    assert _lint(REPO).returncode == 0
    shutil.copytree(REPO / "explainfix_cli", tmp_path / "explainfix_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    arch = tmp_path / "explainfix_cli" / "io" / "arch.py"
    arch.write_text(arch.read_text() + "\nfrom ..jobs.common import now  # an io module reaching up to a job\n")
    r = _lint(tmp_path)
    assert r.returncode == 1, r.stdout
    assert "explainfix_cli.io is not allowed to import explainfix_cli.jobs" in r.stdout
    assert "explainfix_cli.io.arch -> explainfix_cli.jobs.common" in r.stdout


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "explainfix_cli").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
