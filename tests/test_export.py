"""export: real torch → ONNX files checked in onnxruntime, and safetensors round trips."""
import json

import onnx
import pytest
import torch
import torchvision
from safetensors import safe_open
from torch import nn

from explainfix_cli.core.errors import BadInput, CannotProcess
from explainfix_cli.io.codec import ALIASES_KEY, export_safetensors, load_safetensors_into
from explainfix_cli.deploy.onnx import export_onnx, flatten_outputs
from explainfix_cli.deploy.verify import verify_onnx


@torch.library.custom_op("efx_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.sin() * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpNet(nn.Module):  # a custom op with no ONNX translation in either exporter
    def forward(self, x):
        return mystery(x) + 1


class SvdNet(nn.Module):  # aten::linalg_svd has no ONNX symbolic in either exporter
    def forward(self, x):
        return torch.linalg.svd(x)[1]


class DataDependentBranch(nn.Module):  # torch.export refuses the branch; TorchScript tracing bakes it in
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else self.fc(-x)


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Linear(8, 5)
        self.box = nn.Linear(8, 4)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        pooled = f.mean((2, 3))
        if self.as_dict:
            return {"logits": self.cls(pooled), "boxes": self.box(pooled), "features": f}
        return self.cls(pooled), f, self.box(pooled)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 6, bias=False)
        self.head.weight = self.embed.weight  # one Parameter under two keys
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.head(self.bn(self.embed(x)))


def onnx_batch_dim(path):
    return onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]


@pytest.fixture(scope="module")
def resnet18_export(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    out = tmp_path_factory.mktemp("r18")
    meta = {"source": "tests/resnet18.pt", "pct": "50", "recipe_sha256": "abc123"}
    res = export_onnx(model, torch.randn(2, 3, 64, 64), out / "model.onnx", metadata=meta)
    return model, res, out


def test_resnet18_dynamo_export_single_file_and_verify(resnet18_export):
    model, res, out = resnet18_export
    assert res.exporter == "dynamo" and res.fallback_reason is None
    assert (res.input_names, res.output_names, res.opset) == (["input"], ["output"], 18)
    # the dynamo exporter writes weights to model.onnx.data; ours must be one self-contained file
    assert [p.name for p in out.iterdir()] == ["model.onnx"]
    assert res.file_bytes > 40e6 and res.external_data is None
    assert onnx_batch_dim(out / "model.onnx").dim_param  # symbolic, not a fixed size
    torch.manual_seed(1)
    check = verify_onnx(out / "model.onnx", model, [torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)])
    assert check.passed, check.summary_line()
    assert check.samples == 5 and check.outputs[0].shape == [5, 10]
    assert check.outputs[0].top1_agreement == 1.0 and check.outputs[0].max_abs < 1e-4


def test_metadata_props_hold_provenance(resnet18_export):
    _, res, out = resnet18_export
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["source"] == "tests/resnet18.pt" and props["pct"] == "50" and props["recipe_sha256"] == "abc123"
    assert props["explainfix.onnx_exporter"] == "dynamo" and props["explainfix.opset"] == "18"
    assert res.metadata == props


@pytest.mark.slow
def test_densenet121_concat_export_and_verify(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=10).eval()
    res = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "model.onnx")
    assert res.exporter == "dynamo", res.fallback_reason
    check = verify_onnx(tmp_path / "model.onnx", model, [torch.randn(3, 3, 32, 32)])
    assert check.passed, check.summary_line()
    assert check.outputs[0].shape == [3, 10]


@pytest.mark.parametrize("as_dict,names", [
    (False, ["output_0", "output_1", "output_2"]),
    (True, ["logits", "boxes", "features"]),
])
def test_several_outputs_have_stable_names_and_verify(tmp_path, as_dict, names):
    torch.manual_seed(0)
    model = TwoHeads(as_dict).eval()
    res = export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "model.onnx")
    assert res.output_names == names
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [o.name for o in graph.output] == names
    check = verify_onnx(tmp_path / "model.onnx", model, [torch.randn(3, 3, 8, 8)])
    assert check.passed, check.summary_line()
    shapes = {o.name: o.shape for o in check.outputs}
    assert shapes[names[0]] == [3, 5] and shapes[names[1 if as_dict else 2]] == [3, 4]
    assert shapes[names[2 if as_dict else 1]] == [3, 8, 8, 8]


