"""Channels-last passes (core/layout.py): faster kernels, the same numbers, nothing visible outside the pass."""
import torch
from conftest import seeded_batches, small_resnet18
from torch import nn

from explainfix_cli.channels import graph as graph_mod
from explainfix_cli.core.layout import channels_last
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model
from explainfix_cli.prune.scoring import score_model


def _layouts(model):
    return {n: p.is_contiguous() for n, p in model.named_parameters()}


def test_a_torchvision_model_runs_channels_last_inside_and_gets_its_layout_back():
    model = small_resnet18()
    before = _layouts(model)
    x = torch.randn(1, 3, 48, 48)
    with channels_last(model, x) as used:
        assert used
        assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert not model.conv1.weight.is_contiguous()
        assert model(x).shape == (1, 5)
    assert _layouts(model) == before and all(before.values())


class NeedsNCHW(nn.Module):
    """A forward whose ``.view`` only works on NCHW strides (common in hand-written models)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


def test_a_forward_that_needs_nchw_strides_keeps_them():
    model = NeedsNCHW().eval()
    x = torch.randn(2, 3, 8, 8)
    with channels_last(model, x) as used:
        assert not used
        assert model.conv.weight.is_contiguous()
        model(x)  # still runs


def test_channel_scores_are_those_of_the_contiguous_model(monkeypatch):
    batches = seeded_batches()
    example = torch.randn(1, 3, 48, 48)
    model = small_resnet18()
    gm = graph_mod.trace(model, example)
    plain = score_model(model, gm, "channel", batches)
    with channels_last(model, example) as used:
        fast = score_model(model, gm, "channel", batches)
    assert used
    for name, params in plain.scores.items():
        for pn, s in params.items():
            # float rounding of the NHWC kernels only: per element, relative to the layer's largest score
            torch.testing.assert_close(fast.scores[name][pn], s, rtol=1e-3, atol=1e-5 * float(s.abs().max()))
    assert [p.tolist() for p in fast.record.preds] == [p.tolist() for p in plain.record.preds]


def test_pruning_with_and_without_channels_last_removes_the_same_channels(monkeypatch):
    example = torch.randn(1, 3, 48, 48)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("EXPLAINFIX_CHANNELS_LAST", flag)
        model = small_resnet18()
        res = prune_model(model, example=example, batches=seeded_batches(), options=PruneOptions(target_macs="2x"))
        assert res.check.passed
        assert all(p.is_contiguous() for p in model.parameters())
        results.append((res.macs_after, {n: tuple(p.shape) for n, p in model.named_parameters()}, res.agreement))
    assert results[0] == results[1]


def test_the_probe_leaves_training_mode_and_batchnorm_statistics_alone():
    model = small_resnet18().train()
    stats = model.bn1.running_mean.clone()
    with channels_last(model, torch.randn(4, 3, 48, 48)) as used:
        assert used and model.training and model.layer1[0].bn1.training
        assert torch.equal(model.bn1.running_mean, stats)
