"""The op handlers of the channel analysis (see graph.py for the model): an fx interpreter that runs the
model on the example and, node by node, computes each tensor's label map and the couplings."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedOp
from .graph import Consumer, Indexed, Lab, _op_name, _where, find_root, is_depthwise
from .graph_rules import (
    BINARY_FNS, BINARY_METHODS, CAT_FNS, CUT_FNS, CUT_METHODS, ELEMENTWISE_MODULES, MOVE_FNS, MOVE_METHODS,
    NORM_FNS, POOL_FNS, POOL_MODULES, REDUCE_FNS, REDUCE_METHODS, RESHAPE_FNS, RESHAPE_METHODS, SOFTMAX_FNS,
    SOFTMAX_METHODS, UNARY_FNS, UNARY_METHODS, _apply, _blank_like, _cut_dims, _depthwise_const, _dim_arg, _labs,
    _split_dims,
)

# stateful layers that may be called more than once: every call site's channels are merged position by
# position with the first call's, so one edit of the module fits all of them
SHAREABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
             nn.GroupNorm, nn.LayerNorm, nn.PReLU)
MUL_OPS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}  # fx targets of an element-wise product


class Analyzer(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.labs: dict[str, Any] = {}
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}
        self.consumers: list[Consumer] = []
        self.producers: list[Indexed] = []
        self.channelwise: list[Indexed] = []
        self.calls: dict[str, int] = {}
        self.current: fx.Node | None = None
        self.passed: dict[str, str] = {}  # unsupported ops run as they are, all their inputs frozen
        self.from_input: set[str] = set()  # nodes the model inputs reach (others compute constants)
        traced = gm.meta.get("explainfix_traced")
        self.opaque: dict[str, str] = dict(traced.opaque) if traced is not None else {}

    # ------------------------------------------------------------------------------ bookkeeping
    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        value = super().run_node(n)
        if n.op == "placeholder" or any(a.name in self.from_input for a in n.all_input_nodes):
            self.from_input.add(n.name)
        try:
            self.visit(n, value)
        except UnsupportedOp as e:
            # An op we cannot see through is harmless when every channel reaching it is already frozen
            # (freezing is final: those tensors keep their size). It is then run as it is and its output
            # carries no atoms. A shared module is never harmless: surgery would edit all its call sites.
            if getattr(e, "hard", False) or not self.inputs_frozen(n):
                raise
            self.labs[n.name] = _blank_like(value)
            self.passed.setdefault(e.where, f"`{e.op}` run as it is (every channel reaching it is frozen)")
        return value

    def inputs_frozen(self, n: fx.Node) -> bool:
        atoms = torch.cat([lb.L.reshape(-1) for lb in self.inputs(n)] or [torch.empty(0, dtype=torch.long)])
        roots = {self.root(a) for a in self.frozen}
        return all(self.root(a) in roots for a in torch.unique(atoms[atoms >= 0]).tolist())

    def new_atoms(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def root(self, a: int) -> int:
        return find_root(self.parent, a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[rb] = ra

    def union_all(self, atoms: torch.Tensor, why: str) -> None:
        """Merge ``atoms``; if some element has no atom (-1) the others can never go: freeze them."""
        if bool((atoms < 0).any()):
            self.freeze_atoms(atoms, why)
            return
        first = int(atoms[0])
        for a in atoms[1:].tolist():
            self.union(first, a)

    def union_rows(self, first: torch.Tensor, again: torch.Tensor, why: str) -> None:
        """A shared module's channel i at a later call site goes with its channel i at the first one."""
        for a, b in zip(first.tolist(), again.tolist()):
            if a >= 0 and b >= 0:
                self.union(a, b)
            elif a >= 0 or b >= 0:
                self.freeze_atoms(torch.tensor([max(a, b)]), why)

    def first_call(self, entries: list, path: str) -> Any:
        """The entry (Consumer / Indexed) the first call of module ``path`` registered, or None."""
        if self.calls.get(path, 0) <= 1:
            return None
        return next((e for e in entries if e.module == path), None)

    def freeze_atoms(self, atoms: torch.Tensor, why: str) -> None:
        for a in torch.unique(atoms[atoms >= 0]).tolist():
            self.frozen.setdefault(a, why)

    def freeze(self, lab: Any, n: fx.Node, why: str) -> None:
        for lb in _labs(lab):
            self.freeze_atoms(lb.L.reshape(-1), f"{why} at {_where(n)}")

    def store(self, n: fx.Node, lab: Any) -> None:
        for lb in _labs(lab):
            lb.compact()
            if len(lb.varying()) > 1:  # not a set of slabs along one dim: cannot be sliced
                self.freeze_atoms(lb.L.reshape(-1), f"channels spread over several dims at {_where(n)}")
        self.labs[n.name] = lab

    def inputs(self, n: fx.Node) -> list[Lab]:
        found: list[Lab] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: found.extend(_labs(self.labs.get(a.name))))
        return found

    def refuse(self, n: fx.Node, why: str = "not supported by the channel-dependency engine", hard: bool = False) -> None:
        e = UnsupportedOp(_op_name(n), _where(n), why)
        e.hard = hard  # type: ignore[attr-defined]
        raise e

    def call(self, n: fx.Node, comp: str, full: bool = True, extra: dict | None = None) -> Any:
        """Evaluate ``n``'s op with every labelled tensor argument replaced by component ``comp``."""
        def sub(a: fx.Node) -> Any:
            lab = self.labs.get(a.name)
            if lab is None:
                return self.env[a]
            return self._mat(lab, comp, full)
        args = fx.node.map_arg(n.args, sub)
        kwargs = dict(fx.node.map_arg(n.kwargs, sub), **(extra or {}))
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "call_module":
            return self.module.get_submodule(n.target)(*args, **kwargs)
        return n.target(*args, **kwargs)

    def _mat(self, lab: Any, comp: str, full: bool) -> Any:
        if isinstance(lab, (tuple, list)):
            return type(lab)(self._mat(v, comp, full) for v in lab)
        if comp == "B":
            b = torch.arange(lab.shape[0], dtype=torch.long).view([-1] + [1] * (len(lab.shape) - 1))
            return b.expand(lab.shape).contiguous()
        t = getattr(lab, comp)
        if comp == "V":
            t = t.float()
        return t.expand(lab.shape).contiguous() if full else t

    # --------------------------------------------------------------------------------- dispatch
    def visit(self, n: fx.Node, value: Any) -> None:
        if n.op in ("placeholder", "get_attr"):
            self.labs[n.name] = _blank_like(value)
            return
        if n.op == "output":
            fx.node.map_arg(n.args, lambda a: self.freeze(self.labs.get(a.name), n, "model output"))
            return
        if n.op == "call_module" and n.target in self.opaque:  # run as it is: what enters or leaves keeps its size
            self.freeze(self.inputs(n), n, f"opaque module {self.opaque[str(n.target)]}")
            self.labs[n.name] = _blank_like(value)
            return
        if _blank_like(value) is None or not _labs(_blank_like(value)):
            return  # a shape, a size, an assert: no tensor comes out
        ins = self.inputs(n)
        if n.op == "call_module":
            self.visit_module(n, value, ins)
        elif not any(lb.has_atoms() for lb in ins):
            self.labs[n.name] = _blank_like(value)  # no atom flows in: nothing to slice or couple
        else:
            self.visit_function(n, value, ins)

    def visit_module(self, n: fx.Node, value: Any, ins: list[Lab]) -> None:
        path = str(n.target)
        m = self.module.get_submodule(path)
        self.calls[path] = self.calls.get(path, 0) + 1
        stateful = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if self.calls[path] > 1 and stateful and not isinstance(m, SHAREABLE):
            self.refuse(n, "the module is called more than once (shared weights)", hard=True)
        if self.calls[path] > 1 and stateful and not any(e.module == path for e in self.consumers + self.channelwise):
            # its first call registered nothing (no channels reached it, or it was run as it is): no edit of
            # the module may happen, so this call is run as it is too, its channels frozen
            self.freeze(ins, n, f"shared module {path} whose first call is not edited")
            self.labs[n.name] = _blank_like(value)
            return
        x = ins[0] if len(ins) == 1 and isinstance(value, torch.Tensor) else None
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if x is None or (not isinstance(m, nn.Linear) and len(shape) != 4):
                self.refuse(n, "expected one (N, C, H, W) tensor input")
            {nn.Conv2d: self.conv, nn.ConvTranspose2d: self.conv_t, nn.Linear: self.linear}[
                next(c for c in (nn.Conv2d, nn.ConvTranspose2d, nn.Linear) if isinstance(m, c))](n, m, x, shape)
            if n.name not in self.from_input:  # e.g. Swin V2's position-bias MLP on a buffer
                self.freeze(self.labs.get(n.name), n, "a layer no model input reaches (it computes a constant)")
            return
        if not any(lb.has_atoms() for lb in ins):
            self.labs[n.name] = _blank_like(value)
            return
        if x is None:
            self.refuse(n, "expected one tensor input and one tensor output")
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            exact = isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
            self.channelwise_layer(n, m, x, shape, m if exact else None)
        elif isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels:
            self.channelwise_layer(n, m, x, shape, None)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            self.freeze(x, n, f"{type(m).__name__} normalises across channels")
            self.store(n, Lab(x.L, torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.float64), shape))
        elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
            self.channelwise_layer(n, m, x, shape, m)
        elif isinstance(m, ELEMENTWISE_MODULES + (nn.PReLU,)):
            self.unary(n, x, shape)
        elif isinstance(m, POOL_MODULES):
            self.spatial(n, m, x, shape)
        elif isinstance(m, nn.Flatten):
            self.reshape(n, x, value)
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            self.softmax(n, x, shape, m.dim)
        else:
            self.refuse(n)

    def visit_function(self, n: fx.Node, value: Any, ins: list[Lab]) -> None:
        t, fn = n.target, n.op == "call_function"
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        x = ins[0]
        args, kwargs = fx.node.map_arg(n.args, lambda a: self.env[a]), fx.node.map_arg(n.kwargs, lambda a: self.env[a])
        tensors = [a for a in fx.node.map_aggregate(list(args) + list(kwargs.values()), lambda v: v)
                   if isinstance(a, torch.Tensor)]
        if (fn and t in BINARY_FNS) or (not fn and t in BINARY_METHODS):
            if len(tensors) == 1:
                self.unary(n, x, shape)
            elif len(tensors) == 2 and len(ins) == 2:
                self.binary(n, ins[0], ins[1], shape)
            else:
                self.refuse(n, "element-wise op on more than two tensors")
        elif (fn and t in UNARY_FNS) or (not fn and t in UNARY_METHODS):
            if len(ins) != 1 or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
                self.refuse(n, "element-wise op with several tensor inputs")
            self.unary(n, x, shape)
        elif fn and getattr(t, "__name__", "") == "stochastic_depth" and "torchvision" in getattr(t, "__module__", ""):
            training = kwargs.get("training", args[3] if len(args) > 3 else True)
            if training or len(ins) != 1:
                self.refuse(n, "stochastic depth in training mode")
            self.store(n, Lab(x.L, x.K, x.V, shape))  # identity in eval mode
        elif fn and t in POOL_FNS:
            self.spatial(n, None, x, shape)
        elif (fn and t in RESHAPE_FNS) or (not fn and t in RESHAPE_METHODS):
            self.reshape(n, x, value)
        elif (fn and t in MOVE_FNS) or (not fn and t in MOVE_METHODS):
            self.shape_op(n, value)
        elif (fn and t in CUT_FNS) or (not fn and t in CUT_METHODS):
            self.cut(n, x, args, kwargs, value)
        elif fn and t in CAT_FNS:
            dim = _dim_arg(args, kwargs, 1)
            for lb in ins:
                if any(d != dim % len(lb.shape) for d in lb.varying()):
                    self.freeze(ins, n, "concatenation along a dim other than the channels'")
            self.shape_op(n, value)
        elif (fn and t in REDUCE_FNS) or (not fn and t in REDUCE_METHODS):
            self.reduce(n, x, args, kwargs, value)
        elif (fn and t in SOFTMAX_FNS) or (not fn and t in SOFTMAX_METHODS):
            self.softmax(n, x, shape, _dim_arg(args, kwargs, 1, None))
        elif fn and t in NORM_FNS:
            self.freeze(x, n, "normalisation across channels")
            self.store(n, Lab(x.L, torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.float64), shape))
        else:
            self.refuse(n)

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
            k, v = _depthwise_const(m, K, V)
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
        self.consumers.append(Consumer(path, "convT", L, nc, torch.zeros(len(L), dtype=torch.float64), g))
        atoms = self.new_atoms(m.out_channels)
        if g > 1:
            for j in range(t):
                self.union_all(atoms[j::t], "")
        self.producers.append(Indexed(path, atoms))
        w = m.weight.detach().abs()
        zero = (w.view(g, s, t, -1).sum(dim=(1, 3)).reshape(-1) == 0).cpu()  # output k·t + j
        bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(m.out_channels, dtype=torch.float64)
        self.store(n, Lab(atoms.view(1, -1, 1, 1), zero.view(1, -1, 1, 1), bias.view(1, -1, 1, 1), shape))

    def reuse(self, earlier: Consumer, L: torch.Tensor, K: torch.Tensor, V: torch.Tensor, why: str) -> torch.Tensor:
        """A later call of a shared conv / Linear: inputs merged with the first call's, the same output atoms;
        an input folds as a constant only if it is the same constant at every call."""
        self.union_rows(earlier.labels, L, why)
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
            k, v = _apply(lambda t: const_fn(t), k, v)
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
        if bool(one.any()):
            self.freeze_atoms(torch.where(La >= 0, La, Lb)[one], f"an element-wise op with a tensor that has no atom at {_where(n)}")
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
        if set(_split_dims(x.shape, tuple(value.shape))) & set(x.varying()):
            self.freeze(x, n, "a view that splits the channel dim (e.g. channel shuffle)")
        self.shape_op(n, value)

    def cut(self, n: fx.Node, x: Lab, args: tuple, kwargs: dict, value: Any) -> None:
        t = n.target
        if t is operator.getitem:
            src = self.labs.get(n.args[0].name) if isinstance(n.args[0], fx.Node) else None
            if isinstance(src, (tuple, list)):
                self.labs[n.name] = src[args[1]]
                return
            dims = _cut_dims(args[1], len(x.shape))
        elif t in (torch.narrow, "narrow"):
            dims = [_dim_arg(args, kwargs, 1)]
        elif t in (torch.unbind, "unbind"):
            dims = [_dim_arg(args, kwargs, 1)]
        else:
            dims = [_dim_arg(args, kwargs, 2)]
        if any(d % len(x.shape) in x.varying() for d in dims):
            self.freeze(x, n, f"{_op_name(n)} cuts the channel dim (its sizes would change with a removal)")
        self.shape_op(n, value)

    def reduce(self, n: fx.Node, x: Lab, args: tuple, kwargs: dict, value: torch.Tensor) -> None:
        dims = _dim_arg(args, kwargs, 1, None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        rank = len(x.shape)
        dims = list(range(rank)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        dims = sorted(d % rank for d in dims)
        if 0 in dims or set(dims) & set(x.varying()) or not isinstance(value, torch.Tensor):
            self.freeze(x, n, "a reduction across channels")
            self.labs[n.name] = _blank_like(value)
            return
        L = x.full("L").amax(dim=dims, keepdim=keep)
        K = x.full("K").to(torch.int8).amin(dim=dims, keepdim=keep).bool()
        V = self.call(n, "V").double()
        self.store(n, Lab(L, K, V, tuple(value.shape)))
