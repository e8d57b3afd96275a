"""Saliency against a hand-computed case, the global ranking, and the fill modes."""
import math

import pytest
import torch
from torch import nn

from explainfix_cli.core.gradients import normalise_output, onehot_targets
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.core.model import iter_spatial_convs
from explainfix_cli.prune.saliency import get_spatial_filter_magnitude, get_spatial_filter_saliency, global_lowest
from explainfix_cli.prune.pipeline import fill_zero_initialization
from explainfix_cli.prune.pruner import prune_model


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(2 * 2 * 2, 3, bias=False)).eval()


def test_saliency_matches_hand_computation():
    model = tiny_net()
    x = torch.randn(5, 1, 4, 4)
    y = torch.tensor([0, 2, 1, 1, 0])
    scores = get_spatial_filter_saliency(model, [(x, y)], "cpu", target_fn=onehot_targets)
    # by hand: C = Σ_n ŷ[n, y_n]; ∂C/∂W through the linear map, no normalisation effect on the gradient
    w = model[0].weight.detach().clone().requires_grad_(True)
    out = torch.nn.functional.conv2d(x, w).flatten(1) @ model[2].weight.detach().T
    cost = out[torch.arange(5), y].sum()
    (g,) = torch.autograd.grad(cost, w)
    expected = (w.detach() * g).abs().sum(dim=(2, 3))
    assert scores[0].shape == (2, 1)
    torch.testing.assert_close(scores[0], expected)


def test_saliency_sums_over_batches_and_respects_num_minibatches():
    model = tiny_net()
    x1, x2 = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    y = torch.tensor([0, 1, 2])
    one = get_spatial_filter_saliency(model, [(x1, y)], "cpu", target_fn=onehot_targets)[0]
    two = get_spatial_filter_saliency(model, [(x2, y)], "cpu", target_fn=onehot_targets)[0]
    both = get_spatial_filter_saliency(model, [(x1, y), (x2, y)], "cpu", target_fn=onehot_targets)[0]
    capped = get_spatial_filter_saliency(model, [(x1, y), (x2, y)], "cpu", num_minibatches=1, target_fn=onehot_targets)[0]
    torch.testing.assert_close(both, one + two)
    torch.testing.assert_close(capped, one)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_pseudo_labels_use_the_models_top_class():
    yhat = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    t = onehot_targets(yhat, torch.tensor([-1, 2]))
    assert t.tolist() == [[0, 1, 0], [0, 0, 1]]


def test_output_normalisation_keeps_gradient_identity():
    yhat = torch.tensor([2.0, -3.0], requires_grad=True)
    n = normalise_output(yhat)
    assert n.tolist() == [1.0, 1.0]
    (g,) = torch.autograd.grad((n * torch.tensor([5.0, 7.0])).sum(), yhat)
    assert g.tolist() == [5.0, 7.0]


def test_global_ranking_is_across_layers_and_floors_the_count():
    scores = [torch.tensor([[5.0, 1.0]]), torch.tensor([[0.5], [9.0], [2.0]])]
    masks = global_lowest(scores, 60)  # int(0.6 * 5) = 3 lowest: 0.5, 1.0, 2.0
    assert masks[0].tolist() == [[False, True]]
    assert masks[1].tolist() == [[True], [False], [True]]
    assert sum(int(m.sum()) for m in global_lowest(scores, 39)) == 1
    with pytest.raises(ValueError):
        global_lowest(scores, 101)


def test_magnitude_criterion_is_sum_of_abs():
    model = tiny_net()
    (m,) = get_spatial_filter_magnitude(model)
    torch.testing.assert_close(m, model[0].weight.abs().sum(dim=(2, 3)))


def test_fillzero_replaces_partial_zeros_by_kernel_stats_and_full_zeros_by_kaiming():
    conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[0, 0] = 0.0  # whole kernel zero
        conv.weight[1, 1, 0, 0] = 0.0  # one zero in a kernel whose other values are all 1 (std 1/3)
    fill_zero_initialization(conv, torch.Generator().manual_seed(0))
    w = conv.weight.detach()
    assert bool((w != 0).all())
    bound = 1 / math.sqrt(2 * 9)
    assert bool((w[0, 0].abs() <= bound).all())
    assert torch.equal(w[1, 0], torch.ones(3, 3))  # untouched kernel stays


def residual_toy():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.c1 = nn.Conv2d(8, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.c2(torch.relu(self.c1(x))) + x)
            return self.head(x.mean((2, 3)))

    torch.manual_seed(1)
    return Block().eval()


@pytest.mark.parametrize("fill", ["none", "reset", "fillzero"])
def test_fill_modes(fill):
    model = residual_toy()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    r = prune_model(model, PruneOptions(pct=60, fill=fill), example=x[:1], batches=lambda: [(x, y)], check_inputs=x)
    assert r.check.passed
    kept_zero = sum(int((m.weight.flatten(2).abs().sum(2) == 0).sum()) for _, m in iter_spatial_convs(model))
    if fill == "none":
        assert kept_zero > 0  # zeroed kernels that stayed are still zero
    elif fill == "fillzero":
        assert kept_zero == 0
    else:  # reset: every kept kernel is back to its original value
        assert kept_zero == 0
        c1 = model.c1.weight.detach()
        e = r.edit["modules"].get("c1", {})
        rows = [i for i in range(8) if i not in e.get("out", [])]
        cols = [i for i in range(8) if i not in e.get("in", [])]
        torch.testing.assert_close(c1, original["c1.weight"][rows][:, cols])
