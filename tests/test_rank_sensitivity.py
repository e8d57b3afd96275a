"""``--rank sensitivity`` (prune/sensitivity.py): each layer's channels by saliency per cost, each layer cut to the
same measured output loss per cost. The probe on a real torchvision MobileNetV2, the ordering it produces, its
reuse across budgets, and its refusal without data. (Its budget and self-check on a concat and a depthwise model:
test_rank_per_layer.py, every rank; two ranks against one: test_distributed.py.)"""
import copy

import pytest
import torch
from torch import nn

from explainfix_cli.channels import graph as graph_mod
from explainfix_cli.core.errors import BadInput
from explainfix_cli.prune import sensitivity
from explainfix_cli.prune.channel import Group, layers_of, magnitudes, output_sizes, removal_order, score_groups, scored_modules
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import Pruner, prune_model


def _groups(layer_sizes, macs):
    """Groups of made-up layers: layer k has layer_sizes[k] groups of ``macs[k]`` MACs each, one producer."""
    groups, root = {}, 0
    for k, (n, m) in enumerate(zip(layer_sizes, macs)):
        for i in range(n):
            groups[root] = Group(root, saliency=float(i + 1), macs=m, params=m, producers={f"conv{k}": 1})
            root += 1
    return groups


def test_levels_cut_the_insensitive_layer_first_and_divide_by_what_the_layer_costs():
    groups = _groups([4, 4], [1.0, 1.0])
    layers = layers_of(groups, "sensitivity", "macs")
    flat, steep = layers
    lv = sensitivity.levels(layers, {flat: [0.01, 0.02, 0.03], steep: [0.1, 0.5, 2.0]})
    order = sorted(lv, key=lv.get)
    assert [groups[r].producers for r in order[:4]] == [{"conv0": 1}] * 4  # all of the flat layer before any other
    assert lv[layers[steep][0].root] == pytest.approx(0.1)  # 1 of 4 removed: the curve's point at 0.25
    assert lv[layers[flat][-1].root] == pytest.approx(0.03 + 0.01)  # 4 of 4: the last slope beyond 0.75
    # the same curves, the steep layer 8× as costly: per cost it goes first (its loss per MAC saved is lower)
    costly = _groups([4, 4], [1.0, 8.0])
    layers = layers_of(costly, "sensitivity", "macs")
    lv = sensitivity.levels(layers, dict(zip(layers, ([0.01, 0.02, 0.03], [0.05, 0.1, 0.15]))))
    assert sorted(lv, key=lv.get)[0] == layers[list(layers)[1]][0].root
    # a curve that dips (noise) is made non-decreasing: no group of a layer overtakes an earlier one
    lv = sensitivity.levels(layers, dict(zip(layers, ([0.05, 0.01, 0.06], [0.1, 0.2, 0.3]))))
    first = [lv[g.root] for g in layers[list(layers)[0]]]
    assert first == sorted(first)


def test_removal_order_interleaves_layers_by_level_and_keeps_the_floor():
    groups = _groups([10, 10], [1.0, 1.0])
    layers = layers_of(groups, "sensitivity", "macs")
    lv = sensitivity.levels(layers, dict(zip(layers, ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]))))

    class Producers:  # the graph's producers: only their row counts are read
        producers = [type("P", (), {"module": f"conv{k}", "labels": torch.zeros(10)})() for k in range(2)]
    order = removal_order(Producers, groups, "sensitivity", "macs", floor=0.3, levels=lv)
    # the flat layer down to its floor (3 of 10 kept) first, then the other
    assert [groups[r].producers for r in order] == [{"conv0": 1}] * 7 + [{"conv1": 1}] * 7
    # without levels (the floor check has no scores) it is the per-layer quantile order
    plain = removal_order(Producers, groups, "sensitivity", "macs", floor=0.3)
    assert plain == removal_order(Producers, groups, "saliency-per-layer", "macs", floor=0.3)


