"""Branches only training mode runs (Inception's auxiliary head) are part of the channel plan, the self-check
runs in training mode too, and an input size only eval mode accepts is refused up front; with them, two
engine gaps of the same issue: learnable scalar affines keep channel identity, autocast blocks trace."""
import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, write_image_folder
from models_for_tests import AutocastBlock, ScalarAffine, TrainOnlyAux
from torch import nn

import explainfix_cli
from explainfix_cli.channels.graph import build_graph
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model

ARCH = str(Path(__file__).parent / "models_for_tests.py")


def _loaded(out: Path) -> nn.Module:
    return explainfix_cli.load(out, trust_code=True)  # our own file architecture, copied into the directory


def _masked(original: nn.Module, out: Path) -> nn.Module:
    """The test's own masked equivalent of a channel-criterion prune: every consumer column the recipe
    removes is zeroed in the unpruned model (nothing is folded by that criterion)."""
    edits = json.loads((out / "explainfix.json").read_text())["edits"]
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for edit in edits:
            for path, e in edit.get("modules", {}).items():
                m = masked.get_submodule(path)
                if "in" in e and isinstance(m, (nn.Conv2d, nn.Linear)):
                    assert m.groups == 1 if isinstance(m, nn.Conv2d) else True
                    m.weight[:, e["in"]] = 0
    return masked


def _train_forward(model: nn.Module, x: torch.Tensor):
    """Training mode (batch statistics, the train-only branch) on a copy, dropout off, outputs as one list."""
    m = copy.deepcopy(model).train()
    for d in m.modules():
        if isinstance(d, nn.Dropout):
            d.eval()
    with torch.no_grad():
        out = m(x)
    return [t for t in (out if isinstance(out, tuple) else (out,)) if t is not None]


def _close(a, b) -> bool:
    """Equal up to float summation order (fewer terms per sum), relative to the largest output; an index
    error differs by O(1)."""
    return len(a) == len(b) and all(
        x.shape == y.shape and float((x - y).abs().max()) <= 1e-3 * max(1.0, float(y.abs().max())) for x, y in zip(a, b))


