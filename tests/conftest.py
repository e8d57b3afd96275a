"""Shared test scaffolding: the bundled digits fixture, the CLI (as a subprocess or in-process), a pickle payload."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# No downloads and nothing written to the user's home by the model libraries the tests build
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-cfg-"))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
FIXTURE_PT = FIXTURES / "digits_resnet.pt"
FIXTURE_ARCH_FILE = FIXTURES / "digits_resnet.py"
FIXTURE_ARCH = f"{FIXTURE_ARCH_FILE}:DigitsResNet"
FIXTURE_CALIB = FIXTURES / "digits" / "calib"
FIXTURE_INPUT_SIZE = 32
FIXTURE_ARGS = [str(FIXTURE_PT), "--arch", FIXTURE_ARCH, "--input-size", str(FIXTURE_INPUT_SIZE)]  # MODEL + how to build it


@pytest.fixture(scope="session")
def fixture_pt() -> Path:
    return FIXTURE_PT


@pytest.fixture(scope="session")
def fixture_arch() -> str:
    """``--arch`` value for the fixture checkpoint: ``<abs path>/digits_resnet.py:DigitsResNet``."""
    return FIXTURE_ARCH


@pytest.fixture(scope="session")
def fixture_calib() -> Path:
    return FIXTURE_CALIB


@pytest.fixture(scope="session")
def input_size() -> int:
    return FIXTURE_INPUT_SIZE


def run_cli(*args: str | os.PathLike, cwd: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``explainfix ARGS…`` (the real entry point, ``python -m explainfix_cli``) in a subprocess.

    Returns the CompletedProcess with ``returncode``, ``stdout`` and ``stderr`` (text)."""
    full_env = dict(os.environ)
    full_env.pop("EXPLAINFIX_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "explainfix_cli", *map(str, args)],
        cwd=str(cwd) if cwd is not None else str(REPO), env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(*roots: Path) -> dict[str, str]:
    """{path: sha256 | '<dir>'} for every file and folder under ``roots`` (hidden entries included)."""
    out: dict[str, str] = {}
    for root in map(Path, roots):
        if root.is_file():
            out[str(root)] = sha256(root)
            continue
        if not root.exists():
            continue
        out[str(root)] = "<dir>"
        for p in sorted(root.rglob("*")):
            out[str(p)] = "<dir>" if p.is_dir() else sha256(p)
    return out


def invoke(*args: str | os.PathLike):
    """``explainfix ARGS…`` in-process (typer's CliRunner: faster than :func:`run_cli`; ``.exit_code``, ``.output``,
    ``.stdout``)."""
    from typer.testing import CliRunner

    from explainfix_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_json(*args: str | os.PathLike, code: int = 0, spawn: bool = False) -> dict:
    """``explainfix ARGS… --json``: asserts the exit code (``code``) and returns the one JSON document printed on
    stdout. In-process (:func:`invoke`), or with ``spawn`` the real entry point in a subprocess (:func:`run_cli`)."""
    import json

    args = (*args, "--json") if "--json" not in map(str, args) else args
    if spawn:
        p = run_cli(*args)
        assert p.returncode == code, p.stderr
        return json.loads(p.stdout)
    r = invoke(*args)
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="session")
def pruned_fixture(tmp_path_factory):
    """A factory: ``pruned_fixture("--pct", "60")`` is the bundled fixture pruned with those flags on its calibration
    data, made once per session (and loaded back once) for every test that asks for the same flags. Read it, copy
    it to change it, or ask ``pruned_fixture(..., private=True)`` for a copy of one's own (to write into)."""
    import shutil

    from explainfix_cli import load

    made: dict[tuple[str, ...], Path] = {}

    def pruned(*flags: str, private: bool = False) -> Path:
        key = tuple(map(str, flags))
        if key not in made:
            out = tmp_path_factory.mktemp("pruned") / "pruned"
            r = invoke("prune", *FIXTURE_ARGS, *key, "--data", FIXTURE_CALIB, "-o", out)
            assert r.exit_code == 0, r.output
            load(out, trust_code=True)  # what a prune writes must load back
            made[key] = out
        if not private:
            return made[key]
        return Path(shutil.copytree(made[key], tmp_path_factory.mktemp("pruned") / "pruned"))

    return pruned


class Payload:
    """Unpickling this object creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def write_image_folder(root: Path, count: int, size: int = 32, labelled: bool = True, seed: int = 0) -> Path:
    """``count`` random RGB PNGs: in two class folders (``labelled``) or flat (an unlabelled folder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class{i % 2}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return root


def zero_smallest_kernels(model, count):
    """The test's own zeroing: the ``count`` spatial kernels of smallest Σ|W| over all layers."""
    import torch

    from explainfix_cli.core.model import iter_spatial_convs

    convs = iter_spatial_convs(model)
    if not count:
        return
    scores = torch.cat([m.weight.detach().abs().sum((2, 3)).flatten() for _, m in convs])
    cut = set(scores.argsort()[:count].tolist())
    i = 0
    with torch.no_grad():
        for _, m in convs:
            flat = m.weight.view(-1, *m.weight.shape[2:])
            for j in range(flat.shape[0]):
                if i in cut:
                    flat[j] = 0
                i += 1


def small_resnet18():
    """A seeded random-init torchvision ResNet-18 with 5 classes, in eval mode (inputs 48×48 work)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def seeded_batches(n: int = 2, batch: int = 6, size: int = 48, classes: int = 5):
    """``batches()`` for prune_model: ``n`` fixed seeded batches of random images with labels."""
    import torch

    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]
    return lambda: iter(data)
