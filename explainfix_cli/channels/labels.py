"""The data of the channel analysis: label maps, the layers at a space's boundary, and the merged spaces.

See :mod:`explainfix_cli.channels.graph` for the model (atoms, spaces, frozen channels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx


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

    def roots(self, labels: torch.Tensor) -> list[int]:
        """The space root of every channel of ``labels`` (-1 where unlabelled), computed once per tensor: the
        union-find is complete when the graph is built, and a budget search plans dozens of times."""
        cache = self.__dict__.setdefault("_roots", {})
        key = id(labels)
        if key not in cache:
            cache[key] = (labels, [find_root(self.parent, a) if a >= 0 else -1 for a in labels.tolist()])
        return cache[key][1]

    def frozen_roots(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for a, why in self.frozen.items():
            out.setdefault(self.root(a), why)
        return out

    @property
    def frozen_by(self) -> dict[str, int]:
        """Frozen channels (producer rows) counted by the reason that froze them — the op and where it is
        (e.g. ``"model output at fc"``, ``"LayerNorm normalises across channels at head.norm"``) — most first:
        the first entry names the op that froze the most."""
        frozen = self.frozen_roots()
        out: dict[str, int] = {}
        for p in self.producers:
            for r in self.roots(p.labels):
                if r in frozen:
                    out[frozen[r]] = out.get(frozen[r], 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

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


def where_of(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return f"{node.meta.get('module_path', '<top>')} (node {node.name})"


def module_of(node: fx.Node) -> str | None:
    """The innermost submodule whose forward holds ``node`` (the module itself for a module call); None at top."""
    if node.op == "call_module":
        return str(node.target)
    path = node.meta.get("module_path")
    return None if path in (None, "", "<top>") else str(path)


def op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.graph.owning_module.get_submodule(node.target).__class__.__name__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", "") or ""
        return f"{mod.replace('_operator', 'operator')}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    return node.op
