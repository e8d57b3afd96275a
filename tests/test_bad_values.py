"""Bad values through the real `explainfix` process (issue #24, items 5, 12, 13, 15, 16): non-image inputs keep their
real shape, NaN/inf weights, data and statistics are named (exit 2), the seed and --workers are bounded, an empty
class folder never shifts a label, and a huge image is refused from its header.

A refusal is exit 2, one `error:` line naming the thing (a `hint:` may follow), no traceback, nothing at -o.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FIXTURE_ARCH, FIXTURE_CALIB, FIXTURE_PT, cli_json, run_cli, write_image_folder

MLP_SOURCE = '''import torch.nn as nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
'''


def mlp_files(d: Path, poison: str | None = None) -> tuple[Path, str]:
    """The MLP's state dict and its --arch (``poison``: 'nan' or 'inf' written into fc1.weight[3, 5])."""
    (d / "mlp.py").write_text(MLP_SOURCE)
    torch.manual_seed(0)
    model = nn.Module()
    model.fc1, model.fc2 = nn.Linear(128, 256), nn.Linear(256, 10)
    sd = model.state_dict()
    if poison:
        sd["fc1.weight"][3, 5] = float(poison)
    torch.save(sd, d / "mlp.pt")
    return d / "mlp.pt", f"{d / 'mlp.py'}:MLP"


def npz(d: Path, n: int = 24, bad_rows: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 128)).astype(np.float32)
    for i in bad_rows:
        x[i, 7] = np.nan
    np.savez(d / "x.npz", x=x, y=rng.integers(0, 10, n))
    return d / "x.npz"


def fixture_prune(*extra) -> list:
    return ["prune", FIXTURE_PT, "--arch", FIXTURE_ARCH, "--input-size", "32", "--pct", "50", "--batches", "1", *extra]


def assert_refused(proc, out: Path, *expect: str) -> list[str]:
    err = proc.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"rc={proc.returncode}\n{err}"
    assert "Traceback" not in err and "Warning" not in err, err
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    for piece in expect:
        assert piece in lines[0], err
    assert not out.exists(), "something was written to -o"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temp dir was left behind"
    return lines


