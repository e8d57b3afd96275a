"""Decide which channels can go, given a traced model whose least salient kernels were zeroed.

Channel ``c`` of a prunable space is removed when *every* consumer either ignores it (its weights for
``c`` are all zero) or reads a constant there (a producer row of zeros gives its bias; BN/ReLU/pool/+
keep it constant), in which case ``value · Σ W[:, c]`` is folded into that consumer's bias.

Folding is exact for Linear consumers, for convs without zero padding, and whenever the folded value is
0. A conv with zero padding sees zeros, not the constant, in its border windows, so there the pruned
model differs from the zeroed one (it equals the masked equivalent exactly); the self-check measures it.
A space never loses all its channels (the lowest-index candidate stays).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from .graph import ChannelGraph, Consumer


@dataclass
class Plan:
    edit: dict  # the recipe edit, see surgery.py
    folds: list[dict] = field(default_factory=list)
    masked_inputs: dict[str, dict] = field(default_factory=dict)
    removed_per_space: dict[int, list[int]] = field(default_factory=dict)
    inexact_folds: int = 0  # channel·consumer pairs folded into a zero-padded conv with a non-zero value
    nonzero_folds: int = 0

    @property
    def modules(self) -> dict[str, dict]:
        return self.edit["modules"]

    @property
    def channels_removed(self) -> int:
        return sum(len(v) for v in self.removed_per_space.values())


def _consumer_column_mass(m: nn.Module, c: Consumer, size: int) -> torch.Tensor:
    """Σ|W| per input channel of a consumer (zero ⇔ the consumer ignores that channel)."""
    w = m.weight.detach().abs()
    if c.kind == "conv":
        return w.sum(dim=(0, 2, 3)).cpu()
    return w.view(w.shape[0], size, c.block).sum(dim=(0, 2)).cpu()


def _zero_padded(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros":
        return False
    pad = m.padding
    return pad == "same" or (isinstance(pad, tuple) and any(p != 0 for p in pad))


def plan_removal(gm: fx.GraphModule, graph: ChannelGraph) -> Plan:
    modules: dict[str, dict] = {}
    plan = Plan(edit={"op": "prune", "modules": modules})
    for space in graph.spaces:
        if not space.prunable or not space.consumers and not space.producers:
            continue
        removable = torch.ones(space.size, dtype=torch.bool)
        ignored: list[torch.Tensor] = []
        for c in space.consumers:
            ign = _consumer_column_mass(gm.get_submodule(c.module), c, space.size) == 0
            ignored.append(ign)
            removable &= ign | graph.const[c.tensor][0]
        if bool(removable.all()):
            removable[0] = False
        removed = torch.nonzero(removable).flatten().tolist()
        if not removed:
            continue
        plan.removed_per_space[space.id] = removed
        for p in space.producers:
            modules.setdefault(p, {})["out"] = removed
        for name in space.channelwise:
            modules.setdefault(name, {})["channels"] = removed
        for c, ign in zip(space.consumers, ignored):
            m = gm.get_submodule(c.module)
            e = modules.setdefault(c.module, {})
            e["in"] = removed
            if c.kind == "linear":
                e["in_block"] = c.block
            plan.masked_inputs[c.module] = {"in": removed, "in_block": c.block}
            value = graph.const[c.tensor][1]
            fold_ch = [ch for ch in removed if not bool(ign[ch]) and float(value[ch]) != 0.0]
            if not fold_ch:
                continue  # ignored, or a constant 0: nothing to fold
            plan.folds.append({"module": c.module, "kind": c.kind, "block": c.block, "channels": fold_ch, "values": value[fold_ch].tolist()})
            plan.nonzero_folds += len(fold_ch)
            if getattr(m, "bias", None) is None:
                e["add_bias"] = True
            if _zero_padded(m):
                plan.inexact_folds += len(fold_ch)
    return plan
