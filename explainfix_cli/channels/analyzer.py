"""The op handlers of the channel analysis (see graph.py for the model): an fx interpreter that runs the
model on the example and, node by node, computes each tensor's label map and the couplings."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..core.errors import UnsupportedOp
from .labels import Consumer, Indexed, Lab, find_root, module_of, op_name, where_of
from .ops import LayerOps
from .rules import (
    BINARY_FNS,
    BINARY_METHODS,
    CAT_FNS,
    FACTORY_METHODS,
    CUT_FNS,
    CUT_METHODS,
    ELEMENTWISE_MODULES,
    MOVE_FNS,
    MOVE_METHODS,
    NORM_FNS,
    POOL_FNS,
    POOL_MODULES,
    REDUCE_FNS,
    REDUCE_METHODS,
    RESHAPE_FNS,
    RESHAPE_METHODS,
    SOFTMAX_FNS,
    SOFTMAX_METHODS,
    UNARY_FNS,
    UNARY_METHODS,
    blank_like,
    dim_arg,
    labs_of,
)

# stateful layers that may be called more than once: every call site's channels are merged position by
# position with the first call's, so one edit of the module fits all of them
SHAREABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
             nn.GroupNorm, nn.LayerNorm, nn.PReLU)


class Analyzer(LayerOps, fx.Interpreter):
    """One pass over one graph. ``prior``: the eval-mode pass whose atoms, couplings and boundary layers this
    pass (over the training-mode graph) extends: every layer the prior pass saw is a later call of a shared
    layer here (its channels merged position by position), a layer only training mode runs registers anew
    with its own output channels frozen, and no constant is tracked (folds are decided in eval mode; the
    training-mode graph only adds couplings, never removes one)."""

    def __init__(self, gm: fx.GraphModule, prior: Analyzer | None = None) -> None:
        super().__init__(gm)
        self.labs: dict[str, Any] = {}
        self.parent: list[int] = prior.parent if prior else []
        self.frozen: dict[int, str] = prior.frozen if prior else {}
        self.consumers: list[Consumer] = prior.consumers if prior else []
        self.producers: list[Indexed] = prior.producers if prior else []
        self.channelwise: list[Indexed] = prior.channelwise if prior else []
        self.calls: dict[str, int] = prior.calls if prior else {}  # over every pass: later calls merge with the first
        self.pass_calls: dict[str, int] = {}  # in this pass: a stateful module called twice in one forward is shared
        self.constants = prior is None
        self.current: fx.Node | None = None
        self.passed: dict[str, str] = prior.passed if prior else {}  # unsupported ops run as they are, inputs frozen
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
            if e.hard or not self.inputs_frozen(n):
                raise
            self.labs[n.name] = blank_like(value)
            self.passed.setdefault(e.where, f"`{e.op}` run as it is (every channel reaching it is frozen)")
        return value

    def inputs_frozen(self, n: fx.Node) -> bool:
        atoms = torch.cat([lb.L.reshape(-1) for lb in self.inputs(n)] or [torch.empty(0, dtype=torch.long)])
        roots = {self.root(a) for a in self.frozen}
        return all(self.root(a) in roots for a in torch.unique(atoms[atoms >= 0]).tolist())

    def new_atoms(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        atoms = torch.arange(start, start + n)
        if not self.constants and self.current is not None:  # never scored (no eval forward runs it): kept whole
            self.freeze_atoms(atoms, f"a layer only training mode runs ({where_of(self.current)})")
        return atoms

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
        for lb in labs_of(lab):
            self.freeze_atoms(lb.L.reshape(-1), f"{why} at {where_of(n)}")

    def store(self, n: fx.Node, lab: Any) -> None:
        for lb in labs_of(lab):
            if not self.constants:
                lb.K, lb.V = torch.zeros_like(lb.K), torch.zeros_like(lb.V)
            lb.compact()
            if len(lb.varying()) > 1:  # not a set of slabs along one dim: cannot be sliced
                self.freeze_atoms(lb.L.reshape(-1), f"channels spread over several dims at {where_of(n)}")
        self.labs[n.name] = lab

    def inputs(self, n: fx.Node) -> list[Lab]:
        found: list[Lab] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: found.extend(labs_of(self.labs.get(a.name))))
        return found

    def refuse(self, n: fx.Node, why: str = "not supported by the channel-dependency engine", hard: bool = False) -> None:
        raise UnsupportedOp(op_name(n), where_of(n), why, module=module_of(n), hard=hard)

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

    def scalar(self, n: fx.Node, value: Any) -> Lab | None:
        """A one-element tensor no model input reaches (a learnable scalar scale or bias, ``x * s + b``): a
        constant, so a dead channel it scales or shifts stays a constant that folds."""
        if (not self.constants or n.op == "placeholder" or n.name in self.from_input
                or not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point()):
            return None
        one = [1] * value.dim()
        return Lab(torch.full(one, -1, dtype=torch.long), torch.ones(one, dtype=torch.bool),
                   value.detach().double().cpu().reshape(one), tuple(value.shape))

    # --------------------------------------------------------------------------------- dispatch
    def visit(self, n: fx.Node, value: Any) -> None:
        if n.op in ("placeholder", "get_attr"):
            self.labs[n.name] = self.scalar(n, value) or blank_like(value)
            return
        if n.op == "output":
            fx.node.map_arg(n.args, lambda a: self.freeze(self.labs.get(a.name), n, "model output"))
            return
        if n.op == "call_module" and n.target in self.opaque:  # run as it is: what enters or leaves keeps its size
            self.freeze(self.inputs(n), n, f"opaque module {self.opaque[str(n.target)]}")
            self.labs[n.name] = blank_like(value)
            return
        if blank_like(value) is None or not labs_of(blank_like(value)):
            return  # a shape, a size, an assert: no tensor comes out
        ins = self.inputs(n)
        if n.op == "call_module":
            self.visit_module(n, value, ins)
        elif not any(lb.has_atoms() for lb in ins):
            self.labs[n.name] = self.scalar(n, value) or blank_like(value)  # no atom flows in: nothing to slice or couple
        else:
            self.visit_function(n, value, ins)

    def visit_module(self, n: fx.Node, value: Any, ins: list[Lab]) -> None:
        path = str(n.target)
        m = self.module.get_submodule(path)
        self.calls[path] = self.calls.get(path, 0) + 1
        self.pass_calls[path] = self.pass_calls.get(path, 0) + 1
        stateful = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if self.pass_calls[path] > 1 and stateful and not isinstance(m, SHAREABLE):
            self.refuse(n, "the module is called more than once (shared weights)", hard=True)
        if self.calls[path] > 1 and stateful and not any(e.module == path for e in self.consumers + self.channelwise):
            # its first call registered nothing (no channels reached it, or it was run as it is): no edit of
            # the module may happen, so this call is run as it is too, its channels frozen
            self.freeze(ins, n, f"shared module {path} whose first call is not edited")
            self.labs[n.name] = blank_like(value)
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
            self.labs[n.name] = blank_like(value)
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
        if fn and isinstance(t, type) and issubclass(t, tuple) and isinstance(value, tuple) and not n.kwargs:
            # a namedtuple of outputs (torchvision's InceptionOutputs): a container, its fields as they are
            self.labs[n.name] = tuple(self.labs.get(a.name) if isinstance(a, fx.Node) else blank_like(v)
                                      for a, v in zip(n.args, value))
        elif (fn and t in BINARY_FNS) or (not fn and t in BINARY_METHODS):
            if len(tensors) == 1:
                self.unary(n, x, shape)
            elif len(tensors) == 2 and len(ins) == 2:
                self.binary(n, ins[0], ins[1], shape)
            else:
                self.refuse(n, "element-wise op on more than two tensors")
        elif not fn and t in FACTORY_METHODS:  # x.new_full(size, v): only x's dtype and device are used
            self.labs[n.name] = blank_like(value)
        elif not fn and t == "type_as":  # x.type_as(y): x cast to y's dtype; y's channels do not matter
            src = self.labs.get(n.args[0].name) if isinstance(n.args[0], fx.Node) else None
            if not isinstance(src, Lab) or not isinstance(value, torch.Tensor) or tuple(value.shape) != src.shape:
                self.refuse(n, "type_as of a value that is not one tensor")
            self.store(n, Lab(src.L, src.K, src.V.to(value.dtype).double(), shape))
        elif (fn and t in UNARY_FNS) or (not fn and t in UNARY_METHODS):
            if len(ins) != 1 or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
                self.refuse(n, "element-wise op with several tensor inputs")
            self.unary(n, x, shape)
        elif fn and getattr(t, "__name__", "") == "stochastic_depth" and "torchvision" in getattr(t, "__module__", ""):
            training = kwargs.get("training", args[3] if len(args) > 3 else True)
            if len(ins) != 1:
                self.refuse(n, "stochastic depth of several tensors")
            # identity in eval mode; in training mode a random factor per sample (or batch): channels keep
            # their identity, constants do not survive it
            self.store(n, Lab(x.L, torch.zeros_like(x.K) if training else x.K, x.V, shape))
        elif fn and t in POOL_FNS:
            self.spatial(n, None, x, shape)
        elif (fn and t in RESHAPE_FNS) or (not fn and t in RESHAPE_METHODS):
            self.reshape(n, x, value)
        elif (fn and t in MOVE_FNS) or (not fn and t in MOVE_METHODS):
            self.shape_op(n, value)
        elif (fn and t in CUT_FNS) or (not fn and t in CUT_METHODS):
            self.cut(n, x, args, kwargs, value)
        elif fn and t in CAT_FNS:
            dim = dim_arg(args, kwargs, 1)
            for lb in ins:
                if any(d != dim % len(lb.shape) for d in lb.varying()):
                    self.freeze(ins, n, "concatenation along a dim other than the channels'")
            self.shape_op(n, value)
        elif (fn and t in REDUCE_FNS) or (not fn and t in REDUCE_METHODS):
            self.reduce(n, x, args, kwargs, value)
        elif (fn and t in SOFTMAX_FNS) or (not fn and t in SOFTMAX_METHODS):
            self.softmax(n, x, shape, dim_arg(args, kwargs, 1, None))
        elif fn and t in NORM_FNS:
            self.freeze(x, n, "normalisation across channels")
            self.store(n, Lab(x.L, torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.float64), shape))
        else:
            self.refuse(n)