def test_train_only_branch_keeps_the_channels_it_reads():
    """``mid`` rows 1 and 5 are zero: eval mode alone would drop both, but the train-only ``aux_conv`` reads
    row 5 (it ignores only row 1), so just row 1 goes and the model still trains."""
    torch.manual_seed(0)
    model = TrainOnlyAux().eval()
    with torch.no_grad():
        model.mid.weight[[1, 5]] = 0
        model.mid.bias[[1, 5]] = 0
        model.aux_conv.weight[:, 1] = 0
    stats = model.bn1.running_mean.clone()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    r = prune_model(model, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.check.passed and r.check.training == "passed"
    assert (model.mid.out_channels, model.bn2.num_features, model.aux_conv.in_channels, model.head.in_channels) == (23, 23, 23, 23)
    assert not model.training and torch.equal(model.bn1.running_mean, stats)  # the check left no trace
    assert int(model.bn1.num_batches_tracked) == 0
    out, aux = _train_forward(model, x)
    assert out.shape == aux.shape == (4, 3)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_cli_budget_prunes_what_a_train_only_branch_reads(tmp_path, recalibrate):
    torch.manual_seed(0)
    original = TrainOnlyAux().eval()
    torch.save(original.state_dict(), tmp_path / "m.pt")
    data = write_image_folder(tmp_path / "data", 4, size=32)
    out = tmp_path / "out"
    r = run_cli("prune", tmp_path / "m.pt", "--arch", f"{ARCH}:TrainOnlyAux", "--input-size", "32", "--data", data,
                "--batch-size", "2", "--target-macs", "2x", "--no-refit",  # the test's own masked model is not refit
                "-o", out, *([] if recalibrate else ["--no-recalibrate-bn"]))
    assert r.returncode == 0, r.stderr
    pruned = _loaded(out)
    assert pruned.mid.out_channels < 24 and pruned.aux_conv.in_channels == pruned.mid.out_channels
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    masked = _masked(original, out)
    # training mode uses batch statistics, so it matches whether or not BatchNorm was re-estimated
    assert _close(_train_forward(pruned, x), _train_forward(masked, x))
    if not recalibrate:
        with torch.no_grad():
            assert _close([pruned.eval()(x)], [masked.eval()(x)])


def test_cli_input_too_small_for_training_mode_is_bad_input(tmp_path):
    """16 px: eval mode runs, the auxiliary head's 5×5 pool does not fit the 4×4 map of training mode."""
    torch.save(TrainOnlyAux().state_dict(), tmp_path / "m.pt")
    r = run_cli("prune", tmp_path / "m.pt", "--arch", f"{ARCH}:TrainOnlyAux", "--input-size", "16",
                "--target-macs", "2x", "-o", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert "fails in training mode" in r.stderr and "internal error" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_inception_v3_with_aux_logits_prunes_and_trains(tmp_path):
    """torchvision's own case at its native 299 px (the auxiliary head needs a 17×17 Mixed_6e map)."""
    tv = pytest.importorskip("torchvision")
    kwargs = {"aux_logits": True, "init_weights": False, "num_classes": 4}
    torch.manual_seed(0)
    original = tv.models.inception_v3(**kwargs).eval()
    torch.save(original.state_dict(), tmp_path / "m.pt")
    data = write_image_folder(tmp_path / "data", 4, size=64)
    out = tmp_path / "out"
    r = run_cli("prune", tmp_path / "m.pt", "--arch", "torchvision:inception_v3", "--arch-kwargs", json.dumps(kwargs),
                "--input-size", "299", "--data", data, "--batch-size", "2", "--target-macs", "2x",
                "--no-refit", "-o", out)  # the test's own masked model is not refit
    assert r.returncode == 0, r.stderr
    pruned = _loaded(out)
    e = pruned.Mixed_6e
    width = sum(b.conv.out_channels for b in (e.branch1x1, e.branch7x7_3, e.branch7x7dbl_5, e.branch_pool))
    assert pruned.AuxLogits.conv0.conv.in_channels == width
    x = torch.randn(2, 3, 299, 299, generator=torch.Generator().manual_seed(2))
    assert _close(_train_forward(pruned, x), _train_forward(_masked(original, out), x))
    small = run_cli("info", tmp_path / "m.pt", "--arch", "torchvision:inception_v3", "--arch-kwargs", json.dumps(kwargs),
                    "--input-size", "96")
    assert small.returncode == 2 and "fails in training mode" in small.stderr, small.stderr


def test_scalar_affine_keeps_channel_identity():
    """``x * s + b`` with 1-element parameters: the residual stream stays prunable, and dead channels (the
    constant ``b`` after the affine) fold exactly."""
    torch.manual_seed(0)
    model = ScalarAffine().eval()
    _, g = build_graph(model, torch.randn(1, 3, 16, 16))
    prunable = [s for s in g.spaces if s.prunable]
    assert sum(s.size for s in prunable) == 16 * 3  # stem + both block convs, one residual stream
    assert list(g.frozen_by) == ["model output at <top> (node output)"] and g.frozen_by[next(iter(g.frozen_by))] == 3
    with torch.no_grad():
        for conv in (model.stem, *model.convs):
            conv.weight[[2, 7]] = 0
            conv.bias[[2, 7]] = 0
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    want = model(x)
    r = prune_model(model, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.check.passed and model.stem.out_channels == 14 and model.fc.in_features == 14
    assert r.nonzero_folds > 0  # channel c is the constant b there, folded into fc's bias
    assert torch.allclose(model(x), want, atol=1e-5)


def test_frozen_by_names_the_op_that_froze_the_most():
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
            self.norm, self.fc = nn.GroupNorm(2, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.norm(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    _, g = build_graph(Normed().eval(), torch.randn(1, 3, 8, 8))
    assert list(g.frozen_by.items()) == [("GroupNorm normalises across channels at norm", 6),
                                         ("model output at <top> (node output)", 2)]


def test_autocast_block_traces_and_prunes():
    """``torch.autocast(device_type=x.device.type)``: the device type is a real string while tracing."""
    torch.manual_seed(0)
    model = AutocastBlock().eval()
    with torch.no_grad():
        model.a.weight[3] = 0
        model.a.bias[3] = 0
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    r = prune_model(model, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.check.passed and model.a.out_channels == 7 and not r.opaque


def test_timm_efficientvit_attention_is_traced_not_kept_whole():
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientvit_b0", pretrained=False, num_classes=4).eval()
    gm, g = build_graph(model, torch.randn(1, 3, 64, 64))
    from explainfix_cli.channels.graph import opaque_modules

    assert not opaque_modules(gm)
    assert sum(s.size for s in g.spaces if s.prunable) > 0


def test_training_check_draws_no_per_channel_randomness():
    """Dropout2d on prunable channels: the masked and the pruned model would draw different channel masks
    from one seed; the training-mode check turns dropout off, so the two agree exactly."""
    from explainfix_cli import prune_model as api
    from explainfix_cli.prune.options import PruneOptions

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.5), nn.Conv2d(8, 4, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    r = api(model, options=PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert model[0].out_channels == 7 and r.check.training == "passed" and r.check.training_rel <= 1e-6


def test_the_self_check_forwards_run_without_tf32_and_restore_the_setting():
    """cuDNN runs float32 convolutions in TF32 by default: on an H100 a pruned ResNet-50 then differed from
    its masked equivalent by 3e-4 > 1e-4 and every CUDA prune failed its self-check. The check's forwards
    (eval and training mode) run with TF32 off for cuDNN and matmuls, through the API the state reads cleanly
    by, so a forward that uses ``torch.backends.cudnn.flags`` still runs; the user's settings are back
    afterwards, after an error too."""
    from explainfix_cli.prune.check import run_outputs, train_outputs

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()))
            with torch.backends.cudnn.flags(enabled=True):  # reads the legacy flags on entry (raised when mixed)
                pass
            if x.shape[0] == 3:
                raise ValueError("a forward that fails")
            return x * 2

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")  # what many training scripts set
        torch.backends.cudnn.allow_tf32 = True  # torch's default
        x = torch.randn(2, 3)
        run_outputs(Probe(), x)
        train_outputs(Probe(), x)
        with pytest.raises(ValueError):
            run_outputs(Probe(), torch.randn(3, 3))
        assert seen == [(False, "highest")] * 3
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
