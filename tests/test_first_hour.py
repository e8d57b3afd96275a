"""Issue #27, a newcomer's first hour: what the CLI says happened and what to do next, the figures' words,
the ecosystem's conventions (--version, LICENSE, extras). Real CLI runs on the fixture and small models."""
from __future__ import annotations

import re
import sys
import tomllib

import pytest

from tests.conftest import FIXTURE_ARGS, FIXTURE_PT, REPO, run_cli


# ----------------------------------------------------------------------------- 9: --version, LICENSE
def test_version_prints_the_version_and_exits_0():
    from explainfix_cli.core.version import __version__

    p = run_cli("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"explainfix {__version__}"


def test_license_file_and_spdx_expression():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the explainfix authors" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # PEP 639 string, not the deprecated table
    assert "LICENSE" in project["project"]["license-files"]
    build = " ".join(project["build-system"]["requires"])
    assert int(re.search(r"setuptools>=(\d+)", build).group(1)) >= 77  # the first setuptools reading PEP 639


# ---------------------------------------------------------------------------------- 10: user extras
def test_user_extras_install_the_shorthands_libraries():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[ ]", d)[0] for d in v} for k, v in extras.items()}
    assert "timm" in names["timm"]
    assert "segmentation-models-pytorch" in names["smp"]
    assert "ultralytics" in names["yolo"]
    assert {"timm", "segmentation-models-pytorch", "ultralytics", "torchvision"} <= names["all"]
    assert {"timm", "segmentation-models-pytorch", "ultralytics", "pytest"} <= names["test"]  # make test still works


@pytest.mark.parametrize("arch, library, extra", [
    ("timm:resnet18", "timm", "timm"),
    ("smp:Unet", "segmentation_models_pytorch", "smp"),
    ("ultralytics:yolov8n", "ultralytics", "yolo"),
])
def test_a_missing_library_names_the_extra_to_install(tmp_path, arch, library, extra):
    """The library is made missing for the subprocess (sitecustomize sets sys.modules[name] = None: importing it
    then raises ImportError, as when it is not installed); nothing else changes."""
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{library!r}] = None\n")
    p = run_cli("info", FIXTURE_PT, "--arch", arch, env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0] == (f"error: {library} is not installed: pip install explainfix-cli[{extra}] "
                        "(or explainfix-cli[all]: timm, segmentation-models-pytorch and ultralytics)")
