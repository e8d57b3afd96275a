"""prune end to end: the real CLI on real checkpoints, and the engine's guarantees on small models."""
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from explainfix_cli import load
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.io.arch import sha256_file
from explainfix_cli.cli import app
from explainfix_cli.core.errors import UnsupportedOp
from explainfix_cli.jobs import DataSpec, ModelSpec, prune_job
from tests.conftest import cli_json
from explainfix_cli.prune.pruner import prune_model

FIXTURE = "fixtures/digits_resnet.pt"
ARCH = "fixtures/digits_resnet.py:DigitsResNet"
CALIB = "fixtures/digits/calib"


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_cli_prune_fixture_end_to_end(tmp_path):
    out = tmp_path / "pruned"
    before = sha256_file(FIXTURE)
    report = cli_json("prune", FIXTURE, "--arch", ARCH, "--pct", "90", "--data", CALIB, "--input-size", "32", "-o", out)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "explainfix.json", "report.json", "arch"}
    assert (out / "arch" / "digits_resnet.py").is_file()  # the file architecture travels with the model
    assert report["params_after"] < report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    assert report["check"]["passed"] and report["check"]["pruned_vs_masked_rel"] <= 1e-4
    assert report["criterion"] == "saliency" and report["accuracy_before"] is not None
    assert report["check"]["status"] == "passed" and report["check"]["masked_vs_zeroed_rel"] <= 1e-4  # ≡ the zeroed model
    assert report["inexact_kept"] > 0  # a trained model's BN shifts would fold into zero-padded convs: kept
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["preprocessing"]["input_size"] == [32, 32]
    assert recipe["source"]["sha256"] == before and recipe["edits"][0]["op"] == "prune"
    assert sha256_file(FIXTURE) == before  # input untouched
    # the reloaded directory is usable by every command (its arch/ file runs with --trust-code)
    assert cli_json("info", out, "--trust-code")["params"] == report["params_after"]


def _checkpoint(tmp_path, name, **kwargs):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, name)(**kwargs)
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path


ZOO = [
    ("resnet18", 64, 70),
    ("resnet50", 64, 70),
    ("mobilenet_v2", 64, 70),
    ("vgg11_bn", 32, 80),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,size,pct", ZOO, ids=[z[0] for z in ZOO])
def test_prune_torchvision_zoo(tmp_path, name, size, pct):
    ckpt = _checkpoint(tmp_path, name, num_classes=10)
    job = prune_job(ModelSpec(ckpt, f"torchvision.models:{name}", '{"num_classes": 10}'), DataSpec(CALIB, input_size=str(size), batch_size=16, batches=2), PruneOptions(pct=pct), out=tmp_path / "out", device="cpu")
    r = job.result
    assert r.params_after < r.params_before and r.channels_removed > 0
    assert r.check.passed and r.check.pruned_vs_masked_rel <= 1e-4
    if r.nonzero_folds == 0:  # nothing non-zero folded: pruned ≡ zeroed
        assert r.check.masked_vs_zeroed_rel <= 1e-6
    reloaded = load(job.out, trust_code=True)
    sd_a, sd_b = job.model.state_dict(), reloaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(outputs(reloaded, x), outputs(job.model, x))


class FoldNet(nn.Module):
    """Non-zero biases everywhere and unpadded convs: folded constants are exact."""

    def __init__(self, padding=0):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=padding)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, padding=padding)
        self.fc = nn.Linear(5 * 4 * 4 if padding == 0 else 5 * 8 * 8, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        return self.fc(torch.flatten(self.c2(x), 1))


def _foldnet(padding):
    torch.manual_seed(0)
    m = FoldNet(padding).eval()
    with torch.no_grad():
        m.bn.bias.uniform_(0.5, 1.0)  # ReLU keeps the constants non-zero
        m.bn.running_mean.uniform_(-0.1, 0.1)
        m.c1.weight[[1, 4]] = 0.0  # two dead rows → constant channels
    return m


def test_constant_channels_fold_exactly_without_padding():
    m = _foldnet(0)
    x = torch.randn(4, 3, 8, 8)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.nonzero_folds > 0 and r.inexact_folds == 0
    assert m.c1.out_channels < 6 and m.c2.in_channels == m.c1.out_channels
    assert r.check.masked_vs_zeroed_rel <= 1e-5  # exact: pruned ≡ zeroed


def test_inexact_fold_into_zero_padded_conv_is_refused_by_default_and_reported_when_allowed():
    x = torch.randn(4, 3, 8, 8)
    m = _foldnet(1)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.inexact_folds == 0 and r.inexact_kept == 2  # the two constant channels stay
    assert m.c1.out_channels == 6
    assert r.check.passed and r.check.status == "passed" and r.check.masked_vs_zeroed_rel <= 1e-4

    m = _foldnet(1)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude", allow_inexact_folds=True), example=x[:1], check_inputs=x)
    assert r.inexact_folds > 0 and m.c1.out_channels == 4
    assert not r.check.passed and r.check.status == "inexact"  # never "passed" for it
    assert r.check.pruned_vs_masked_rel <= 1e-4  # still ≡ masked equivalent (no index error)
    assert r.check.masked_vs_zeroed_rel > 1e-6  # but not ≡ zeroed: the borders differ


def test_flatten_into_linear_removes_feature_blocks():
    m = _foldnet(0)
    with torch.no_grad():
        m.c2.weight[2] = 0.0
        m.c2.bias[2] = 0.0
    x = torch.randn(4, 3, 8, 8)
    ref = outputs(m, x)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert m.c2.out_channels == 4 and m.fc.in_features == 4 * 16
    assert r.check.passed
    assert r.check.masked_vs_zeroed_rel <= 1e-5
    del ref


def test_unknown_op_is_refused_naming_op_and_module():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.d = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.d(torch.cumsum(self.c(x), dim=1))

    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedOp) as e:
        prune_model(Odd().eval(), PruneOptions(pct=50, criterion="magnitude"), example=x[:1])
    assert "cumsum" in e.value.message and "node" in e.value.message
    res = CliRunner().invoke(app, ["info", "--help"])
    assert res.exit_code == 0


