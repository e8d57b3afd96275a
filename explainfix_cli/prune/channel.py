"""The channel-level ExplainFix criterion: score every removable channel group and order them.

A *group* is a space of the dependency engine (channels/labels.py): exactly the coupled set of channels
that is removed together (through residual adds, concats, depthwise layers, splits). Its score is the
ExplainFix saliency Σ|w · ∂C/∂w| of every weight its removal deletes — producer rows, channel-wise
parameters (BN, depthwise kernels) and consumer columns — from one gradient pass. ``rank="per-cost"``
divides by the MACs (or parameters) the group's removal saves, so cheap-to-keep channels go last.

:func:`removal_order` orders the groups, least important first — globally (``per-cost``, ``saliency``) or by
their quantile inside their layer (``l1-per-layer``, ``saliency-per-layer``), or by the measured loss their removal
takes their layer to (``sensitivity``: prune/sensitivity.py) — skipping any group whose removal would take a
producer below ``floor`` of its channels (every layer stays alive).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..channels.labels import ChannelGraph, Consumer
from ..channels.plan import column_sums
from .options import PER_LAYER_RANKS


@dataclass
class Group:
    root: int
    saliency: float
    macs: float  # saved by removing it (one input)
    params: float
    producers: dict[str, int]  # producer module → rows removed


def scored_modules(graph: ChannelGraph) -> list[str]:
    names = [p.module for p in graph.producers] + [c.module for c in graph.consumers] + [w.module for w in graph.channelwise]
    return list(dict.fromkeys(names))


def magnitudes(model: nn.Module, graph: ChannelGraph) -> dict[str, dict[str, torch.Tensor]]:
    """|w| of every weight a group's removal touches, in the shape of the saliency scores (no data). Biases
    (BatchNorm's β, a conv's bias) score zero (their parameters still count in the group's cost): they shift a
    channel, they do not say how much of its input it passes on, and counting them kept near-constant channels
    (as Torch-Pruning's magnitude leaves them out;
    session 13 on the depthwise bases: +1.2 to +2.9 points after recovery at 4×-6×, benchmarks/README.md)."""
    return {n: {pn: (p.detach().abs() if pn != "bias" else torch.zeros_like(p)).double().cpu()  # zero, yet counted
                for pn, p in model.get_submodule(n).named_parameters(recurse=False)}     # in a group's cost
            for n in scored_modules(graph)}


def output_sizes(model: nn.Module, example: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Spatial positions of each module's output for one input (1 for Linear)."""
    sizes: dict[str, int] = {}
    hooks = []
    for name in names:
        m = model.get_submodule(name)

        def hook(mod, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                sizes.setdefault(name, max(1, out[0].numel() // max(1, out.shape[1])) if out.dim() > 2 else 1)
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _rows(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Per output channel sum of a weight-shaped tensor."""
    if isinstance(m, nn.ConvTranspose2d):
        g = m.groups
        return t.reshape(g, t.shape[0] // g, t.shape[1], -1).sum(dim=(1, 3)).reshape(-1)
    return t.reshape(t.shape[0], -1).sum(1)


def score_groups(gm: fx.GraphModule, graph: ChannelGraph, saliency: dict[str, dict[str, torch.Tensor]],
                 sizes: dict[str, int]) -> dict[int, Group]:
    """``saliency[module][param]``: Σ|w·∂C/∂w| per element (or |w| for magnitude). One Group per space."""
    frozen = graph.frozen_roots()
    groups: dict[int, Group] = {}

    def add(labels: torch.Tensor, values: torch.Tensor, macs: torch.Tensor | float, params: torch.Tensor | float,
            producer: str | None = None) -> None:
        for i, a in enumerate(labels.tolist()):
            if a < 0:
                continue
            r = graph.root(a)
            if r in frozen:
                continue
            g = groups.setdefault(r, Group(r, 0.0, 0.0, 0.0, {}))
            g.saliency += float(values[i])
            g.macs += float(macs[i] if isinstance(macs, torch.Tensor) else macs)
            g.params += float(params[i] if isinstance(params, torch.Tensor) else params)
            if producer is not None:
                g.producers[producer] = g.producers.get(producer, 0) + 1

    for p in graph.producers:
        m = gm.get_submodule(p.module)
        s = saliency.get(p.module, {})
        w = m.weight
        per_row = w[0].numel() if not isinstance(m, nn.ConvTranspose2d) else w.numel() // m.out_channels
        values = _rows(m, s["weight"]) if "weight" in s else torch.zeros(len(p.labels))
        if "bias" in s:
            values = values + s["bias"]
        add(p.labels, values, per_row * sizes.get(p.module, 1), per_row + (1 if getattr(m, "bias", None) is not None else 0), p.module)
    for c in graph.consumers:
        m = gm.get_submodule(c.module)
        s = saliency.get(c.module, {})
        values = column_sums(s["weight"], c) if "weight" in s else torch.zeros(len(c.labels))
        per_col = _column_size(m, c)
        add(c.labels, values, per_col * sizes.get(c.module, 1), per_col)
    for w in graph.channelwise:
        m = gm.get_submodule(w.module)
        s = saliency.get(w.module, {})
        n = len(w.labels)
        values = torch.zeros(n, dtype=torch.float64)
        params = 0
        for t in s.values():
            if t.dim() and t.shape[0] == n:
                values = values + t.reshape(n, -1).sum(1)
                params += t[0].numel()
        macs = params * sizes.get(w.module, 1) if isinstance(m, nn.Conv2d) else 0
        add(w.labels, values, macs, params)
    return groups


def _column_size(m: nn.Module, c: Consumer) -> int:
    w = m.weight
    if c.kind == "linear":
        return w.shape[0]
    if c.kind == "convT":
        return w[0].numel()
    return w.shape[0] // max(1, c.groups) * w[0, 0].numel()


def _per_cost(g: Group, rank: str, cost: str) -> float:
    spend = g.macs if cost == "macs" else g.params
    return g.saliency / spend if rank != "saliency" and spend > 0 else g.saliency


def layers_of(groups: dict[int, Group], rank: str, cost: str) -> dict[tuple[str, ...], list[Group]]:
    """The groups by layer (the groups with the same producers: one conv, or one residual stream), each
    layer's least important first (by the score per cost)."""
    layers: dict[tuple[str, ...], list[Group]] = {}
    for g in groups.values():
        if g.producers:
            layers.setdefault(tuple(sorted(g.producers)), []).append(g)
    for members in layers.values():
        members.sort(key=lambda g: (_per_cost(g, rank, cost), g.root))
    return layers


def removal_order(graph: ChannelGraph, groups: dict[int, Group], rank: str, cost: str, floor: float,
                  levels: dict[int, float] | None = None) -> list[int]:
    """Space roots, least important first; a group that would leave some producer with fewer than
    ``max(1, ceil(floor · rows))`` channels is skipped (it stays). ``per-cost``: saliency (or Σ|w|) per MAC or
    parameter saved, ranked globally; ``saliency``: the score alone. ``l1-per-layer`` (scored by Σ|w|) and
    ``saliency-per-layer`` (by the saliency): every layer (the groups
    with the same producers: one conv, or one residual stream) loses the same fraction — groups are taken in the
    order of their quantile within their layer (Torch-Pruning's uniform ratio, in the engine's exact groups),
    and the per-cost score only picks which channels of a layer go. ``sensitivity``: the same order inside each
    layer, the layers interleaved by ``levels`` (sensitivity.levels: the measured loss each group's removal
    takes its layer to); without levels (the floor check, which has no scores) as ``saliency-per-layer``."""
    key: dict[int, tuple[float, ...]] = {r: (_per_cost(g, rank, cost), r) for r, g in groups.items()}
    if rank in PER_LAYER_RANKS or rank == "sensitivity":
        for members in layers_of(groups, rank, cost).values():
            for i, g in enumerate(members):  # the middle of its slot: layers of any size interleave evenly
                quantile = (i + 0.5) / len(members)
                key[g.root] = (levels[g.root], quantile, *key[g.root]) if levels else (quantile, *key[g.root])

    rows = {p.module: len(p.labels) for p in graph.producers}
    kept = dict(rows)
    order = []
    for g in sorted(groups.values(), key=lambda g: key[g.root]):
        if not g.producers:
            continue
        if all(kept[p] - n >= max(1, math.ceil(floor * rows[p])) for p, n in g.producers.items()):
            for p, n in g.producers.items():
                kept[p] -= n
            order.append(g.root)
    return order
