"""Trace a model and find which channels must be removed together.

Every output channel of a *producer* (Conv2d, ConvTranspose2d, Linear) is an **atom**. The analysis runs
the model once (fx interpreter, a 2-sample copy of the example) and carries, next to every tensor, a
*label map*: for each element, the atom it belongs to (``-1``: none — model inputs, parameters, mixtures).
Shape ops (view / flatten / permute / cat / chunk / getitem …) are evaluated on the label map itself, so
offsets into a concatenation, a channel shuffle or a flatten into a Linear come out exactly.

Atoms are merged (union-find) when their channels must go together: the two sides of ``+``/``*``
(residuals, squeeze-excitation), the same in-group position of every group of a grouped conv. A merged
class is a *space*; removing it deletes every element labelled with one of its atoms, everywhere.

A space is **frozen** (never pruned) when it touches a model output, meets an element with no atom
(``x + input``, a per-channel parameter), is normalised across channels (LayerNorm, GroupNorm with
groups < C, softmax), reduced across channels, or cut by an op whose sizes would change with it (chunk,
split, slicing, a view that splits the channel dim — channel shuffle). Freezing is always exact.

Its boundary: *consumers* (convs / Linears reading it; sliced on the input side), *producers* (sliced on
the output side), *channel-wise* layers (BN, InstanceNorm, PReLU, depthwise conv; sliced along). Per
element the analysis also propagates whether it is a provable *constant* and its value (a zero conv row
outputs its bias; BN, ReLU, pooling, ``+`` of constants stay constant) so that plan.py can fold it.

A module called more than once (weight sharing) registers at its first call; every later call merges its
channels position by position with the first call's and reuses the same output atoms, so one edit fits all
call sites, and an input folds only if it is the same constant at every call (graph_ops.SHAREABLE).

Grouped convolutions: input channel ``k·s + i`` (group k, position i) is merged with position ``i`` of
every other group, and so are the outputs: a removal keeps every group the same size (see surgery.py).

Anything it does not understand on a tensor that carries atoms raises :class:`UnsupportedOp` naming the
op and the module path; ops on atom-free tensors (input preprocessing, positional tables) are harmless, and
so are ops whose every incoming atom is already frozen (freezing is final): they run as they are, their
output carries no atoms, and ``ChannelGraph.passed`` names them. Tracing (including models plain torch.fx
rejects, and submodules kept opaque) is tracing.py's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import ExplainFixError, UnsupportedOp, first_line
from .tracing import check_guards, trace_model


@dataclass
class Lab:
    """Label map of one tensor: atoms ``L`` (long), constant flags ``K`` (bool) and values ``V`` (double),
    each *compact*: broadcastable to ``shape`` with size 1 along every dim where it does not vary."""

    L: torch.Tensor
    K: torch.Tensor
    V: torch.Tensor
    shape: tuple[int, ...]

    @staticmethod
    def blank(shape: tuple[int, ...]) -> Lab:
        one = [1] * len(shape)
        return Lab(torch.full(one, -1, dtype=torch.long), torch.zeros(one, dtype=torch.bool),
                   torch.zeros(one, dtype=torch.float64), tuple(shape))

    def has_atoms(self) -> bool:
        return bool((self.L >= 0).any())

    def varying(self) -> list[int]:
        return [d for d in range(self.L.dim()) if self.L.shape[d] > 1]

    def full(self, which: str) -> torch.Tensor:
        return getattr(self, which).expand(self.shape).contiguous()

    def compact(self) -> Lab:
        L, K, V = torch.broadcast_tensors(self.L, self.K, self.V)  # to their common shape, not the full one
        lead = [1] * (len(self.shape) - L.dim())
        L, K, V = L.reshape(lead + list(L.shape)), K.reshape(lead + list(K.shape)), V.reshape(lead + list(V.shape))
        for d in range(len(self.shape)):
            if L.shape[d] > 1:
                a, b, c = L.narrow(d, 0, 1), K.narrow(d, 0, 1), V.narrow(d, 0, 1)
                if bool((L == a).all()) and bool((K == b).all()) and bool(((V == c) | (V != V)).all()):
                    L, K, V = a, b, c
        self.L, self.K, self.V = L.contiguous(), K.contiguous(), torch.where(K, V, torch.zeros_like(V)).contiguous()
        return self

    def per_index(self, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Atom, constant flag and value of each index along ``dim`` (uniform along the other dims?)."""
        n = self.shape[dim]
        dim = dim % len(self.shape)
        others = [d for d in range(len(self.shape)) if d != dim]
        uniform = all(self.L.shape[d] == 1 for d in others)
        kuniform = uniform and all(self.K.shape[d] == 1 and self.V.shape[d] == 1 for d in others)

        def pick(t: torch.Tensor, fill: Any) -> torch.Tensor:
            t = t.movedim(dim, 0).reshape(t.shape[dim], -1)[:, 0]
            return t.expand(n).clone() if t.numel() == 1 else t.clone()
        L = pick(self.L, -1) if uniform else torch.full((n,), -1, dtype=torch.long)
        K = pick(self.K, False) if kuniform else torch.zeros(n, dtype=torch.bool)
        V = pick(self.V, 0.0) if kuniform else torch.zeros(n, dtype=torch.float64)
        return L, K, V, uniform


