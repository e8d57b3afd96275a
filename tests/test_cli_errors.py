"""Every bad input of docs/CLI.md through the real `explainfix` process.

Each case asserts: exit code 2, stderr is one `error: …` line (a `hint: …` line may follow) and no
traceback, nothing written (no -o folder, no default `<stem>-pruned/`, no hidden temp dirs), and every
input byte-for-byte unchanged. The subprocesses are independent, so they run a few at a time.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from explainfix_cli import jobs
from explainfix_cli.core.errors import BadInput

from conftest import FIXTURE_ARCH, FIXTURE_ARCH_FILE, FIXTURE_CALIB, FIXTURE_PT, Payload, run_cli, snapshot

A = FIXTURE_ARCH
CALIB = str(FIXTURE_CALIB)



def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def model_copy(d: Path) -> Path:
    shutil.copyfile(FIXTURE_PT, d / "model.pt")
    return d / "model.pt"


def prune(model, *extra) -> list:
    return ["prune", model, "--arch", A, "--data", CALIB, "--input-size", "32", *extra]


# -------------------------------------------------------------------------------- case builders
def _corrupt(d):
    (d / "model.pt").write_bytes(b"\x80" + bytes(range(256)) * 8)  # looks like a pickle, is not
    return prune(d / "model.pt", "--pct", "50", "-o", d / "out")


def _malicious(d):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload(d / "pwned")}, d / "evil.pt")
    return ["prune", d / "evil.pt", "--arch", A, "--pct", "50", "-o", d / "out"]


def _torchscript(d):
    torch.jit.save(torch.jit.trace(small_net(), torch.zeros(1, 1, 8, 8)), d / "scripted.pt")
    return ["prune", d / "scripted.pt", "--pct", "50", "-o", d / "out"]


def _existing_out(d):
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("earlier result")
    return prune(model_copy(d), "--pct", "50", "-o", d / "out")


def _empty_data(d):
    (d / "calib").mkdir()
    return ["prune", model_copy(d), "--arch", A, "--pct", "50", "--data", d / "calib", "-o", d / "out"]


def _corrupt_image(d):
    shutil.copytree(FIXTURE_CALIB / "0", d / "calib" / "0")
    (d / "calib" / "0" / "0000_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    return ["prune", model_copy(d), "--arch", A, "--pct", "50", "--data", d / "calib", "--input-size", "32",
            "-o", d / "out"]


def _wrong_input_size(d):
    (d / "fixed.py").write_text("import torch.nn as nn\n\n\nclass Fixed(nn.Sequential):\n    def __init__(self):\n"
                                "        super().__init__(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), "
                                "nn.Linear(4 * 8 * 8, 3))\n")
    torch.save(small_net().state_dict(), d / "fixed.pt")  # the same layers: a Linear that needs 8×8 inputs
    return ["prune", d / "fixed.pt", "--arch", f"{d / 'fixed.py'}:Fixed", "--input-size", "16", "--pct", "50",
            "--criterion", "magnitude", "-o", d / "out"]


@dataclass
class Case:
    build: Callable[[Path], list]
    expect: str  # a piece of the error line
    env: dict = field(default_factory=dict)


CASES: dict[str, Case] = {
    "missing-model": Case(lambda d: prune(d / "missing.pt", "--pct", "50", "-o", d / "out"), "does not exist"),
    "corrupt-model": Case(_corrupt, "model.pt"),
    "weights-without-arch": Case(lambda d: ["prune", model_copy(d), "--pct", "50", "-o", d / "out"], "weights only"),
    "wrong-arch": Case(lambda d: ["prune", model_copy(d), "--arch", "torchvision.models:resnet18", "--pct", "50",
                                  "--data", CALIB, "--input-size", "32", "-o", d / "out"], "do not fit the architecture"),
    "bad-arch-kwargs-json": Case(lambda d: prune(model_copy(d), "--arch-kwargs", '{"num_classes": 10', "--pct", "50",
                                                 "-o", d / "out"), "--arch-kwargs"),
    "empty-data": Case(_empty_data, "holds no images"),
    "missing-data": Case(lambda d: ["prune", model_copy(d), "--arch", A, "--pct", "50", "--data", d / "nodata",
                                    "-o", d / "out"], "does not exist"),
    "corrupt-image": Case(_corrupt_image, "0000_broken.png"),  # fails mid-run, after the model is loaded
    "pct-0": Case(lambda d: prune(model_copy(d), "--pct", "0"), "--pct"),  # no -o: default <stem>-pruned/ in cwd
    "pct-100": Case(lambda d: prune(model_copy(d), "--pct", "100"), "--pct"),
    "pct-150": Case(lambda d: prune(model_copy(d), "--pct", "150", "-o", d / "out"), "--pct"),
    "pct-minus-5": Case(lambda d: prune(model_copy(d), "--pct", "-5", "-o", d / "out"), "--pct"),
    "bad-device": Case(lambda d: prune(model_copy(d), "--pct", "50", "--device", "banana", "-o", d / "out"), "banana"),
    "untrusted-pickle": Case(_malicious, "run code"),  # its payload would create ./pwned
    "torchscript": Case(_torchscript, "TorchScript"),
    "existing-output": Case(_existing_out, "exists"),
    "wrong-input-size": Case(_wrong_input_size, "does not run on a 1×1×16×16 input"),
}
DEBUG_CASES: dict[str, Case] = {
    "debug-flag": Case(lambda d: prune(d / "missing.pt", "--pct", "50", "--debug", "-o", d / "out"), "does not exist"),
    "debug-env": Case(lambda d: prune(d / "missing.pt", "--pct", "50", "-o", d / "out"), "does not exist",
                      env={"EXPLAINFIX_DEBUG": "1"}),
}
USAGE_CASES: dict[str, Case] = {
    "pct-not-a-number": Case(lambda d: prune(model_copy(d), "--pct", "abc", "-o", d / "out"), "--pct"),
}
HINTS = {"existing-output": ["--force"], "weights-without-arch": ["--arch"], "untrusted-pickle": ["--trust-pickle", "--arch"],
         "torchscript": ["state_dict"], "wrong-arch": ["--arch"], "corrupt-image": ["replace"],
         "wrong-input-size": ["--input-size"]}


@dataclass
class Result:
    case: Case
    dir: Path
    proc: object
    before: dict
    after: dict


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    shared_inputs = (FIXTURE_CALIB, FIXTURE_ARCH_FILE, FIXTURE_PT)
    prepared = {}
    for name, case in {**CASES, **DEBUG_CASES, **USAGE_CASES}.items():
        d = tmp_path_factory.mktemp(name)
        args = case.build(d)
        prepared[name] = (case, d, args, snapshot(d, *shared_inputs))

    def one(item):
        name, (case, d, args, before) = item
        proc = run_cli(*args, cwd=d, env=case.env)
        return name, Result(case, d, proc, before, snapshot(d, *shared_inputs))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(one, prepared.items()))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_nothing_changed(r: Result) -> None:
    assert r.after == r.before, "files were written or inputs changed"
    assert not [p for p in r.dir.iterdir() if p.name.startswith(".")], "a temp dir was left behind"
    assert not (r.dir / "out").exists() or (r.dir / "out" / "keep.txt").read_text() == "earlier result"
    assert not list(r.dir.glob("*-pruned"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exit_2_one_line_nothing_written(results, name):
    r = results[name]
    err = r.proc.stderr
    assert r.proc.returncode == 2, f"rc={r.proc.returncode}\n{err}"
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) in (1, 2) and lines[0].startswith("error: "), err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    assert r.case.expect in lines[0], err
    if name in HINTS:
        assert len(lines) == 2 and all(h in lines[1] for h in HINTS[name]), err
    assert r.proc.stdout == ""
    assert_nothing_changed(r)
    assert not (r.dir / "pwned").exists(), "the pickle payload ran"


@pytest.mark.parametrize("name", list(DEBUG_CASES))
def test_debug_shows_traceback(results, name):
    r = results[name]
    assert r.proc.returncode == 2
    assert "Traceback (most recent call last)" in r.proc.stderr
    assert "BadInput" in r.proc.stderr and "does not exist" in r.proc.stderr
    assert_nothing_changed(r)


@pytest.mark.parametrize("name", list(DEBUG_CASES))
def test_debug_keeps_exit_code(results, name):
    assert results[name].proc.returncode == 2


@pytest.mark.parametrize("name", list(USAGE_CASES))
def test_usage_error_is_one_line(results, name):
    r = results[name]
    assert r.proc.returncode == 2
    assert_nothing_changed(r)
    lines = error_lines(r.proc.stderr)
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, r.proc.stderr


@pytest.mark.parametrize("flag,value,api", [
    ("--atol", "-1", lambda: jobs.export_job(jobs.ModelSpec(FIXTURE_PT, A), jobs.DataSpec(input_size="32"), atol=-1.0)),
    ("--rtol", "nan", lambda: jobs.export_job(jobs.ModelSpec(FIXTURE_PT, A), jobs.DataSpec(input_size="32"), rtol=float("nan"))),
])
def test_cli_and_api_reject_a_bad_value_with_the_same_message(tmp_path, flag, value, api):
    with pytest.raises(BadInput) as e:
        api()
    res = run_cli("export", FIXTURE_PT, "--arch", A, "--input-size", "32", flag, value, "-o", tmp_path / "o")
    assert res.returncode == 2 and not (tmp_path / "o").exists()
    assert error_lines(res.stderr)[0] == f"error: {e.value.message}"


def test_internal_error_is_exit_4_and_debug_does_not_refer_to_itself(tmp_path):
    """An exception explainfix does not expect is exit 4 (distinct from 3, "cannot be processed")."""
    import torch

    from models_for_tests import FailsOnBatches

    ckpt = tmp_path / "m.pt"
    torch.save(FailsOnBatches().state_dict(), ckpt)
    args = ["finetune", ckpt, "--arch", f"{Path(__file__).parent / 'models_for_tests.py'}:FailsOnBatches", "--input-size", "8",
            "--data", FIXTURE_CALIB, "-o", tmp_path / "out"]
    plain = run_cli(*args)
    lines = error_lines(plain.stderr)
    assert plain.returncode == 4, plain.stderr
    assert lines[0].startswith("error: internal error: unexpected ArithmeticError: a batch") and "--debug" in lines[1]
    assert "Traceback" not in plain.stderr and not (tmp_path / "out").exists()
    debug = run_cli(*args, "--debug")
    assert debug.returncode == 4 and "Traceback (most recent call last)" in debug.stderr
    assert "rerun with --debug" not in debug.stderr
