"""timm models as people have them (random init from packaged configs, no downloads): each prunes to what an
independently zeroed copy computes, or is refused naming the op — never a crash, never wrong.

The test zeroes the kernels itself: ``--pct`` with the magnitude criterion zeroes the globally smallest
Σ|W| spatial kernels, so the copy zeroes the same number of smallest kernels by its own ranking and the
pruned model must compute what that copy computes (≤ 1e-4 relative), and its ONNX export (run by
onnxruntime) what the pruned torch model computes. CI runs REALWORLD_FAST (one model per family of layers);
``EXPLAINFIX_ZOO=all`` runs every name below.
"""
import copy
import os

import pytest
import torch

timm = pytest.importorskip("timm")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import zero_smallest_kernels  # noqa: E402

from explainfix_cli.core.errors import UnsupportedOp  # noqa: E402
from explainfix_cli.deploy.onnx import export_onnx  # noqa: E402
from explainfix_cli.prune.options import PruneOptions  # noqa: E402
from explainfix_cli.prune.pruner import prune_model  # noqa: E402

# name → expected outcome (pruned | refused); pruned includes "checked, no channel removable"
TIMM = {
    "efficientnet_b0": "pruned",  # BatchNormAct2d, SE, drop path
    "mobilenetv3_large_100": "pruned",  # timm's Linear head, hard-swish, SE
    "regnety_002": "pruned",  # grouped convs, SE
    "rexnet_100": "pruned",  # partial residual (channel slice add)
    "nf_resnet26": "pruned",  # ScaledStdConv2d: excluded from zeroing, not silently "zeroed"
    "tf_efficientnet_b0": "pruned",  # Conv2dSame (TF "SAME" padding): a conv leaf that counts as zero-padded
    "tf_mobilenetv3_large_100": "pruned",
    "ghostnet_100": "pruned",
    "cspresnet50": "pruned",
    "resnetv2_50": "pruned",
    "densenet121": "pruned",
    "repvgg_a0": "pruned",
    "dpn48b": "pruned",
    "ese_vovnet19b_dw": "pruned",
    "resnet26d": "pruned",
    "resnet50": "pruned",
    "dla34": "pruned",
    "mobilevit_xxs": "pruned",  # its unfold reshape mixes the batch dimension: that block is kept whole
    "inception_v3": "pruned",
    "hrnet_w18_small": "pruned",
    "res2net50_26w_4s": "pruned",
    "vgg11_bn": "pruned",
    "efficientnet_lite0": "pruned",
    "mnasnet_100": "pruned",
    "convnext_atto": "pruned",
}
REALWORLD_FAST = ["efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "nf_resnet26", "tf_efficientnet_b0"]
FULL = os.environ.get("EXPLAINFIX_ZOO") == "all"


@pytest.mark.parametrize("name", list(TIMM) if FULL else REALWORLD_FAST)
def test_timm_prunes_exactly_or_is_refused(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    size = 96 if name == "inception_v3" else 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(model)
    try:
        r = prune_model(model, PruneOptions(pct=70, criterion="magnitude"), example=x[:1], check_inputs=x)
    except UnsupportedOp as e:
        assert TIMM[name] == "refused", f"{name}: {e.message}"
        assert e.op and e.where and "cannot prune through op" in e.message
        return
    assert TIMM[name] == "pruned" and r.check.passed
    zeroed = copy.deepcopy(original)
    zero_smallest_kernels(zeroed, r.filters_zeroed)
    with torch.no_grad():
        want, got = zeroed(x), model(x)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max())), name
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, x, onnx_path)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), got, rtol=1e-3, atol=1e-4)


def test_weight_standardised_convs_are_not_reported_zeroed():
    model = timm.create_model("nf_resnet26", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    r = prune_model(model, PruneOptions(pct=70, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.filters_zeroed == 0 and r.filters_total == 0
    assert any("weight standardisation" in why for why in r.opaque.values())


def test_channel_budget_on_a_timm_model():
    """BatchNormAct2d as a channel-wise leaf: a budget removes channels and the self-check holds."""
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    macs = None
    r = prune_model(model, example=x[:1], check_inputs=x, options=PruneOptions(target_macs="2x"))
    macs = r.macs_after / r.macs_before
    assert r.check.passed and r.budget["within_tolerance"] and abs(macs - 0.5) <= 0.01


@pytest.mark.parametrize("labels", [False, True])
def test_dense_output_saliency_segmentation(labels):
    """torchvision LR-ASPP returns {"out": (N, C, H, W)}: saliency uses the model's top class per pixel,
    with or without per-image labels (which say nothing about pixels), and a budget prunes exactly."""
    import torchvision as tv

    torch.manual_seed(0)
    model = tv.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3]) if labels else torch.full((4,), -1)
    r = prune_model(model, example=x[:1], batches=lambda: [(x[:2], y[:2]), (x[2:], y[2:])], check_inputs=x,
                    options=PruneOptions(target_macs=0.7))
    assert r.check.passed and r.channels_removed > 0 and r.budget["within_tolerance"]


def test_same_padded_conv_is_sliced_and_its_border_respected():
    """timm's Conv2dSame pads by the input size (asymmetric at stride 2): sliced as a Conv2d, and a dead
    channel whose constant would fold into it stays by default (the fold is wrong in the border windows)."""
    from timm.layers import Conv2dSame

    from explainfix_cli.core.model import same_padded

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
            self.c2 = Conv2dSame(8, 8, 3, stride=2)
            self.head = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.c2(torch.relu(self.bn(self.c1(x)))))

    m = M().eval()
    assert same_padded(m.c2) and not same_padded(m.c1) and not same_padded(m.head)
    with torch.no_grad():
        m.c1.weight[[2, 5]] = 0
        m.c1.bias[[2, 5]] = 0
        m.bn.bias[2], m.bn.bias[5] = 0.7, -3.0  # channel 2: relu(0.7) folds inexactly; channel 5: relu(-3) = 0
    x = torch.randn(4, 3, 15, 16)
    zeroed = copy.deepcopy(m)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.check.passed and r.check.pruned_vs_masked_rel <= 1e-4
    assert m.c1.out_channels == 7 and m.c2.in_channels == 7  # 5 removed (exact), 2 kept (inexact fold)
    with torch.no_grad():
        assert torch.allclose(m(x), zeroed(x), rtol=1e-5, atol=1e-5)
