"""The channel criterion's ranks: ``--rank l1-per-layer`` (channel groups by Σ|w| within their layer, the same
fraction from every layer; pinned, the data then only feeds BatchNorm and the agreement), ``--rank auto`` (the default:
per-cost up to 8× fewer, l1-per-layer beyond; on a network with depthwise convs the same fraction from every layer at every
budget: sensitivity up to 2×, every layer cut to the same measured loss per cost, and l1-per-layer beyond) and every rank's budget and self-check on real torchvision models."""
import pytest
import torch
from conftest import seeded_batches, small_resnet18
from torch import nn

from explainfix_cli.core.errors import BadInput
from explainfix_cli.prune.options import RANKS, PruneOptions
from explainfix_cli.prune.pruner import prune_model


def _kept(model, before):
    return {n: m.out_channels / before[n] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _prune(rank, batches, target="4x"):
    model = small_resnet18()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    r = prune_model(model, example=torch.randn(1, 3, 48, 48), batches=batches,
                    options=PruneOptions(target_macs=target, rank=rank))
    assert r.check.passed
    return r, _kept(model, before)


def test_scores_are_magnitudes_even_with_data():
    with_data, kept_with = _prune("l1-per-layer", seeded_batches())
    without, kept_without = _prune("l1-per-layer", None)
    assert kept_with == kept_without  # the same ranking: Σ|w| does not depend on the data
    assert with_data.agreement is not None and with_data.eval_samples == 12  # the data still measures it
    assert abs(with_data.macs_after / with_data.macs_before - 0.25) <= 0.25 * 0.02


def test_biases_do_not_rank_channels():
    """Σ|w| scores the weights a channel passes its input on with, not the shift it adds: large random BatchNorm
    β and conv biases leave the l1-per-layer plan unchanged (counted, they reorder every layer)."""
    torch.manual_seed(0)
    model = small_resnet18()
    shifted = small_resnet18()
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in shifted.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(10 * torch.randn_like(m.bias))
    kept = []
    for net in (model, shifted):
        before = {n: m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
        r = prune_model(net, example=torch.randn(1, 3, 48, 48), batches=None,
                        options=PruneOptions(target_macs="4x", rank="l1-per-layer"))
        assert r.check.passed
        kept.append({n: m.weight.detach().abs().sum().item() for n, m in net.named_modules() if isinstance(m, nn.Conv2d)})
        assert _kept(net, before)
    assert kept[0] == pytest.approx(kept[1], rel=1e-6)  # the same channels kept in every conv


def test_every_layer_loses_about_the_same_fraction():
    _, per_layer = _prune("l1-per-layer", seeded_batches())
    _, per_cost = _prune("per-cost", seeded_batches())
    spread = lambda kept: max(kept.values()) - min(kept.values())  # noqa: E731
    assert spread(per_layer) < spread(per_cost)
    assert spread(per_layer) <= 0.1, per_layer  # measured 0.0 on the exact quantile order (per-cost: 0.59)


@pytest.mark.parametrize("budget,want", [
    (dict(target_macs="2x"), "per-cost"), (dict(target_macs="4x"), "per-cost"), (dict(target_macs="5x"), "per-cost"),
    (dict(target_macs="0.2"), "per-cost"), (dict(target_macs="6x"), "per-cost"), (dict(target_macs="8x"), "per-cost"),
    (dict(target_macs="9x"), "l1-per-layer"), (dict(target_macs="0.1"), "l1-per-layer"),
    (dict(target_params="10x"), "l1-per-layer"), (dict(target_params="3x"), "per-cost"), (dict(pct=50), "per-cost"),
])
def test_auto_chooses_the_rank_by_budget(budget, want):
    opts = PruneOptions(criterion="channel", **budget).resolved(has_data=True)
    assert opts.rank == "auto"
    rank, why = opts.ranking
    assert rank == want and why.startswith("auto")
    assert ("beyond 8×" in why) == (want == "l1-per-layer") or "no budget" in why


@pytest.fixture(scope="module")
def nets():
    tv = pytest.importorskip("torchvision")
    return {"resnet18": small_resnet18(), "resnext50": tv.models.resnext50_32x4d(),
            "mobilenet_v2": tv.models.mobilenet_v2(num_classes=10), "mobilenet_v3_small": tv.models.mobilenet_v3_small()}


@pytest.mark.parametrize("budget,depthwise_rank", [("1.5x", "sensitivity"), ("2x", "sensitivity"),
                                                   ("2.1x", "l1-per-layer"), ("4x", "l1-per-layer"), ("10x", "l1-per-layer")])
def test_auto_is_uniform_at_every_budget_on_a_network_with_depthwise_convolutions(budget, depthwise_rank, nets):
    opts = PruneOptions(target_macs=budget).resolved(has_data=True)
    plain = opts.with_model(nets["resnet18"]).ranking[0]
    assert plain == ("l1-per-layer" if budget == "10x" else "per-cost")  # no depthwise: per-cost up to 8x
    for name in ("mobilenet_v2", "mobilenet_v3_small"):
        dw = opts.with_model(nets[name])
        rank, why = dw.ranking
        assert rank == depthwise_rank and "on a network with depthwise convolutions" in why, why
        assert dw.needs_saliency == (rank == "sensitivity")  # beyond 2x Σ|w|: the gradient pass is skipped
        assert "depthwise" not in dw.to_json()  # a fact of the model, said in rank_why, not an option
    assert opts.with_model(nets["resnet18"]).needs_saliency == (plain == "per-cost")
    # grouped but not depthwise (ResNeXt's groups < in_channels) keeps the 8x switch
    assert opts.with_model(nets["resnext50"]).depthwise is False


def test_which_options_need_the_saliency_pass(nets):
    dw = nets["mobilenet_v2"]
    assert not PruneOptions(target_macs="2x", rank="l1-per-layer").resolved(has_data=True).needs_saliency
    assert PruneOptions(target_macs="2x", rank="per-cost").resolved(has_data=True).with_model(dw).needs_saliency
    assert PruneOptions(target_macs="4x", rank="saliency-per-layer").resolved(has_data=True).with_model(dw).needs_saliency
    assert PruneOptions(pct=50).resolved(has_data=True).with_model(dw).needs_saliency  # the paper's filter saliency
    assert not PruneOptions(pct=50, criterion="magnitude").resolved(has_data=True).needs_saliency


def test_saliency_per_layer_takes_the_same_fraction_as_l1_but_other_channels():
    _, by_saliency = _prune("saliency-per-layer", seeded_batches())
    _, by_l1 = _prune("l1-per-layer", seeded_batches())
    # the same allocation (ties between layers of one size may be cut one group apart)
    assert max(abs(by_saliency[n] - by_l1[n]) for n in by_l1) <= 0.07, (by_saliency, by_l1)
    model_s, model_l = small_resnet18(), small_resnet18()
    for m, rank in ((model_s, "saliency-per-layer"), (model_l, "l1-per-layer")):
        prune_model(m, example=torch.randn(1, 3, 48, 48), batches=seeded_batches(),
                    options=PruneOptions(target_macs="4x", rank=rank))
    # the channels kept differ: the stem keeps different rows of the original's weight
    w_s, w_l = model_s.conv1.weight, model_l.conv1.weight
    assert w_s.shape == w_l.shape and not torch.equal(w_s, w_l)


def test_without_data_no_rank_claims_the_saliency(nets):
    dw = PruneOptions(target_macs="2x").resolved(has_data=False).with_model(nets["mobilenet_v2"])
    rank, why = dw.ranking
    assert rank == "l1-per-layer" and "no --data" in why, why  # with data this budget is sensitivity
    plain = PruneOptions(target_macs="2x").resolved(has_data=False).with_model(nets["resnet18"]).ranking
    assert plain[0] == "per-cost" and "no --data: Σ|w| per cost" in plain[1]
    for rank in ("saliency", "saliency-per-layer", "sensitivity"):
        with pytest.raises(BadInput, match=f"--rank {rank} ranks by the saliency, which needs calibration data"):
            PruneOptions(target_macs="2x", rank=rank).resolved(has_data=False)


def test_a_pruner_made_for_any_budget_computes_the_saliency_and_one_made_without_refuses():
    from explainfix_cli.prune.pruner import Pruner
    import copy

    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    batches = lambda: iter([(x, torch.tensor([0, 1, 2, 3]))])  # noqa: E731
    lean = Pruner(copy.deepcopy(model), PruneOptions(target_macs="4x"), x[:1], batches, gradients=False)
    with pytest.raises(BadInput, match="sensitivity at this budget ranks by the saliency"):
        lean.to("2x", model=copy.deepcopy(model))  # never silently Σ|w| where the rank says saliency
    assert lean._scored is None  # refused before the data was read
    # the default (gradients=None): its own 4x ranks by Σ|w|, but 2x can still be asked
    both = Pruner(copy.deepcopy(model), PruneOptions(target_macs="4x"), x[:1], batches)
    r2 = both.to("2x", model=copy.deepcopy(model), check_inputs=x)
    r4 = both.to("4x", model=copy.deepcopy(model), check_inputs=x)
    assert both.scored().gradients
    assert r2.options["rank_used"] == "sensitivity" and r4.options["rank_used"] == "l1-per-layer"
    assert r2.check.passed and r4.check.passed


def test_auto_on_mobilenet_v2_prunes_as_l1_per_layer_and_the_report_says_why():
    tv = pytest.importorskip("torchvision")
    x = torch.randn(4, 3, 64, 64)
    batches = lambda: iter([(x, torch.tensor([0, 1, 2, 3]))])  # noqa: E731
    kept = {}
    for rank in ("auto", "l1-per-layer"):
        torch.manual_seed(0)
        model = tv.models.mobilenet_v2(num_classes=10).eval()
        r = prune_model(model, example=x[:1], check_inputs=x, batches=batches, options=PruneOptions(target_macs="3x", rank=rank))
        assert r.check.passed
        kept[rank] = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        if rank == "auto":
            assert r.options["rank_used"] == "l1-per-layer" and "depthwise convolutions" in r.options["rank_why"]
    assert kept["auto"] == kept["l1-per-layer"]


def test_a_given_rank_is_kept_at_every_budget():
    for rank in RANKS[1:]:
        for target in ("2x", "10x"):
            assert PruneOptions(target_macs=target, rank=rank).resolved(has_data=True).ranking == (rank, f"--rank {rank}")


def test_auto_beyond_8x_prunes_as_l1_per_layer_and_the_report_says_why():
    auto, kept_auto = _prune("auto", seeded_batches(), target="10x")
    uniform, kept_uniform = _prune("l1-per-layer", seeded_batches(), target="10x")
    assert kept_auto == kept_uniform
    assert auto.options["rank"] == "auto" and auto.options["rank_used"] == "l1-per-layer"
    assert "10× fewer MACs is beyond 8×" in auto.options["rank_why"]
    low, kept_low = _prune("auto", seeded_batches(), target="2x")
    assert low.options["rank_used"] == "per-cost" and kept_low == _prune("per-cost", seeded_batches(), target="2x")[1]


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v2"])  # concat (fire modules); depthwise, inverted residuals
@pytest.mark.parametrize("rank", RANKS)
def test_every_rank_meets_the_budget_exactly(name, rank):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, name)(num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    r = prune_model(model, example=x[:1], check_inputs=x, batches=lambda: iter([(x, torch.tensor([0, 1, 2, 3]))]),
                    options=PruneOptions(target_macs="0.3", rank=rank, round_to=1))
    assert r.budget["within_tolerance"] and abs(r.budget["achieved"] - 0.3) <= 0.02 * 0.3, r.budget
    assert r.check.passed and r.check.pruned_vs_masked_rel <= 1e-4
