"""compress end to end on the fixture: a gate it meets (exit 0), an impossible one (exit 1), bad values (exit 2)."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from typer.testing import CliRunner

from explainfix_cli import load
from explainfix_cli.cli import app

from conftest import FIXTURES, FIXTURE_ARGS, FIXTURE_CALIB, cli_json, run_cli

EVAL = FIXTURES / "digits" / "eval"
BASE = [*FIXTURE_ARGS, "--data", str(FIXTURE_CALIB)]


def test_compress_gates_met_exit_0_with_all_artifacts(tmp_path):
    out = tmp_path / "c"
    report = cli_json("compress", *BASE, "--pct", "70", "--eval-data", EVAL, "--finetune-epochs", "1",
                      "--max-accuracy-drop", "25", "--min-agreement", "0.7", "--bench-iters", "5", "-o", out)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "explainfix.json", "model.onnx", "report.json", "summary.md", "arch"}
    assert report["passed"] and all(g["passed"] for g in report["gates"])
    assert [g["name"] for g in report["gates"]] == ["accuracy drop", "top-1 agreement", "ONNX verification"]
    assert report["compressed"]["macs"] < report["original"]["macs"]
    assert report["eval_samples"] == 300 and report["held_out"] and report["finetune"]["epochs"][0]["samples"] == 100
    assert {r["label"] for r in report["bench"]["rows"]} == {"original", "compressed"}
    summary = (out / "summary.md").read_text()
    assert "| params |" in summary and "| MACs (1 input) |" in summary and "latency p50" in summary
    assert "accuracy (300 eval samples)" in summary and "✅ PASSED" in summary
    recipe = json.loads((out / "explainfix.json").read_text())
    assert [p["command"] for p in recipe["provenance"]] == ["prune", "finetune", "compress"]
    # the saved model, the ONNX file and the report agree
    model = load(out, trust_code=True)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    onnx_out = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.allclose(onnx_out, ref, atol=1e-4, rtol=1e-3)
    # compress's model.onnx carries the provenance export writes (it runs the export job's steps)
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    exported = tmp_path / "e"
    res = CliRunner().invoke(app, ["export", str(out), "--trust-code", "-o", str(exported)])
    assert res.exit_code == 0, res.output
    ref_props = {p.key: p.value for p in onnx.load(str(exported / "model.onnx")).metadata_props}
    assert set(props) == set(ref_props) and "explainfix.source_sha256" in props and "explainfix.pct" in props
    assert props["explainfix.command"] == "compress" and ref_props["explainfix.command"] == "export"
    same = set(props) - {"explainfix.command", "explainfix.arch"}  # arch: the source file vs the directory's copy
    assert {k: props[k] for k in same} == {k: ref_props[k] for k in same}
    assert props["explainfix.arch"].endswith("digits_resnet.py:DigitsResNet")
    assert ref_props["explainfix.arch"].endswith("arch/digits_resnet.py:DigitsResNet")


def test_compress_impossible_gate_exit_1_names_it_last(tmp_path):
    out = tmp_path / "c"
    res = run_cli("compress", *BASE, "--pct", "95", "--min-agreement", "1.0", "--max-accuracy-drop", "0",
                  "--no-bench", "-o", out)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gate failed:") and "top-1 agreement" in last and "--min-agreement" in last
    assert "accuracy drop" in last and "pts" in last
    report = json.loads((out / "report.json").read_text())  # artifacts are kept for the CI job summary
    summary = (out / "summary.md").read_text()
    assert not report["passed"] and "❌ FAILED" in summary
    # no --eval-data: accuracy is measured on the calibration data, and the row says it is not held out
    assert not report["held_out"] and "accuracy (100 calibration samples, not held out)" in summary and "not held out" in " ".join(res.stderr.split())
    agreement = next(g for g in report["gates"] if g["name"] == "top-1 agreement")
    assert not agreement["passed"] and agreement["value"] in last


def test_compress_bad_gate_value_is_usage_error(tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["compress", *BASE, "--pct", "50", "--min-agreement", "98", "-o", str(out)])
    assert res.exit_code == 2 and "--min-agreement is a fraction" in res.stderr
    assert not out.exists()


def test_compress_refuses_existing_output_without_force(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(app, ["compress", *BASE, "--pct", "50", "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"
