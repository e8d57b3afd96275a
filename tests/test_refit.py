"""``--refit`` (prune/reconstruct.py): the layers that read removed channels are refit by least squares on the
calibration data, on the masked model before the surgery (so the self-check still holds), only where a
BatchNorm alone reads the layer, rows scaled back to their norm. Real data: the bundled digits fixture and its
calibration images; real torchvision models."""
import copy
import json

import pytest
import torch
import torchvision
from conftest import FIXTURE_ARGS, FIXTURE_CALIB, invoke
from torch import nn
from torch.nn import functional as F

from explainfix_cli import load
from explainfix_cli.core.errors import BadInput
from explainfix_cli.io.checkpoint import load_model
from explainfix_cli.io.data import load_calibration, resolve_preprocessing
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model
from explainfix_cli.prune.reconstruct import _patches, rescale_rows


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 4, 3, stride=2, padding=1),
    nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(2, 1), dilation=2),
    nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"),
    nn.Conv2d(3, 4, 1),
])
def test_patches_are_the_rows_the_conv_multiplies(conv):
    """The gathered patches times the weight give the conv's output at those positions."""
    x = torch.randn(2, 3, 9, 11)
    y = conv(x) - conv.bias.view(1, -1, 1, 1)
    flat = y.permute(0, 2, 3, 1).reshape(-1, 4)
    index = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(0))[:17]
    got = _patches(conv, x, index) @ conv.weight.flatten(1).t()
    assert torch.allclose(got, flat[index], atol=1e-5)
    if conv.padding_mode == "zeros" and conv.padding != "same":  # and the same rows as torch's unfold
        cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (N, C·k·k, L)
        assert torch.allclose(_patches(conv, x, index), cols.permute(0, 2, 1).reshape(-1, cols.shape[1])[index])


@pytest.mark.parametrize("bias", [False, True])
def test_rescaled_rows_leave_the_batchnorm_output_unchanged(bias):
    """A refit row scaled by c (some channels with a variance near eps) gives the same BatchNorm output in eval
    mode (running statistics rescaled), and in training mode up to eps (batch statistics)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, bias=bias), nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(6))
        bn.running_var.copy_(torch.tensor([1e-4, 1e-3, 0.5, 1.0, 2.0, 10.0]))
        bn.weight.copy_(torch.randn(6))
        bn.bias.copy_(torch.randn(6))
    x = torch.randn(4, 3, 8, 8)

    def outputs():  # training mode on a copy: it would move the running statistics
        with torch.no_grad():
            return bn.eval()(conv(x)), copy.deepcopy(bn).train()(conv(x))

    before = outputs()
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    c = torch.tensor([0.3, 0.5, 0.9, 1.0, 1.7, 3.0])
    rescale_rows(conv, bn, c)
    scaled = torch.tensor([False, False, True, True, True, True])  # c² · (var + eps) < eps: rows 0 and 1 stay
    assert torch.allclose(bn.running_mean, torch.where(scaled, mean * c, mean))
    assert torch.equal(bn.running_var[:2], var[:2]) and not torch.allclose(bn.running_var[2:], var[2:])
    (eval_after, train_after), (eval_before, train_before) = outputs(), before
    assert torch.allclose(eval_after, eval_before, rtol=1e-5, atol=1e-5)  # exact in eval mode
    assert torch.allclose(train_after, train_before, rtol=1e-2, atol=1e-2)  # up to eps against the batch variance


def test_a_conv_whose_padding_changed_after_it_was_made_is_refit_with_the_padding_it_uses():
    """Segmentation libraries dilate a backbone by setting ``dilation``/``padding`` on built convs; the conv's
    stale ``_reversed_padding_repeated_twice`` must not be what the patches are padded with."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv.dilation, conv.padding = (2, 2), (2, 2)
    x = torch.randn(2, 3, 5, 6)
    y = conv(x) - conv.bias.view(1, -1, 1, 1)
    flat = y.permute(0, 2, 3, 1).reshape(-1, 4)
    index = torch.arange(flat.shape[0])
    got = _patches(conv, x, index, tuple(y.shape[2:])) @ conv.weight.flatten(1).t()
    assert torch.allclose(got, flat, atol=1e-5)