def _data(n=16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return lambda: iter([(x[:8], torch.arange(8) % 10), (x[8:], torch.arange(8) % 10)])


@pytest.fixture(scope="module")
def mobilenet():
    """A torchvision MobileNetV2 whose outputs depend on its input: BatchNorm statistics estimated on the test
    data and a classifier of unit scale (at initialisation its outputs are constant to 1e-11, and every layer
    measures zero)."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.mobilenet_v2(num_classes=10)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for x, _ in _data()():
            model(x)
        nn.init.normal_(model.classifier[1].weight, std=1.0)
    return model.eval()


def test_the_probe_measures_nothing_where_the_output_ignores_a_layer_and_leaves_the_model_as_it_was(mobilenet):
    model = copy.deepcopy(mobilenet)
    with torch.no_grad():  # block 3 (a residual block) adds nothing: its projection reads none of its 144 channels
        model.features[3].conv[2].weight.zero_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    gm = graph_mod.trace(model, x)
    graph = graph_mod.analyse(gm)
    groups = score_groups(gm, graph, magnitudes(model, graph), output_sizes(model, x, scored_modules(graph)))
    layers = layers_of(groups, "sensitivity", "macs")
    seen = []
    curves = sensitivity.measure(model, graph, layers, _data(), "cpu", progress=lambda *a: seen.append(a))
    assert set(curves) == set(layers) and all(len(c) == len(sensitivity.GRID) for c in curves.values())
    ignored = ("features.3.conv.0.0",)
    assert curves[ignored] == [0.0, 0.0, 0.0]
    assert all(c[-1] > 0 for k, c in curves.items() if k != ignored)  # every other layer changes the output
    assert seen[-1] == ("layer probe", len(layers), len(layers))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # hooks only, all removed
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_the_probe_runs_once_for_every_budget_of_a_pruner(mobilenet):
    stages = []
    pruner = Pruner(copy.deepcopy(mobilenet), PruneOptions(target_macs="2x", rank="sensitivity"), torch.randn(1, 3, 32, 32),
                    _data(), stage_progress=lambda stage, done, total: stages.append(stage))
    results = [pruner.to(b, model=copy.deepcopy(mobilenet)) for b in ("1.5x", "3x")]
    assert all(r.check.passed and r.options["rank_used"] == "sensitivity" for r in results)
    assert [r.budget["within_tolerance"] for r in results] == [True] * 2
    layers = len(pruner.scored().curves)
    assert stages.count("layer probe") == layers  # one probe per layer, for both budgets
    assert results[0].timings["sensitivity"] > 0 and "sensitivity" not in results[1].timings


def test_an_output_of_one_column_is_measured_by_its_error_and_an_unmeasurable_layer_is_cut_last():
    """KL over one class is always 0: a one-logit output (binary classifier, regression) is measured by its
    relative squared error. A layer the probe could not measure (UNMEASURED) goes after every measured one."""
    ref, out = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [1.0]])
    assert sensitivity._divergence(ref, out) == (1.0, 5.0)
    assert sensitivity._divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))[0] > 0  # KL
    groups = _groups([4, 4], [1.0, 1.0])
    layers = layers_of(groups, "sensitivity", "macs")
    lv = sensitivity.levels(layers, dict(zip(layers, ([sensitivity.UNMEASURED] * 3, [5.0, 50.0, 500.0]))))
    order = sorted(lv, key=lv.get)
    assert [groups[r].producers for r in order[:4]] == [{"conv1": 1}] * 4


def test_a_layer_the_probe_finds_insensitive_is_cut_further(mobilenet):
    """Against the same fraction from every layer: with block 3's projection zeroed, the sensitivity rank takes
    its hidden layer to the floor."""
    model = copy.deepcopy(mobilenet)
    with torch.no_grad():
        model.features[3].conv[2].weight.zero_()
    kept = {}
    for rank in ("sensitivity", "saliency-per-layer"):
        m = copy.deepcopy(model)
        r = prune_model(m, PruneOptions(target_macs="2x", rank=rank, round_to=1), example=torch.randn(1, 3, 32, 32),
                        batches=_data())
        assert r.check.passed
        kept[rank] = m.features[3].conv[0][0].out_channels
    assert kept["sensitivity"] == 15 < kept["saliency-per-layer"]  # ⌈10 % of 144⌉: the floor


def _prober(model, x):
    gm = graph_mod.trace(model, x)
    graph = graph_mod.analyse(gm)
    groups = score_groups(gm, graph, magnitudes(model, graph), output_sizes(model, x, scored_modules(graph)))
    layers = layers_of(groups, "sensitivity", "macs")
    return lambda batches: sensitivity.measure(model, graph, layers, batches, "cpu", grid=(0.5,))  # one pass a layer


def test_a_dense_output_is_measured_by_its_relative_error_and_large_outputs_are_capped(monkeypatch):
    """A segmentation model (LR-ASPP MobileNetV3, a dict output of 4 × H × W): the squared error relative to the
    output's; with PROBE_ELEMENTS below one batch's numbers only the first batch is read."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(2, 3, 32, 32, generator=g), torch.zeros(2, dtype=torch.long)) for _ in range(2)]
    probe = _prober(model, data[0][0][:1])
    both = probe(lambda: iter(data))
    values = [v for c in both.values() for v in c]
    assert max(values) > 0 and sensitivity.UNMEASURED not in values
    monkeypatch.setattr(sensitivity, "PROBE_ELEMENTS", 1)
    capped = probe(lambda: iter(data))
    monkeypatch.undo()
    first = probe(lambda: iter(data[:1]))
    assert capped == first and capped != both


def test_a_linear_layer_on_channels_last_inputs_is_probed_on_its_last_dimension():
    """ConvNeXt's blocks are depthwise convs then Linear layers on (N, H, W, C) inputs: the probe replaces the
    last dimension's channels (dimension 1 would be a height), and auto picks the rank there up to 2x."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10, conv_mlp=False).eval()  # Linear MLPs
    g = torch.Generator().manual_seed(6)
    data = [(torch.randn(4, 3, 64, 64, generator=g), torch.arange(4))]
    original = copy.deepcopy(model)
    r = prune_model(model, PruneOptions(target_macs="0.8"), example=data[0][0][:1], check_inputs=data[0][0],
                    batches=lambda: iter(data))
    assert r.options["rank_used"] == "sensitivity" and r.check.passed and r.budget["within_tolerance"], r.budget
    assert r.channels_removed > 0
    graph = graph_mod.analyse(graph_mod.trace(original, data[0][0][:1]))
    assert any(c.kind == "linear" and "mlp" in c.module for c in graph.consumers)  # the case this test is for
