"""compress --quantize int8 (#26 item 5): prune → export → verify → INT8 (the quantize job's own steps) → gates,
in one command; both models land with provenance, the report nests the INT8 section, the summary has an INT8 row."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort

from conftest import FIXTURE_ARGS, FIXTURE_CALIB, FIXTURES, cli_json, run_cli

EVAL = FIXTURES / "digits" / "eval"


def test_compress_quantize_writes_both_models_checked_and_gated(tmp_path):
    out = tmp_path / "c"
    doc = cli_json("compress", *FIXTURE_ARGS, "--pct", "30", "--data", FIXTURE_CALIB, "--eval-data", EVAL,
                   "--max-accuracy-drop", "50", "--quantize", "int8", "--no-bench", "-o", out, spawn=True)
    assert sorted(p.name for p in out.iterdir()) == ["arch", "explainfix.json", "model.int8.onnx", "model.onnx",
                                                      "model.safetensors", "report.json", "summary.md"]
    q = doc["int8"]
    assert q["settings"]["per_channel"] and q["weights_int8"] >= 10
    assert q["comparison"]["samples"] == 300 and q["comparison"]["agreement"] >= 0.9
    names = [g["name"] for g in doc["gates"]]
    assert "INT8 accuracy drop" in names and "INT8 vs FP32" in names and doc["passed"]
    drop = next(g for g in doc["gates"] if g["name"] == "INT8 accuracy drop")
    want = 100 * (doc["original"]["accuracy"] - q["comparison"]["accuracy_int8"])
    assert drop["value"] == f"{want:.2f} pts"
    m = onnx.load(str(out / "model.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}
    meta = {p.key: p.value for p in m.metadata_props}
    assert "explainfix.preprocessing" in meta and "explainfix.quantization" in meta
    x = np.zeros((3, 1, 32, 32), "float32")
    assert ort.InferenceSession(str(out / "model.int8.onnx")).run(None, {"input": x})[0].shape == (3, 10)
    summary = (out / "summary.md").read_text()
    assert "INT8 `model.int8.onnx`: accuracy" in summary and "INT8 accuracy drop" in summary
    assert json.loads((out / "report.json").read_text())["int8"] == q
    assert run_cli("info", out, "--trust-code").returncode == 0


def test_compress_int8_gate_fails_with_exit_1_and_still_writes(tmp_path):
    out = tmp_path / "c"
    res = run_cli("compress", *FIXTURE_ARGS, "--pct", "30", "--data", FIXTURE_CALIB, "--eval-data", EVAL,
                  "--max-accuracy-drop", "0", "--quantize", "int8", "--max-float", "0", "--no-bench", "-o", out)
    assert res.returncode == 1, res.stderr
    last = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")][-1]
    assert "gate failed" in last and "pts" in last
    assert (out / "model.int8.onnx").is_file() and (out / "summary.md").is_file()  # CI publishes it


def test_compress_quantize_bad_type_is_bad_input(tmp_path):
    res = run_cli("compress", *FIXTURE_ARGS, "--pct", "30", "--data", FIXTURE_CALIB, "--quantize", "int4", "-o", tmp_path / "c")
    assert res.returncode == 2 and "int4" in res.stderr and not (tmp_path / "c").exists()


def test_sweep_quantize_adds_int8_points_to_table_timing_and_figure(tmp_path):
    from explainfix_cli.explain.figures import tradeoff_figure

    out = tmp_path / "s"
    doc = cli_json("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--eval-data", EVAL, "--targets", "1.5x,2x",
                   "--quantize", "int8", "--bench-iters", "5", "-o", out, spawn=True)
    for p in doc["points"]:
        q = p["int8"]
        assert q["accuracy"] is not None and q["agreement_fp32"] >= 0.9 and q["latency_ms"] > 0
    assert "2x INT8" in (out / "sweep.md").read_text()
    fig = tradeoff_figure(doc)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("INT8" in t for t in labels)
    for ax in fig.axes:  # both panels (MACs kept, latency) draw the INT8 series
        assert any(line.get_color() == "tab:green" for line in ax.lines)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the INT8 files were staged and removed


def test_compress_max_float_must_not_be_negative(tmp_path):
    res = run_cli("compress", *FIXTURE_ARGS, "--pct", "30", "--data", FIXTURE_CALIB, "--quantize", "int8", "--max-float", "-3",
                  "-o", tmp_path / "c")
    assert res.returncode == 2 and "--max-float" in res.stderr and not (tmp_path / "c").exists()
