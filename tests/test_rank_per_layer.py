"""``--rank l1-per-layer``: channel groups by Σ|w| per cost, normalised within their layer (about the same
fraction from every layer), on a real torchvision model; data then only feeds BatchNorm and the agreement."""
import torch
from conftest import seeded_batches, small_resnet18
from torch import nn

from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model


def _kept(model, before):
    return {n: m.out_channels / before[n] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _prune(rank, batches):
    model = small_resnet18()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    r = prune_model(model, example=torch.randn(1, 3, 48, 48), batches=batches,
                    options=PruneOptions(target_macs="4x", rank=rank))
    assert r.check.passed
    return r, _kept(model, before)


def test_scores_are_magnitudes_even_with_data():
    with_data, kept_with = _prune("l1-per-layer", seeded_batches())
    without, kept_without = _prune("l1-per-layer", None)
    assert kept_with == kept_without  # the same ranking: Σ|w| does not depend on the data
    assert with_data.agreement is not None and with_data.eval_samples == 12  # the data still measures it
    assert abs(with_data.macs_after / with_data.macs_before - 0.25) <= 0.25 * 0.02


def test_every_layer_loses_about_the_same_fraction():
    _, per_layer = _prune("l1-per-layer", seeded_batches())
    _, per_cost = _prune("per-cost", seeded_batches())
    spread = lambda kept: max(kept.values()) - min(kept.values())  # noqa: E731
    assert spread(per_layer) < spread(per_cost)
    assert spread(per_layer) <= 0.1, per_layer  # measured 0.03 (per-cost: 0.59)