def _fixture():
    loaded = load_model(FIXTURE_ARGS[0], FIXTURE_ARGS[2])
    calib = load_calibration(FIXTURE_CALIB, resolve_preprocessing(loaded.model, (32, 32), None, None, None))
    return loaded.model, calib


def _logit_error(model, original, calib) -> float:
    with torch.no_grad():
        return sum(float(((model(x) - original(x)) ** 2).sum()) for x, _ in calib.batches(25))


def test_refit_brings_the_pruned_model_closer_to_the_original():
    """Same plan with and without the refit; the refit one's logits on the calibration images are closer to
    the original's, every refit row keeps its norm, and the self-check passes."""
    original, calib = _fixture()
    x, _ = next(iter(calib.batches(8)))
    pruned = {}
    for refit in (False, True):
        model, _ = _fixture()
        r = prune_model(model, example=x[:1], check_inputs=x, batches=lambda: calib.batches(25),
                        options=PruneOptions(target_macs="2x", refit=refit))
        assert r.check.passed
        pruned[refit] = (model, r)
    (plain, r0), (fitted, r1) = pruned[False], pruned[True]
    assert r0.refit is None and r1.refit["layers"] > 0
    assert r1.refit["residual_after"] < r1.refit["residual_before"]
    assert [(row.name, row.in_after, row.out_after) for row in r0.layers] == \
           [(row.name, row.in_after, row.out_after) for row in r1.layers]  # the same channels went
    e1, e0 = _logit_error(fitted, original, calib), _logit_error(plain, original, calib)
    assert e1 < 0.95 * e0, (e1, e0)  # 0.89 here: the classifier (no BatchNorm) is not refit
    changed = 0
    for (name, a), b in zip(plain.named_modules(), fitted.modules()):
        if isinstance(a, nn.Conv2d) and not torch.equal(a.weight, b.weight):
            changed += 1
            assert torch.allclose(a.weight.flatten(1).norm(dim=1), b.weight.flatten(1).norm(dim=1), rtol=1e-4), name
    assert changed == r1.refit["layers"]


def test_only_layers_a_batchnorm_reads_are_refit():
    """MobileNetV2: its 1×1 convs are refit; the classifier (no BatchNorm after it) is not, so it keeps the
    weights the plain prune gives it."""
    torch.manual_seed(0)
    base = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    models = []
    for refit in (False, True):
        model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).eval()
        model.load_state_dict(base.state_dict())
        r = prune_model(model, example=data[0][0][:1], batches=lambda: iter(data),
                        options=PruneOptions(target_macs="2x", refit=refit))
        assert r.check.passed
        models.append(model)
    assert r.refit["layers"] > 10
    assert r.refit["skipped"].get("classifier.1") == "no BatchNorm (called once) reads its output alone"
    assert torch.equal(models[0].classifier[1].weight, models[1].classifier[1].weight)


def test_cli_refits_by_default_reports_it_and_the_output_loads(tmp_path):
    out = tmp_path / "p"
    r = invoke("prune", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--target-macs", "2x", "--json", "-o", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["options"]["refit"] is True and doc["refit"]["layers"] > 0 and doc["check"]["passed"]
    model = load(out, trust_code=True)
    model(torch.randn(2, 1, 32, 32))
    model.train()(torch.randn(2, 1, 32, 32))
    plain = invoke("prune", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--target-macs", "2x", "--no-refit", "--json",
                   "-o", tmp_path / "q")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["refit"] is None


@pytest.mark.parametrize("options, needle", [
    (PruneOptions(target_macs="2x", refit=True), "--refit needs calibration data"),
    (PruneOptions(pct=50, refit=True), "--refit needs calibration data"),
])
def test_refit_without_data_is_refused(options, needle):
    with pytest.raises(BadInput, match=needle):
        options.resolved(has_data=False)


def test_refit_with_the_pct_path_is_refused():
    with pytest.raises(BadInput, match="--refit applies to a budget"):
        PruneOptions(pct=50, refit=True).resolved(has_data=True)
    assert PruneOptions(pct=50).resolved(has_data=True).refit is False  # the paper's path is unchanged