# ---------------------------------------------------------------- item 5: non-image inputs keep their real shape
def test_npz_mlp_records_its_sample_shape_for_info_and_export(tmp_path):
    import onnxruntime as ort

    pt, arch = mlp_files(tmp_path)
    data = npz(tmp_path)
    out = tmp_path / "pruned"
    r = run_cli("prune", pt, "--arch", arch, "--data", data, "--target-params", "0.5", "-o", out)
    assert r.returncode == 0, r.stderr
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["preprocessing"]["sample_shape"] == [128]

    # info without --data: the MACs of one (128,) input of the pruned model, not of a 3×224² image
    doc = cli_json("info", out, "--trust-code", spawn=True)
    from explainfix_cli import load

    model = load(out, trust_code=True).eval()  # the pruned width, read back from the written model
    k = model.fc1.out_features
    assert k < 256 and model.fc2.in_features == k
    assert doc["input_shape"] == [128]
    assert doc["macs"] == 128 * k + k * 10

    # export without --data: an ONNX taking (N, 128), checked on inputs of that shape
    exp = tmp_path / "exp"
    e = run_cli("export", out, "--onnx", "--trust-code", "-o", exp)
    assert e.returncode == 0, e.stderr
    sess = ort.InferenceSession(str(exp / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.shape[1:] == [128]
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    got = sess.run(None, {inp.name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # bench without --input-size: timed on (N, 128) inputs too
    bench = cli_json("bench", out, "--trust-code", "--iters", "3", "--warmup", "1", "--rounds", "1", spawn=True)
    assert bench["rows"][0]["macs"] == 128 * k + k * 10


def test_a_recorded_shape_over_the_bound_is_refused(tmp_path):
    pt, arch = mlp_files(tmp_path)
    out = tmp_path / "pruned"
    assert run_cli("prune", pt, "--arch", arch, "--data", npz(tmp_path), "--target-params", "0.5", "-o", out).returncode == 0
    recipe_path = out / "explainfix.json"
    recipe = json.loads(recipe_path.read_text())
    recipe["preprocessing"]["sample_shape"] = [256, 512, 512, 2]  # 2**27 values: 512 MiB for one sample
    recipe_path.write_text(json.dumps(recipe))
    exp = tmp_path / "exp"
    for args in (["info", out, "--trust-code"], ["export", out, "--onnx", "--trust-code", "-o", exp]):
        assert_refused(run_cli(*args), exp, "sample_shape")


def test_an_npz_of_another_shape_than_the_model_takes_is_refused_not_verified(tmp_path):
    pt, arch = mlp_files(tmp_path)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    out = tmp_path / "out"
    assert_refused(run_cli("export", pt, "--arch", arch, "--data", tmp_path / "wrong.npz", "--onnx", "-o", out),
                   out, "does not run on a 1×3×8×8 input")


def test_an_npz_sample_the_recipe_could_not_record_is_refused(tmp_path):
    pt, arch = mlp_files(tmp_path)
    np.savez(tmp_path / "deep.npz", x=np.zeros((2, 1, 1, 1, 1, 1, 128), np.float32))  # 6 dimensions per sample
    out = tmp_path / "out"
    assert_refused(run_cli("prune", pt, "--arch", arch, "--data", tmp_path / "deep.npz", "--target-params", "0.5",
                           "-o", out), out, "deep.npz", "at most 5 dimensions")


# ---------------------------------------------------------------- item 12: NaN/inf values, the seed
@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_weights_are_named(tmp_path, poison):
    pt, arch = mlp_files(tmp_path, poison)
    out = tmp_path / "out"
    assert_refused(run_cli("prune", pt, "--arch", arch, "--data", npz(tmp_path), "--target-params", "0.5", "-o", out),
                   out, "'fc1.weight'", "NaN or infinite")


def test_non_finite_data_is_named(tmp_path):
    pt, arch = mlp_files(tmp_path)
    out = tmp_path / "out"
    data = npz(tmp_path, bad_rows=(5, 9))
    assert_refused(run_cli("prune", pt, "--arch", arch, "--data", data, "--target-params", "0.5", "-o", out),
                   out, "x.npz", "x[5]", "NaN or infinite")


@pytest.mark.parametrize("flag,value", [("--mean", "nan"), ("--std", "nan"), ("--std", "inf"), ("--mean", "-inf"),
                                        ("--std", "0"), ("--std", "-1"), ("--std", "0.5,0.5"), ("--mean", "1e300")])
def test_mean_and_std_must_be_finite_and_std_positive(tmp_path, flag, value):
    out = tmp_path / "out"
    assert_refused(run_cli(*fixture_prune("--data", FIXTURE_CALIB, flag, value, "-o", out)), out, flag)


@pytest.mark.parametrize("seed", ["18446744073709551616", "4294967296", "-1"])
def test_seed_outside_its_documented_range_is_refused(tmp_path, seed):
    out = tmp_path / "out"
    assert_refused(run_cli(*fixture_prune("--seed", seed, "-o", out)), out, "--seed")


# ---------------------------------------------------------------- item 13: --workers is capped
def test_workers_are_capped_at_the_cpus_with_a_note(tmp_path):
    import os

    out = tmp_path / "out"
    cpus = len(os.sched_getaffinity(0))
    r = run_cli(*fixture_prune("--data", FIXTURE_CALIB, "--workers", "1000", "--batch-size", "8", "--json", "-o", out))
    assert r.returncode == 0, r.stderr
    notes = json.loads(r.stdout)["load_notes"]
    assert f"--workers 1000 capped at {cpus}" in " ".join(notes)
    assert f"--workers 1000 capped at {cpus}" in r.stderr and "Warning" not in r.stderr
    info = run_cli("info", out, "--trust-code")  # what it wrote loads
    assert info.returncode == 0, info.stderr


# ---------------------------------------------------------------- item 15: an empty class folder keeps its index
def test_an_empty_class_folder_keeps_every_label_and_is_named(tmp_path):
    from explainfix_cli.io.data import Preprocessing, load_calibration

    src = write_image_folder(tmp_path / "src", 4)
    data = tmp_path / "calib"
    data.mkdir()
    shutil.move(src / "class0", data / "a")
    (data / "b").mkdir()  # a class with no images in this calibration set
    shutil.move(src / "class1", data / "c")
    calib = load_calibration(data, Preprocessing(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,)))
    assert calib.classes == ["a", "b", "c"] and calib.labels == [0, 0, 2, 2] and calib.empty_classes == ["b"]
    out = tmp_path / "out"
    report = cli_json(*fixture_prune("--data", data, "-o", out), spawn=True)
    assert any("b hold no images" in n and "index" in n for n in report["load_notes"]), report["load_notes"]
    assert run_cli("info", out, "--trust-code").returncode == 0


# ---------------------------------------------------------------- item 16a: a decompression bomb is refused from its header
def test_a_95_megapixel_image_is_refused_before_decoding(tmp_path):
    from PIL import Image

    data = write_image_folder(tmp_path / "calib", 2)
    big = data / "class0" / "huge.png"
    Image.new("1", (10_000, 9_500)).save(big)  # 95 megapixels, a few kB on disk
    assert big.stat().st_size < 1_000_000
    out = tmp_path / "out"
    r = run_cli(*fixture_prune("--data", data, "-o", out))
    lines = assert_refused(r, out, "huge.png", "megapixels", "95.0")
    assert "DecompressionBomb" not in r.stderr and len(lines) == 2