def test_model_outputs_and_inputs_are_never_pruned():
    """A conv whose output is the model output keeps every channel, even all-zero ones."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3)).eval()
    with torch.no_grad():
        m[2].weight[3] = 0.0
    x = torch.randn(2, 3, 8, 8)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert m[2].out_channels == 6 and r.check.passed


def test_magnitude_with_data_still_reports_agreement_and_accuracy(tmp_path):
    job = prune_job(ModelSpec(FIXTURE, ARCH), DataSpec(CALIB, input_size="32"), PruneOptions(pct=90, criterion="magnitude"), out=tmp_path / "o", device="cpu")
    r = job.result
    assert r.criterion == "magnitude" and r.eval_samples == 100
    assert r.accuracy_before == 1.0 and 0.0 <= r.accuracy_after <= 1.0 and r.agreement is not None


def test_round_to_keeps_channel_counts_multiples_and_stays_exact(tmp_path):
    plain = prune_job(ModelSpec(FIXTURE, ARCH), DataSpec(CALIB, input_size="32"), PruneOptions(pct=80), out=tmp_path / "a", device="cpu")
    job = prune_job(ModelSpec(FIXTURE, ARCH), DataSpec(CALIB, input_size="32"), PruneOptions(pct=80, round_to=8), out=tmp_path / "b", device="cpu")
    assert job.result.check.passed
    changed = [row for row in job.result.layers if row.out_after != row.out_before]
    assert changed and all(row.out_after % 8 == 0 for row in changed)
    assert 0 < job.result.channels_removed <= plain.result.channels_removed
    assert json.loads((job.out / "explainfix.json").read_text())["provenance"][-1]["round_to"] == 8
    reloaded = load(job.out, trust_code=True)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(outputs(reloaded, x), outputs(job.model, x))


def test_cli_prune_model_that_plain_fx_cannot_trace(tmp_path):
    """A U-Net-style decoder (shape-dependent `if`) with a value-gated block: pruned through the CLI, the
    gate kept whole and said so, and the output directory reloads to the same function."""
    from models_for_tests import Decoder

    torch.manual_seed(0)
    ckpt = tmp_path / "decoder.pt"
    torch.save(Decoder().zero_some_rows().state_dict(), ckpt)
    arch = ["--arch", "tests/models_for_tests.py:Decoder", "--input-size", "15"]
    res = CliRunner().invoke(app, ["info", str(ckpt), *arch])
    assert res.exit_code == 0, res.output
    assert "kept whole" in res.output and "gate" in res.output
    out = tmp_path / "pruned"
    res = CliRunner().invoke(app, ["prune", str(ckpt), *arch, "--pct", "5", "--criterion", "magnitude", "-o", str(out),
                                   "--allow-inexact-folds"])
    assert res.exit_code == 0, res.output
    assert "kept whole" in res.output and "data-dependent" in res.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["opaque"]) == ["gate"] and report["channels_removed"] >= 8
    pruned = load(out, trust_code=True)
    assert pruned.c1.out_channels == 13 and pruned.up.conv.out_channels == 11
    original = Decoder()
    original.load_state_dict(torch.load(ckpt, weights_only=True))
    x = torch.randn(2, 3, 15, 15)
    # folding the dead channels' constant BN shifts into the next bias is exact away from zero padding
    assert torch.allclose(outputs(pruned, x), outputs(original, x), atol=1e-2)


@pytest.mark.parametrize("case, kwargs, expect", [
    ("Decoder", '{"branch_on_channels": true}', "control flow depends on a channel count at Decoder"),
    ("TopGate", "{}", "data-dependent control flow"),
])
def test_cli_refuses_what_it_cannot_prove_exit_3_nothing_written(tmp_path, case, kwargs, expect):
    import tests.models_for_tests as zoo
    from conftest import run_cli, snapshot

    torch.manual_seed(0)
    model = getattr(zoo, case)(**json.loads(kwargs))
    if case == "Decoder":
        model.zero_some_rows()
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    before = snapshot(tmp_path)
    proc = run_cli("prune", ckpt, "--arch", f"{zoo.__file__}:{case}", "--arch-kwargs", kwargs, "--input-size", "16",
                   "--pct", "5", "--criterion", "magnitude", "-o", tmp_path / "out")
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and expect in lines[0] and "models_for_tests.py:" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) <= 2
    assert snapshot(tmp_path) == before  # nothing written, the checkpoint untouched
