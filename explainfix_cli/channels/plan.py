"""Decide which channels can go, given a traced model whose least salient kernels were zeroed.

A space (a class of merged atoms, see graph.py) is removed when it is not frozen and, at *every* input
index of every consumer labelled with one of its atoms, the consumer either ignores it (its weights for
that index are all zero) or reads a constant there (a producer row of zeros gives its bias; BN/ReLU/pool/+
keep it constant), in which case ``value · Σ W[:, index]`` is folded into that consumer's bias.

Folding is exact for Linear consumers, for convs without zero padding, and whenever the folded value is
0. A conv with zero padding sees zeros, not the constant, in its border windows, so such a fold would make
the pruned model differ from the zeroed one: by default that channel stays (``allow_inexact`` trades
exactness for size, and the self-check then reports the distance instead of "passed").
ConvTranspose2d consumers never fold (a constant input is not constant at their output).
No layer loses all its channels: when a removal would empty a producer, consumer or channel-wise layer,
the space of its lowest index stays (repeated until nothing changes). With ``round_to=N`` a layer that
loses channels keeps a multiple of N of them (:func:`round_removal`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ..core.model import same_padded
from .labels import ChannelGraph, Consumer


@dataclass
class Plan:
    edit: dict  # the recipe edit, see surgery.py
    folds: list[dict] = field(default_factory=list)
    masked_inputs: dict[str, dict] = field(default_factory=dict)
    removed_per_space: dict[int, list[int]] = field(default_factory=dict)  # space root → removed atoms
    inexact_folds: int = 0  # channel·consumer pairs folded into a zero-padded conv with a non-zero value
    inexact_kept: int = 0  # channels that stay because removing them needs an inexact fold
    nonzero_folds: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # why removable-by-zeros channels stay → channel count
    rounded: dict[str, int] = field(default_factory=dict)  # layer → channels it keeps to stay a multiple of --round-to

    @property
    def modules(self) -> dict[str, dict]:
        return self.edit["modules"]

    @property
    def channels_removed(self) -> int:
        return sum(len(v) for v in self.removed_per_space.values())


def column_mass(m: nn.Module, c: Consumer) -> torch.Tensor:
    """Σ|W| per input index of a consumer (zero ⇔ the consumer ignores that input)."""
    return column_sums(m.weight.detach().abs(), c)


def column_sums(w: torch.Tensor, c: Consumer) -> torch.Tensor:
    """Sum of a weight-shaped tensor per input index of consumer ``c`` (grouped convs: group k, in-group
    position i → index k·s + i)."""
    if c.kind == "linear":
        return w.sum(0).cpu()
    if c.kind == "convT":
        return w.sum(dim=(1, 2, 3)).cpu()
    g = c.groups
    per_row = w.sum(dim=(2, 3))  # (out, in/g)
    if g == 1:
        return per_row.sum(0).cpu()
    t = per_row.shape[0] // g
    return per_row.view(g, t, -1).sum(1).reshape(-1).cpu()


def _zero_padded(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros":
        return False
    pad = m.padding
    return pad == "same" or (isinstance(pad, tuple) and any(p != 0 for p in pad)) or same_padded(m)


def _kept_reasons(graph: ChannelGraph, candidates: set[int], removed: set[int], unrounded: set[int],
                  frozen: dict[int, str], inexact: set[int]) -> dict[str, int]:
    """Channels that could go by their weights but stay, counted by reason (the report's ``kept``)."""
    size: dict[int, int] = {}
    for p in graph.producers:
        for r in graph.roots(p.labels):
            if r >= 0:
                size[r] = size.get(r, 0) + 1
    out: dict[str, int] = {}
    for r in candidates - removed:
        if r in frozen:
            why = f"frozen: {frozen[r]}"
        elif r in inexact:
            why = "its removal needs an inexact fold into a zero-padded conv (--allow-inexact-folds)"
        elif r in unrounded:
            why = "rounded: the layer keeps a multiple of --round-to"
        else:
            why = "a layer would lose every channel"
        out[why] = out.get(why, 0) + size.get(r, 0)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


AUTO_MULTIPLE, AUTO_MIN_CHANNELS = 8, 64


def auto_multiple(channels: int) -> int:
    """``--round-to auto`` for a layer that *keeps* ``channels``: multiples of 8 from 64 kept channels up
    (vectorised kernels), any count below (a step of 8 would be ≥ 1/8 of such a layer, and narrow layers
    cost little time anyway). Read on the kept width, not the original one: a 64-wide layer cut to 20
    would otherwise be forced to 16 or 24 (on a 10x ResNet-18 that rounding alone cost 10 points one-shot)."""
    return AUTO_MULTIPLE if channels >= AUTO_MIN_CHANNELS else 1


def round_removal(graph: ChannelGraph, removable: set[int], producers: list, multiple: int | str) -> None:
    """Give back removable spaces until every producer that loses channels keeps a multiple of
    ``multiple`` (e.g. 8 or 16: vectorised conv kernels run faster on such counts; ``"auto"``:
    :func:`auto_multiple` of the width the layer keeps). Any subset of the removable spaces is exact, so this only
    trades size for speed. Deterministic: a layer gives back its highest-index removed channels first;
    repeated until no layer needs more."""
    changed = True
    while changed:
        changed = False
        for p in producers:
            roots = graph.roots(p.labels)
            gone = [i for i, r in enumerate(roots) if r in removable]
            kept = len(roots) - len(gone)
            m = auto_multiple(kept) if multiple == "auto" else multiple
            if gone and kept % m:
                removable.discard(roots[gone[-1]])
                changed = True


def plan_removal(gm: fx.GraphModule, graph: ChannelGraph, round_to: int | str | None = None, *,
                 allow_inexact: bool = False, remove: set[int] | None = None) -> Plan:
    """The removal plan. By zeros (``remove=None``): a space goes when every consumer ignores it or reads
    a constant that folds exactly; a fold into a zero-padded conv is inexact in the border windows, so
    such a space stays unless ``allow_inexact`` (``Plan.inexact_kept`` counts its channels). By choice
    (``remove``: space roots, the channel criterion): those spaces go and their consumers drop the
    columns; nothing is folded, and the pruned model equals the model with those columns masked."""
    modules: dict[str, dict] = {}
    plan = Plan(edit={"op": "prune", "modules": modules})
    frozen = graph.frozen_roots()
    ok: dict[int, bool] = {}
    exact_only: set[int] = set()  # spaces that an inexact fold alone keeps
    ignored: list[torch.Tensor] = []
    for c in graph.consumers:
        m = gm.get_submodule(c.module)
        ign = column_mass(m, c) == 0
        ignored.append(ign)
        if remove is not None:
            continue
        inexact = (c.is_const & (c.value != 0) & ~ign) if _zero_padded(m) else torch.zeros_like(ign)
        good = (ign | c.is_const).tolist()
        for lab, g, bad in zip(c.labels.tolist(), good, inexact.tolist()):
            if lab >= 0:
                r = graph.root(lab)
                ok[r] = ok.get(r, True) and g
                if bad and not allow_inexact:
                    exact_only.add(r)
    if remove is not None:
        removable = {r for r in remove if r not in frozen}
    else:
        removable = {r for r, g in ok.items() if g and r not in frozen and r not in exact_only}
        kept = {r for r in exact_only if ok.get(r) and r not in frozen}
        plan.inexact_kept = sum(1 for p in graph.producers for r in graph.roots(p.labels) if r in kept)
    lists = [p.labels for p in graph.producers] + [c.labels for c in graph.consumers] + [w.labels for w in graph.channelwise]
    changed = True
    while changed and removable:
        changed = False
        for labels in lists:
            if len(labels) and bool((labels >= 0).all()):
                roots = graph.roots(labels)
                if all(r in removable for r in roots):
                    removable.discard(roots[0])
                    changed = True

    candidates = set(removable) if remove is not None else {r for r, g in ok.items() if g}
    before_rounding = set(removable)
    if round_to == "auto" or (round_to and round_to > 1):
        round_removal(graph, removable, graph.producers, round_to)
        given_back = before_rounding - removable
        for p in graph.producers:
            n = sum(1 for r in graph.roots(p.labels) if r in given_back)
            if n:
                plan.rounded[p.module] = n
    plan.kept = _kept_reasons(graph, candidates, removable, before_rounding, frozen, exact_only if remove is None else set())

    def removed(labels: torch.Tensor) -> list[int]:
        return [i for i, r in enumerate(graph.roots(labels)) if r >= 0 and r in removable]

    for p in graph.producers:
        out = removed(p.labels)
        if out:
            modules.setdefault(p.module, {})["out"] = out
            for i in out:
                plan.removed_per_space.setdefault(graph.root(int(p.labels[i])), []).append(int(p.labels[i]))
    for w in graph.channelwise:
        ch = removed(w.labels)
        if ch:
            modules.setdefault(w.module, {})["channels"] = ch
    for c, ign in zip(graph.consumers, ignored):
        cols = removed(c.labels)
        if not cols:
            continue
        m = gm.get_submodule(c.module)
        e = modules.setdefault(c.module, {})
        e["in"] = cols
        if c.kind == "linear":
            e["in_block"] = 1
        plan.masked_inputs[c.module] = {"in": cols, "in_block": 1, "kind": c.kind, "groups": c.groups}
        if remove is not None:
            continue  # removed by choice: the columns are masked, not folded
        fold = [j for j in cols if not bool(ign[j]) and float(c.value[j]) != 0.0]
        if not fold:
            continue  # ignored, or a constant 0: nothing to fold
        plan.folds.append({"module": c.module, "kind": c.kind, "groups": c.groups, "block": 1, "channels": fold,
                           "values": c.value[fold].tolist()})
        plan.nonzero_folds += len(fold)
        if getattr(m, "bias", None) is None:
            e["add_bias"] = True
        if _zero_padded(m):
            plan.inexact_folds += len(fold)
    return plan
