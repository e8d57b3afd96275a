"""Choose what to remove: the filter criteria (zero the least salient spatial filters, then remove the
channels that died) and the channel criterion (remove the least salient channel groups), each to a
``--pct`` or to a budget (budget.py).

Both work on the model in place and leave it as the *asked-for* model: zeroed for the filter criteria,
unchanged for the channel criterion (whose reference is the plan's masked equivalent).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..channels import graph as graph_mod
from ..channels.labels import ChannelGraph
from ..channels.plan import Plan, plan_removal
from ..core.errors import BadInput
from ..core.model import count_macs, count_params, iter_spatial_convs, to_device
from ..io.edits import apply_edit
from . import saliency as sal
from .budget import BudgetOutcome, check_reachable, search
from .channel import layers_of, magnitudes, output_sizes, removal_order, score_groups, scored_modules
from .options import MAGNITUDE_RANKS, PruneOptions
from .sensitivity import levels as sensitivity_levels


@dataclass
class Selection:
    plan: Plan
    graph: ChannelGraph
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # filter criteria: zeroed kernels per conv
    pct: float | None = None
    groups_removed: int = 0
    budget: BudgetOutcome | None = None
    rounding_macs: int = 0  # MACs the plan keeps (one input) so that channel counts stay multiples of --round-to


class Costs:
    """MACs (one input) or parameters of the model a plan would produce, counted on a copy on the ``meta``
    device: the same ops and shapes as the real model (FlopCounterMode counts shapes), no weights copied and
    nothing computed, so a budget search can afford dozens of plans. A model whose forward needs real values
    (or whose edit cannot be replayed on meta tensors) is counted on a real copy instead."""

    def __init__(self, model: nn.Module, example: Any, metric: str):
        self.model, self.metric, self.example = model, metric, example
        try:
            self.meta: nn.Module | None = copy.deepcopy(model).to("meta")
            self.meta_example = to_device(example, "meta")
        except Exception:  # noqa: BLE001 - e.g. a module that refuses meta tensors
            self.meta = None

    def __call__(self, plan: Plan) -> int:
        if self.meta is not None:
            try:
                return self._count(copy.deepcopy(self.meta), plan, self.meta_example)
            except Exception:  # noqa: BLE001 - value-dependent forward: count for real from now on
                self.meta = None
        return self._count(copy.deepcopy(self.model), plan, self.example)

    def _count(self, pruned: nn.Module, plan: Plan, example: Any) -> int:
        apply_edit(pruned, plan.edit)
        return count_macs(pruned, example) if self.metric == "macs" else count_params(pruned)



def _before(model: nn.Module, example: Any, metric: str, macs_before: int) -> int:
    return macs_before if metric == "macs" else count_params(model)


FILTER_FLOOR = " (zeroing more filters frees no more channels)"
MAX_PCT = 99.9  # the filter criteria's search range ends here


def channel_floor_why(opts: PruneOptions, graph: ChannelGraph | None = None) -> str:
    frozen = graph.frozen_by if graph is not None else {}
    most = f", most of them by {next(iter(frozen))}" if frozen else ""
    return f" (every layer keeps ≥ {opts.floor:.0%} of its channels; frozen channels stay{most})"


def check_budget(model: nn.Module, gm: fx.GraphModule, opts: PruneOptions, example: Any,
                 macs_before: int) -> tuple[float, ChannelGraph | None]:
    """Refuse a budget no plan reaches before any data is read: the floor is a property of the channel plan,
    not of the scores. It is measured on the plan that removes the most — the channel criterion's groups taken
    largest saving first (under ``opts.floor``), the filter criteria's ``MAX_PCT`` % lowest kernels by
    magnitude — and the model is left as it was. Returns that floor (fraction kept) and, for the channel
    criterion, the channel analysis of the model as it is (the scoring pass reuses it)."""
    assert opts.budget is not None
    metric, target = opts.budget
    total = _before(model, example, metric, macs_before)
    costs = Costs(model, example, metric)
    if opts.criterion == "channel":
        graph = graph_mod.analyse(gm)
        groups = score_groups(gm, graph, magnitudes(model, graph), output_sizes(model, example, scored_modules(graph)))
        for g in groups.values():  # equal scores: per-cost order is then the largest saving first
            g.saliency = 1.0
        order = removal_order(graph, groups, opts.ranking[0], metric, opts.floor)  # which groups the floor skips
        # depends on the order (a group shared by producers stops at the first one at its floor): the rank's own
        floor = costs(plan_removal(gm, graph, opts.round_to, remove=set(order))) / total
        why = channel_floor_why(opts, graph)
    else:
        graph = None
        convs = iter_spatial_convs(model)
        originals = [m.weight.detach().clone() for _, m in convs]
        try:
            sal.zero_least_salient_spatial_filters(model, sal.get_spatial_filter_magnitude(model), MAX_PCT)
            plan = plan_removal(gm, graph_mod.analyse(gm), opts.round_to, allow_inexact=opts.allow_inexact_folds)
        finally:
            with torch.no_grad():
                for (_, m), w in zip(convs, originals):
                    m.weight.copy_(w)
        floor = costs(plan) / total
        why = FILTER_FLOOR
    check_reachable(floor, target, metric, why)
    return floor, graph


def select_filters(model: nn.Module, gm: fx.GraphModule, scores: list[torch.Tensor], opts: PruneOptions,
                   example: Any, macs_before: int) -> Selection:
    """Zero the globally least salient ``pct`` % of spatial filters (searched for a budget), in place."""
    convs = iter_spatial_convs(model)
    originals = [m.weight.detach().clone() for _, m in convs]

    def zero_and_plan(pct: float) -> tuple[list[torch.Tensor], ChannelGraph, Plan]:
        with torch.no_grad():
            for (_, m), w in zip(convs, originals):
                m.weight.copy_(w)
        masks = sal.zero_least_salient_spatial_filters(model, scores, pct)
        graph = graph_mod.analyse(gm)
        return masks, graph, plan_removal(gm, graph, opts.round_to, allow_inexact=opts.allow_inexact_folds)

    outcome = None
    pct = opts.pct
    if opts.budget is not None:
        metric, target = opts.budget
        total = _before(model, example, metric, macs_before)

        costs = Costs(model, example, metric)

        def kept(p: float) -> float:
            return costs(zero_and_plan(p)[2]) / total
        outcome = search(kept, 0.0, MAX_PCT, target, metric, integer=False, why_floor=FILTER_FLOOR)
        pct = outcome.knob
    masks, graph, plan = zero_and_plan(pct)
    cost = rounding_macs(model, example, plan,
                         lambda: plan_removal(gm, graph, 1, allow_inexact=opts.allow_inexact_folds))
    return Selection(plan, graph, {n: mk for (n, _), mk in zip(convs, masks)}, pct, 0, outcome, cost)


def select_channels(model: nn.Module, gm: fx.GraphModule, graph: ChannelGraph,
                    saliency: dict[str, dict[str, torch.Tensor]], sizes: dict[str, int], opts: PruneOptions,
                    example: Any, macs_before: int, probe: Callable[[dict], dict] | None = None) -> Selection:
    """Remove the least salient channel groups (the engine's coupled spaces of ``graph``, analysed once by
    the caller): ``pct`` % of them, or as many as the budget asks. The search only re-plans. A rank that
    orders by Σ|w| (``l1-per-layer``) scores the groups by the model's weights, not by ``saliency``; the
    ``sensitivity`` rank calls ``probe(layers)`` for each layer's measured curve (sensitivity.measure)."""
    rank = opts.ranking[0]
    if rank in MAGNITUDE_RANKS:
        saliency = magnitudes(model, graph)
    groups = score_groups(gm, graph, saliency, sizes)
    metric = opts.budget[0] if opts.budget else "macs"
    levels = None
    if rank == "sensitivity":
        if probe is None:
            raise BadInput("--rank sensitivity measures each layer on the calibration data, and none was given",
                           hint="pass --data PATH, or use --rank l1-per-layer")
        layers = layers_of(groups, rank, metric)
        levels = sensitivity_levels(layers, probe(layers), metric)
    order = removal_order(graph, groups, rank, metric, opts.floor, levels)

    def plan_for(k: float) -> Plan:
        return plan_removal(gm, graph, opts.round_to, remove=set(order[: int(k)]))

    outcome = None
    if opts.budget is not None:
        metric, target = opts.budget
        total = _before(model, example, metric, macs_before)
        costs = Costs(model, example, metric)
        outcome = search(lambda k: costs(plan_for(k)) / total, 0, len(order), target, metric,
                         integer=True, why_floor=channel_floor_why(opts, graph))
        k = int(outcome.knob)
    else:
        k = round(opts.pct / 100 * len(order))
    plan = plan_for(k)
    cost = rounding_macs(model, example, plan, lambda: plan_removal(gm, graph, 1, remove=set(order[:k])))
    return Selection(plan, graph, {}, None, k, outcome, cost)


def rounding_macs(model: nn.Module, example: Any, plan: Plan, unrounded: Any) -> int:
    """What rounding cost: MACs of ``plan`` minus those of the same plan without rounding (``unrounded()``
    makes it); 0 when no layer gave channels back."""
    if not plan.rounded:
        return 0
    costs = Costs(model, example, "macs")
    return max(0, costs(plan) - costs(unrounded()))