def test_flatten_outputs_names_nested_structures():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [n for n, _ in flatten_outputs(a)] == ["output"]
    assert [n for n, _ in flatten_outputs({"logits": a, "aux": (b, c)})] == ["logits", "aux_0", "aux_1"]
    assert [n for n, _ in flatten_outputs((a, {"x": b}))] == ["output_0", "output_1_x"]
    with pytest.raises(CannotProcess, match="not a tensor"):
        flatten_outputs((a, 3))


def test_fallback_to_torchscript_is_recorded_quietly(tmp_path, capfd):
    torch.manual_seed(0)
    model = DataDependentBranch().eval()
    res = export_onnx(model, torch.rand(2, 4) + 0.1, tmp_path / "model.onnx")
    assert capfd.readouterr() == ("", "")  # torch.export's graph dumps and warnings stay off the terminal
    assert any("trace" in w for w in res.warnings)  # …but the tracer's warning is kept in the result
    assert res.exporter == "torchscript"
    assert "data-dependent" in res.fallback_reason
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert props["explainfix.onnx_exporter"] == "torchscript"
    assert onnx_batch_dim(tmp_path / "model.onnx").dim_param
    check = verify_onnx(tmp_path / "model.onnx", model, [torch.rand(3, 4) + 0.1])  # the traced branch
    assert check.passed, check.summary_line()
    assert not torch._C._jit_is_onnx_log_enabled()  # the legacy exporter's global log switch is restored


@pytest.mark.parametrize("model,op", [(CustomOpNet(), "efx_test::mystery"), (SvdNet(), "linalg_svd")])
def test_export_failure_names_the_op_and_writes_nothing(tmp_path, capfd, model, op):
    with pytest.raises(CannotProcess) as err:
        export_onnx(model, torch.randn(2, 4, 4), tmp_path / "model.onnx")
    assert capfd.readouterr() == ("", "")  # no IR dumps from the TorchScript exporter
    assert op in err.value.message and "ONNX export failed" in err.value.message
    assert err.value.exit_code == 3 and err.value.hint
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_batch_of_one_and_bad_opset(tmp_path):
    model = TwoHeads(False)
    with pytest.raises(BadInput, match="batch must be > 1"):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "model.onnx")
    with pytest.raises(BadInput, match="opset"):
        export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "model.onnx", opset=11)
    assert list(tmp_path.iterdir()) == []


def test_static_batch_export(tmp_path):
    model = TwoHeads(False).eval()
    res = export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", dynamic_batch=False,
                      input_names=["image"], output_names=["a", "b", "c"])
    assert res.input_names == ["image"] and res.output_names == ["a", "b", "c"]
    assert onnx_batch_dim(tmp_path / "m.onnx").dim_value == 1


def test_safetensors_round_trip_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    res = export_safetensors(model, tmp_path / "model.safetensors", metadata={"arch": "resnet18", "pct": 50})
    assert res.aliases == {} and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["arch"] == "resnet18" and f.metadata()["pct"] == "50"
    fresh = torchvision.models.resnet18(num_classes=10)
    load_safetensors_into(fresh, tmp_path / "model.safetensors")
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_safetensors_tied_weights_are_stored_once_and_retied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    res = export_safetensors(model, tmp_path / "tied.safetensors")
    assert res.aliases == {"head.weight": "embed.weight"}
    with safe_open(str(tmp_path / "tied.safetensors"), framework="pt") as f:
        assert "head.weight" not in f.keys()
        assert json.loads(f.metadata()[ALIASES_KEY]) == {"head.weight": "embed.weight"}
    fresh = Tied()
    fresh.head.weight = nn.Parameter(torch.zeros(6, 6))  # untied, different values
    loaded = load_safetensors_into(fresh, tmp_path / "tied.safetensors")
    assert loaded.retied == ["head.weight"]
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    x = torch.randn(4, 6)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_safetensors_strict_keys(tmp_path):
    export_safetensors(Tied(), tmp_path / "tied.safetensors")
    with pytest.raises(BadInput, match="missing") as err:
        load_safetensors_into(nn.Sequential(nn.Linear(6, 6)), tmp_path / "tied.safetensors")
    assert "0.weight" in err.value.message
    other = Tied()
    other.embed = nn.Linear(6, 5, bias=False)
    other.head.weight = nn.Parameter(torch.zeros(6, 6))
    with pytest.raises(BadInput, match="shape mismatch"):
        load_safetensors_into(other, tmp_path / "tied.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInput, match="cannot read"):
        load_safetensors_into(Tied(), tmp_path / "bad.safetensors")
