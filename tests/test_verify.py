"""verify: torch vs a real onnxruntime session; a tampered file must fail, NaN must fail."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from explainfix_cli.core.errors import BadInput
from explainfix_cli.deploy.onnx import export_onnx
from explainfix_cli.deploy.verify import compare_outputs, verify_onnx


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = small_cnn()
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    export_onnx(model, torch.randn(2, 3, 16, 16), path)
    return model, path


def test_exported_model_passes(exported):
    model, path = exported
    res = verify_onnx(path, model, [torch.randn(4, 3, 16, 16), (torch.randn(1, 3, 16, 16),)], threads=1)
    assert res.passed and res.summary_line().startswith("PASSED | ")
    assert res.batches == 2 and res.samples == 5 and res.outputs[0].shape == [5, 6]
    assert res.outputs[0].top1_agreement == 1.0 and res.providers == ["CPUExecutionProvider"]
    assert 0 <= res.outputs[0].median_abs <= res.outputs[0].p99_abs <= res.outputs[0].max_abs < 1e-4


def test_tampered_initializer_fails(exported, tmp_path):
    model, path = exported
    proto = onnx.load(str(path))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    init = next(t for t in proto.graph.initializer if t.name in conv_weights)
    w = numpy_helper.to_array(init).copy()
    w[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    res = verify_onnx(tmp_path / "tampered.onnx", model, [torch.randn(4, 3, 16, 16)])
    assert not res.passed
    line = res.summary_line()
    assert line.startswith("FAILED | ") and "elements over tolerance" in line
    assert res.outputs[0].failed_elements > 0 and res.outputs[0].max_abs > 1e-3
    assert verify_onnx(path, model, [torch.randn(4, 3, 16, 16)]).passed  # the original still passes


def test_output_count_mismatch_fails(exported):
    _, path = exported

    class TwoOut(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x.amax((2, 3))

    res = verify_onnx(path, TwoOut(), [torch.randn(2, 3, 16, 16)])
    assert not res.passed and "output count differs" in res.reason
    assert res.summary_line().startswith("FAILED | output count differs")


def test_verify_bad_files(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        verify_onnx(tmp_path / "missing.onnx", small_cnn(), [torch.randn(2, 3, 8, 8)])
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(BadInput, match="cannot load"):
        verify_onnx(tmp_path / "junk.onnx", small_cnn(), [torch.randn(2, 3, 8, 8)])


def test_element_passes_when_abs_or_rel_within_tolerance():
    ref = np.array([[1000.0, 0.0, 1.0]])
    # 1000 → 1000.5: abs 0.5 > atol but rel 5e-4 ≤ rtol; 0 → 5e-5: rel huge but abs ≤ atol
    ok = compare_outputs([ref], [np.array([[1000.5, 5e-5, 1.0]])], ["y"], atol=1e-4, rtol=1e-3)
    assert ok.passed and ok.outputs[0].failed_elements == 0
    bad = compare_outputs([ref], [np.array([[1000.0, 0.0, 1.01]])], ["y"], atol=1e-4, rtol=1e-3)
    assert not bad.passed and bad.outputs[0].failed_elements == 1
    assert bad.outputs[0].max_abs == pytest.approx(0.01) and bad.outputs[0].max_rel == pytest.approx(0.01)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_values_fail_even_when_identical(bad):
    ref = np.array([[1.0, bad], [2.0, 3.0]])
    res = compare_outputs([ref], [ref.copy()], ["y"])
    assert not res.passed and res.outputs[0].nonfinite_reference == 1
    assert "non-finite" in res.summary_line() and res.summary_line().startswith("FAILED")
    json.dumps(res.to_json(), allow_nan=False)  # strict JSON


def test_shape_and_count_mismatch():
    res = compare_outputs([np.zeros((2, 3))], [np.zeros((3, 2))], ["y"])
    assert not res.passed and "shape" in res.outputs[0].reason
    res = compare_outputs([np.zeros(2), np.zeros(2)], [np.zeros(2)], ["a", "b"])
    assert not res.passed and "output count differs" in res.reason


def test_top1_and_per_output_tolerance():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    cand = ref.copy()
    cand[0] = [0.9, 0.1]
    res = compare_outputs([ref, np.ones(3)], [cand, np.ones(3) * 1.05], ["logits", "aux"],
                          per_output_tol={"logits": (1.0, 0.0), "aux": {"rtol": 0.1}})
    by = {o.name: o for o in res.outputs}
    assert by["logits"].top1_agreement == 0.75 and by["aux"].top1_agreement is None
    assert res.passed and (by["aux"].atol, by["aux"].rtol) == (1e-4, 0.1)
    assert not compare_outputs([ref], [cand], ["logits"]).passed
    with pytest.raises(BadInput, match="unknown outputs"):
        compare_outputs([ref], [cand], ["logits"], per_output_tol={"logit": (1, 1)})
