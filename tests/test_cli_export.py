"""export / verify / bench through the real CLI, on real files, checked by a real onnxruntime session."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from explainfix_cli import load

from conftest import FIXTURE_ARGS, cli_json, invoke

FIXTURE = FIXTURE_ARGS
CALIB = "fixtures/digits/calib"


cli = invoke


@pytest.fixture
def pruned(pruned_fixture):
    return pruned_fixture("--pct", "70", private=True)  # export writes model.onnx into it


def test_export_pruned_dir_in_place_and_verify(pruned):
    doc = cli_json("export", pruned, "--trust-code", "--onnx", "--data", CALIB)
    assert doc["verify"]["passed"] and doc["summary"].startswith("PASSED |")
    assert (pruned / "model.onnx").is_file()
    m = onnx.load(pruned / "model.onnx")
    props = {p.key: p.value for p in m.metadata_props}
    assert props["explainfix.pct"] == "70" and json.loads(props["explainfix.preprocessing"])["input_size"] == [32, 32]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    res = cli("export", pruned, "--trust-code", "--onnx")
    assert res.exit_code == 2 and "exists" in res.output  # no silent overwrite
    assert cli_json("verify", pruned / "model.onnx", "--reference", pruned, "--trust-code", "--data", "fixtures/digits/eval")["passed"] is True


def test_altered_initializer_fails_verify(pruned, tmp_path):
    cli_json("export", pruned, "--trust-code", "-o", tmp_path / "e")
    m = onnx.load(tmp_path / "e" / "model.onnx")
    init = next(i for i in m.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, tmp_path / "bad.onnx")
    res = cli("verify", tmp_path / "bad.onnx", "--reference", pruned, "--trust-code", "--data", CALIB)
    assert res.exit_code == 1
    assert "FAILED |" in res.output


def test_several_outputs_export_with_stable_names(tmp_path):
    torch.manual_seed(0)
    from models_for_tests import TwoHeads

    ckpt = tmp_path / "two.pt"
    torch.save(TwoHeads().state_dict(), ckpt)
    doc = cli_json("export", ckpt, "--arch", "tests/models_for_tests.py:TwoHeads", "--input-size", "16", "-o", tmp_path / "out")
    assert doc["export"]["output_names"] == ["logits", "mask"]
    assert [o["name"] for o in doc["verify"]["outputs"]] == ["logits", "mask"] and doc["verify"]["passed"]


def test_export_failure_exits_3_naming_the_op(tmp_path):
    from models_for_tests import WithSvd

    ckpt = tmp_path / "svd.pt"
    torch.save(WithSvd().state_dict(), ckpt)
    out = tmp_path / "out"
    res = cli("export", ckpt, "--arch", "tests/models_for_tests.py:WithSvd", "--input-size", "8", "-o", out)
    assert res.exit_code == 3
    assert "svd" in res.output.lower()
    assert not out.exists()


def test_safetensors_export_of_tied_weights_reloads(tmp_path):
    from models_for_tests import Tied

    torch.manual_seed(0)
    model = Tied().eval()
    ckpt = tmp_path / "tied.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "st"
    res = cli("export", ckpt, "--arch", "tests/models_for_tests.py:Tied", "--safetensors", "--input-size", "8", "-o", out)
    assert res.exit_code == 0, res.output
    reloaded = load(out, trust_code=True)
    assert reloaded.conv2.weight is reloaded.conv.weight
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(reloaded(x), model(x))


def test_bench_side_by_side_with_ratios(pruned):
    doc = cli_json("bench", *FIXTURE[:3], pruned, "--iters", "20", "--warmup", "3", "--rounds", "4")
    rows = doc["rows"]
    assert doc["rounds"] == 4 and rows[1]["latency_ratio_min"] <= rows[1]["latency_ratio"] <= rows[1]["latency_ratio_max"]
    assert len(rows) == 2 and rows[0]["macs_ratio"] == 1.0
    assert rows[1]["macs"] < rows[0]["macs"] and rows[1]["params_ratio"] < 1.0
    assert all(r["p50_ms"] > 0 and r["p50_ms"] <= r["p90_ms"] for r in rows)
    assert np.isfinite(rows[1]["latency_ratio"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_pruned_zoo_model_exports_and_verifies(tmp_path, arch):
    """A pruned residual network and a pruned concatenating one, through prune → export → verify."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ckpt = tmp_path / f"{arch}.pt"
    torch.save(getattr(tv.models, arch)(num_classes=10).state_dict(), ckpt)
    args = [ckpt, "--arch", f"torchvision.models:{arch}", "--arch-kwargs", '{"num_classes": 10}', "--input-size", "64"]
    assert cli_json("prune", *args, "--pct", "90", "--data", CALIB, "--batches", "1", "-o", tmp_path / "p")["channels_removed"] > 0
    doc = cli_json("export", tmp_path / "p", "--data", CALIB)
    assert doc["verify"]["passed"] and doc["verify"]["samples"] >= 64
    res = cli("verify", tmp_path / "p" / "model.onnx", "--reference", tmp_path / "p")
    assert res.exit_code == 0 and "PASSED |" in res.output
