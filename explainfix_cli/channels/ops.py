"""How each kind of layer and op moves label maps (the handlers the analyzer dispatches to, analyzer.py).

Layer kinds (conv, transposed conv, Linear, channel-wise layers, element-wise ops, pooling, softmax) say
which atoms are created, merged or frozen and which constants pass; shape ops (view, permute, cat, cut,
reduce) are evaluated on the label maps themselves."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..core.model import is_depthwise
from .labels import Consumer, Indexed, Lab, op_name, where_of
from .rules import (
    apply_const,
    blank_like,
    cut_dims,
    depthwise_const,
    dim_arg,
    split_dims,
)

MUL_OPS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}  # fx targets of an element-wise product


def _broadcast_over_channels(a: Lab, b: Lab, rank: int) -> bool:
    """One side carries no atom and is broadcast along every dim where the other's channels vary (a learnable
    scalar ``x * s + b``, a per-sample factor like stochastic depth's): each output channel is that input
    channel, so a removal keeps the rest exact and nothing is frozen."""
    if b.has_atoms():
        if a.has_atoms():
            return False
        a, b = b, a
    lead_a, lead_b = rank - len(a.shape), rank - len(b.shape)
    for d in a.varying():
        o = d + lead_a - lead_b  # the same output dim, in b's own dims
        if 0 <= o < len(b.shape) and b.shape[o] != 1:
            return False
    return True


class LayerOps:
    """Mixed into :class:`~explainfix_cli.channels.analyzer.Analyzer`, whose bookkeeping (store, freeze,
    union, new_atoms, call, refuse…) these handlers use."""

    # ---------------------------------------------------------------------------- layer kinds
    def conv(self, n: fx.Node, m: nn.Conv2d, x: Lab, shape: tuple) -> None:
        path = str(n.target)
        L, K, V, uniform = x.per_index(1)
        if not uniform:
            self.freeze(x, n, "input channels vary spatially")
        w = m.weight.detach()
        bias = m.bias.detach().double() if m.bias is not None else torch.zeros(m.out_channels, dtype=torch.float64)
        shared = f"shared module {path} (its other call site has no atom there)"
        if is_depthwise(m):
            earlier = self.first_call(self.channelwise, path)
            if earlier is None:
                self.channelwise.append(Indexed(path, L))
            else:
                self.union_rows(earlier.labels, L, shared)
            k, v = depthwise_const(m, K, V)
            self.store(n, Lab(L.view(1, -1, 1, 1), k.view(1, -1, 1, 1), v.view(1, -1, 1, 1), shape))
            return
        g = m.groups
        if g > 1:  # every group keeps the same size: position i goes from all groups at once
            s = m.in_channels // g
            for i in range(s):
                self.union_all(L[i::s], f"grouped conv input at {path}")
        earlier = self.first_call(self.consumers, path)
        if earlier is None:
            self.consumers.append(Consumer(path, "conv", L, K, V, g))
            atoms = self.new_atoms(m.out_channels)
            if g > 1:
                t = m.out_channels // g
                for i in range(t):
                    self.union_all(atoms[i::t], "")
            self.producers.append(Indexed(path, atoms))
        else:
            atoms = self.reuse(earlier, L, K, V, shared)
        zero = (w.flatten(1).abs().sum(1) == 0).cpu()
        self.store(n, Lab(atoms.view(1, -1, 1, 1), zero.view(1, -1, 1, 1), bias.cpu().view(1, -1, 1, 1), shape))

    def conv_t(self, n: fx.Node, m: nn.ConvTranspose2d, x: Lab, shape: tuple) -> None:
        """weight (in, out/g, kh, kw). Grouped: like Conv2d, the same in-group position goes from every group,
        on both sides, so groups stay equal."""
        path = str(n.target)
        L, _, _, uniform = x.per_index(1)
        if not uniform:
            self.freeze(x, n, "input channels vary spatially")
        g, s, t = m.groups, m.in_channels // m.groups, m.out_channels // m.groups
        if g > 1:
            for i in range(s):
                self.union_all(L[i::s], f"grouped ConvTranspose2d input at {path}")
        nc = torch.zeros(len(L), dtype=torch.bool)  # a constant input is not spatially constant after it
        earlier = self.first_call(self.consumers, path)
        if earlier is None:
            self.consumers.append(Consumer(path, "convT", L, nc, torch.zeros(len(L), dtype=torch.float64), g))
            atoms = self.new_atoms(m.out_channels)
            if g > 1:
                for j in range(t):
                    self.union_all(atoms[j::t], "")
            self.producers.append(Indexed(path, atoms))
        else:  # its eval-mode call again, in the training-mode pass
            atoms = self.reuse(earlier, L, nc, earlier.value, f"shared module {path} (its other call site has no atom there)")
        w = m.weight.detach().abs()
        zero = (w.view(g, s, t, -1).sum(dim=(1, 3)).reshape(-1) == 0).cpu()  # output k·t + j
        bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(m.out_channels, dtype=torch.float64)
        self.store(n, Lab(atoms.view(1, -1, 1, 1), zero.view(1, -1, 1, 1), bias.view(1, -1, 1, 1), shape))

    def reuse(self, earlier: Consumer, L: torch.Tensor, K: torch.Tensor, V: torch.Tensor, why: str) -> torch.Tensor:
        """A later call of a shared conv / Linear: inputs merged with the first call's, the same output atoms;
        an input folds as a constant only if it is the same constant at every call."""
        self.union_rows(earlier.labels, L, why)
        if self.constants:  # a training-mode pass only adds couplings (see Analyzer)
            earlier.is_const = earlier.is_const & K & (V == earlier.value)
        return next(p.labels for p in self.producers if p.module == earlier.module)

    def linear(self, n: fx.Node, m: nn.Linear, x: Lab, shape: tuple) -> None:
        path = str(n.target)
        L, K, V, uniform = x.per_index(-1)
        if not uniform:
            self.freeze(x, n, "Linear input features vary along other dims")
        earlier = self.first_call(self.consumers, path)
        if earlier is None:
            self.consumers.append(Consumer(path, "linear", L, K, V))
            atoms = self.new_atoms(m.out_features)
            self.producers.append(Indexed(path, atoms))
        else:
            atoms = self.reuse(earlier, L, K, V, f"shared module {path} (its other call site has no atom there)")
        zero = (m.weight.detach().abs().sum(1) == 0).cpu()
        bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(m.out_features, dtype=torch.float64)
        one = [1] * (len(shape) - 1)
        self.store(n, Lab(atoms.view(*one, -1), zero.view(*one, -1), bias.view(*one, -1), shape))

    def channelwise_layer(self, n: fx.Node, m: nn.Module, x: Lab, shape: tuple, const_fn: Any) -> None:
        L, K, V, uniform = x.per_index(1)
        if not uniform:
            self.freeze(x, n, "channels vary along other dims")
        earlier = self.first_call(self.channelwise, str(n.target))
        if earlier is None:
            self.channelwise.append(Indexed(str(n.target), L))
        else:
            self.union_rows(earlier.labels, L, f"shared module {n.target} (its other call site has no atom there)")
        one = [1] * (len(shape) - 2)
        k, v = K.view(1, -1, *one), V.view(1, -1, *one)
        if const_fn is not None and bool(K.any()):
            k, v = apply_const(lambda t: const_fn(t), k, v)
        else:
            k = torch.zeros_like(k)
        self.store(n, Lab(x.L, k, v, shape))

    def unary(self, n: fx.Node, x: Lab, shape: tuple) -> None:
        if not bool(x.K.any()):
            self.store(n, Lab(x.L, x.K, x.V, shape))
            return
        try:
            out = self.call(n, "V", full=False).double()
            ok = tuple(out.shape) == tuple(torch.broadcast_shapes(out.shape, x.K.shape)) and torch.isfinite(out)
            k = x.K & ok
        except Exception:
            out, k = x.V, torch.zeros_like(x.K)
        self.store(n, Lab(x.L, k, out, shape))

    def binary(self, n: fx.Node, a: Lab, b: Lab, shape: tuple) -> None:
        La, Lb = torch.broadcast_tensors(a.L, b.L)
        both = (La >= 0) & (Lb >= 0)
        if bool(both.any()):
            for p, q in torch.unique(torch.stack([La[both], Lb[both]], 1), dim=0).tolist():
                self.union(p, q)
        one = (La >= 0) ^ (Lb >= 0)
        if bool(one.any()) and not _broadcast_over_channels(a, b, len(shape)):
            self.freeze_atoms(torch.where(La >= 0, La, Lb)[one], f"an element-wise op with a tensor that has no atom at {where_of(n)}")
        L = torch.where(La >= 0, La, Lb)
        K = torch.broadcast_tensors(a.K, b.K)
        k = K[0] & K[1]
        v = torch.zeros(k.shape, dtype=torch.float64)
        if bool(k.any()):
            try:
                v = self.call(n, "V", full=False).double().expand(k.shape)
                k = k & torch.isfinite(v)
            except Exception:
                k = torch.zeros_like(k)
        if n.target in MUL_OPS:  # a constant 0 times anything finite is 0 (SE: x[c] ≡ 0 ⇒ x[c]·s[c] ≡ 0)
            Ka, Va, Kb, Vb = torch.broadcast_tensors(a.K, a.V, b.K, b.V)
            zero = (Ka & (Va == 0)) | (Kb & (Vb == 0))
            k, v = torch.broadcast_tensors(k, v)
            k, v = k | zero, torch.where(zero, torch.zeros_like(v), v)
        self.store(n, Lab(L, k.contiguous(), v.contiguous(), shape))

    def spatial(self, n: fx.Node, m: nn.Module | None, x: Lab, shape: tuple) -> None:
        if len(shape) != 4 or len(x.shape) != 4:
            self.refuse(n, "pooling / resizing that is not over (N, C, H, W)")
        if any(d >= 2 for d in x.varying()):
            self.freeze(x, n, "pooling over channels that vary spatially")
            self.labs[n.name] = Lab.blank(shape)
            return
        k = x.K if x.K.shape[2:] == (1, 1) else torch.zeros(1, dtype=torch.bool)
        if isinstance(m, nn.AvgPool2d) or (m is None and n.target is F.avg_pool2d):
            args = fx.node.map_arg(n.args, lambda a: None)
            padding = m.padding if m is not None else (args[3] if len(args) > 3 else n.kwargs.get("padding", 0))
            include = m.count_include_pad if m is not None else n.kwargs.get("count_include_pad", True)
            override = m.divisor_override if m is not None else n.kwargs.get("divisor_override")
            padded = any(p != 0 for p in ((padding,) if isinstance(padding, int) else padding))
            if (padded and include) or override is not None:
                k = k & (x.V == 0)  # border windows average in zeros
        self.store(n, Lab(x.L, k, x.V, shape))

    def softmax(self, n: fx.Node, x: Lab, shape: tuple, dim: Any) -> None:
        if dim is None or dim % len(shape) in x.varying():
            self.freeze(x, n, "softmax across channels")
        self.store(n, Lab(x.L, torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.float64), shape))

    # ------------------------------------------------------------------------------- shape ops
    def shape_op(self, n: fx.Node, value: Any) -> None:
        """Evaluate a pure index-moving op on the label maps themselves; the batch dim must stay put."""
        outs = {c: self.call(n, c) for c in ("L", "K", "V", "B")}

        def build(L: Any, K: Any, V: Any, B: Any, v: Any) -> Any:
            if isinstance(v, (tuple, list)):
                return tuple(build(*parts) for parts in zip(L, K, V, B, v))
            if not isinstance(v, torch.Tensor):
                return None
            batch = torch.arange(B.shape[0]).view([-1] + [1] * (B.dim() - 1)) if B.dim() else None
            if batch is None or not bool((B == batch).all()) or B.shape[0] != v.shape[0]:
                self.refuse(n, "an op that moves or mixes the batch dimension")
            return Lab(L.clone(), K.bool().clone(), V.double().clone(), tuple(v.shape))
        self.store(n, build(outs["L"], outs["K"], outs["V"], outs["B"], value))

    def reshape(self, n: fx.Node, x: Lab, value: torch.Tensor) -> None:
        if set(split_dims(x.shape, tuple(value.shape))) & set(x.varying()):
            self.freeze(x, n, "a view that splits the channel dim (e.g. channel shuffle)")
        self.shape_op(n, value)
        out, sizes = self.labs.get(n.name), _view_sizes(n)
        if isinstance(out, Lab) and sizes is not None and len(sizes) == len(out.shape):
            fixed = [d for d in out.varying() if isinstance(sizes[d], int) and sizes[d] != -1]
            if fixed:  # the code names the size by a number, which stays the same after a removal
                d = fixed[0]
                self.freeze(x, n, f"a view that names the size of its channel dim by a literal ({sizes[d]} at dim {d})")

    def cut(self, n: fx.Node, x: Lab, args: tuple, kwargs: dict, value: Any) -> None:
        t = n.target
        if t is operator.getitem:
            src = self.labs.get(n.args[0].name) if isinstance(n.args[0], fx.Node) else None
            if isinstance(src, (tuple, list)):
                self.labs[n.name] = src[args[1]]
                return
            dims = cut_dims(args[1], len(x.shape))
        elif t in (torch.narrow, "narrow"):
            dims = [dim_arg(args, kwargs, 1)]
        elif t in (torch.unbind, "unbind"):
            dims = [dim_arg(args, kwargs, 1)]
        else:
            dims = [dim_arg(args, kwargs, 2)]
        if any(d % len(x.shape) in x.varying() for d in dims):
            self.freeze(x, n, f"{op_name(n)} cuts the channel dim (its sizes would change with a removal)")
        self.shape_op(n, value)

    def reduce(self, n: fx.Node, x: Lab, args: tuple, kwargs: dict, value: torch.Tensor) -> None:
        dims = dim_arg(args, kwargs, 1, None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        rank = len(x.shape)
        dims = list(range(rank)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        dims = sorted(d % rank for d in dims)
        if 0 in dims or set(dims) & set(x.varying()) or not isinstance(value, torch.Tensor):
            self.freeze(x, n, "a reduction across channels")
            self.labs[n.name] = blank_like(value)
            return
        L = x.full("L").amax(dim=dims, keepdim=keep)
        K = x.full("K").to(torch.int8).amin(dim=dims, keepdim=keep).bool()
        V = self.call(n, "V").double()
        self.store(n, Lab(L, K, V, tuple(value.shape)))


def _view_sizes(n: fx.Node) -> tuple | None:
    """The sizes a ``view`` / ``reshape`` node asks for, as written (ints, -1, or nodes computed at run time);
    None for a flatten, which names no size."""
    if n.op == "call_module" or n.target in (torch.flatten, "flatten"):
        return None
    rest = n.args[1:] if len(n.args) > 1 else (n.kwargs.get("shape", n.kwargs.get("size")),)
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = tuple(rest[0])
    return None if any(r is None for r in rest) else tuple(rest)