@dataclass
class Consumer:
    """A channel-mixing layer reading its input along ``labels`` (one atom per input index, -1: none)."""

    module: str
    kind: str  # conv | convT | linear
    labels: torch.Tensor
    is_const: torch.Tensor
    value: torch.Tensor
    groups: int = 1


@dataclass
class Indexed:
    """A producer's output rows, or a channel-wise layer's channels, as atoms."""

    module: str
    labels: torch.Tensor


@dataclass
class Space:
    """A class of merged atoms (for reports): its size in producer rows, producers, why it is frozen."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen


def find_root(parent: list[int], a: int) -> int:
    """Union-find root of atom ``a`` (path halving: ``parent`` is updated in place)."""
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@dataclass
class ChannelGraph:
    parent: list[int]
    frozen: dict[int, str]  # atom → first reason
    consumers: list[Consumer]
    producers: list[Indexed]
    channelwise: list[Indexed]
    passed: dict[str, str] = field(default_factory=dict)  # where -> unsupported op run as it is (inputs frozen)

    def root(self, a: int) -> int:
        return find_root(self.parent, a)

    def frozen_roots(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for a, why in self.frozen.items():
            out.setdefault(self.root(a), why)
        return out

    @property
    def channels_total(self) -> int:
        return sum(len(p.labels) for p in self.producers)

    @property
    def spaces(self) -> list[Space]:
        frozen = self.frozen_roots()
        by_root: dict[int, Space] = {}
        for p in self.producers:
            for a in p.labels.tolist():
                r = self.root(a)
                s = by_root.setdefault(r, Space(len(by_root), 0, frozen=[frozen[r]] if r in frozen else []))
                s.size += 1
                if p.module not in s.producers:
                    s.producers.append(p.module)
        return list(by_root.values())


def _example_args(example: Any) -> tuple:
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)

    def two(t: Any) -> Any:  # a second sample makes ops that mix the batch dim visible
        return torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1 else t
    return tuple(two(a) for a in args)


def trace(model: nn.Module, example: Any) -> fx.GraphModule:
    """Trace (tracing.py: concrete-shape fx tracing, opaque submodules where values drive control flow),
    then one analysis pass on ``example`` (so an unsupported op fails fast). ``gm.meta`` keeps the example,
    the opaque modules and the shape guards (see :func:`tracing.check_guards`)."""
    args = _example_args(example)
    traced = trace_model(model, args)
    gm = fx.GraphModule(traced.root, traced.graph)
    gm.meta["explainfix_example"] = args
    gm.meta["explainfix_traced"] = traced
    analyse(gm)
    return gm


def check_control_flow(model: nn.Module, gm: fx.GraphModule) -> None:
    """After surgery: refuse if a shape decision taken while tracing ``gm`` comes out differently now."""
    check_guards(model, gm.meta["explainfix_example"], gm.meta["explainfix_traced"])


def opaque_modules(gm: fx.GraphModule) -> dict[str, str]:
    """Submodules kept whole because they could not be traced (path -> reason)."""
    traced = gm.meta.get("explainfix_traced")
    return dict(traced.opaque) if traced is not None else {}


def analyse(gm: fx.GraphModule) -> ChannelGraph:
    """Atoms, couplings and constant facts from the model's *current* weights (re-run after zeroing)."""
    from .graph_ops import Analyzer

    an = Analyzer(gm)
    node = None
    try:
        with torch.no_grad():
            an.run(*gm.meta["explainfix_example"])
    except ExplainFixError:
        raise
    except Exception as e:  # never crash: an op we could not analyse is refused, naming it
        node = an.current
        where = _where(node) if node is not None else type(gm).__name__
        op = _op_name(node) if node is not None else "forward"
        raise UnsupportedOp(op, where, f"analysis failed: {type(e).__name__}: {first_line(e, 160)}") from None
    return ChannelGraph(an.parent, an.frozen, an.consumers, an.producers, an.channelwise, an.passed)


def build_graph(model: nn.Module, example: Any) -> tuple[fx.GraphModule, ChannelGraph]:
    """Trace ``model`` on ``example`` and analyse it."""
    gm = trace(model, example)
    return gm, analyse(gm)


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return f"{node.meta.get('module_path', '<top>')} (node {node.name})"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.graph.owning_module.get_submodule(node.target).__class__.__name__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        return f"{mod.replace('_operator', 'operator')}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    return node.op


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
