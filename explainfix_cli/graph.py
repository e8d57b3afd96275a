"""Trace a model and find the channel *spaces*: sets of tensors whose channel index means the same thing.

A space is closed under channel-wise ops (BN, activations, pooling, residual ``+``, depthwise conv):
removing channel ``c`` from a space removes it from every tensor in it at once. Its boundary is made of

* producers  — convs whose output rows create the space (sliced on the output side),
* consumers  — convs / Linears that mix channels (sliced on the input side; Linear after flatten reads
  a block of ``h·w`` features per channel),
* channel-wise layers inside it (BN, depthwise conv: sliced along),
* frozen ends — the model's inputs and outputs, Linear features: a space touching one is never pruned.

Example, a ResNet basic block ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``:
``space(x) = {x, bn2.out, add, y}`` with producers ``{stem conv, conv2}`` and consumers ``{conv1, …}``;
``space(conv1.out) = {conv1.out, bn1.out, relu}`` with producer conv1 and consumer conv2.

The analysis also propagates, per tensor and channel, whether the channel is a *constant* and its value
(a conv row of zeros outputs its bias; BN, ReLU, pooling and ``+`` of constants stay constant). Anything
it does not understand raises :class:`UnsupportedOp` naming the op and the module path.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedOp

ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout,
)
ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.gelu, F.hardswish,
    F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout2d,
    torch.nn.functional.relu_, torch.relu_,
}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "detach"}
SCALAR_BINARY = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.truediv,
                 torch.add, torch.mul, torch.sub, torch.div}
SCALAR_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
ADD_OPS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
FLATTEN_FUNCTIONS = {torch.flatten}
FLATTEN_METHODS = {"flatten", "view", "reshape"}
SHAPE_METHODS = {"size", "dim"}


@dataclass
class Consumer:
    """A channel-mixing layer reading ``tensor`` (an fx node name) of a space."""

    module: str
    kind: str  # conv | linear
    tensor: str
    block: int = 1  # features per channel (Linear after flatten: h·w)


@dataclass
class Space:
    id: int
    size: int
    tensors: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)  # conv modules whose output rows are this space
    channelwise: list[str] = field(default_factory=list)  # BN / depthwise convs sliced along
    consumers: list[Consumer] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)  # reasons it may not change

    @property
    def prunable(self) -> bool:
        return not self.frozen


@dataclass
class ChannelGraph:
    spaces: list[Space]
    const: dict[str, tuple[torch.Tensor, torch.Tensor]]  # tensor → (is_const bool[C], value[C])
    block: dict[str, int]
    space_of: dict[str, int]

    def space_of_module_output(self, module: str) -> Space | None:
        for s in self.spaces:
            if module in s.producers:
                return s
        return None


class _PathTracer(fx.Tracer):
    """Symbolic tracer that records, on every node, the path of the module whose forward created it."""

    def __init__(self) -> None:
        super().__init__()
        self._stack: list[str] = []

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self._stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._stack.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["module_path"] = self._stack[-1] if self._stack else "<top>"
        return node


def trace(model: nn.Module, example: Any) -> fx.GraphModule:
    """torch.fx trace + shape propagation on ``example``; a failure becomes :class:`UnsupportedOp`."""
    from torch.fx.passes.shape_prop import ShapeProp

    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # data-dependent control flow, unsupported python
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsupportedOp("symbolic trace", type(model).__name__, f"torch.fx cannot trace the model: {first[:200]}") from None
    gm = fx.GraphModule(tracer.root, graph)
    with torch.no_grad():
        args = example if isinstance(example, (tuple, list)) else (example,)
        try:
            ShapeProp(gm).propagate(*args)
        except Exception as e:
            raise UnsupportedOp("shape propagation", type(model).__name__, f"{type(e).__name__}: {str(e)[:200]}") from None
    return gm


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


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.parent: dict[str, str] = {}
        self.block: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.const: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.producers: dict[str, list[str]] = {}
        self.channelwise: dict[str, list[str]] = {}
        self.consumers: list[Consumer] = []
        self.frozen: dict[str, list[str]] = {}
        self.module_calls: dict[str, int] = {}

    # union-find over tensor nodes
    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def new_tensor(self, node: fx.Node, channels: int, block: int = 1, same_as: str | None = None) -> None:
        self.parent[node.name] = node.name
        self.size[node.name] = channels
        self.block[node.name] = block
        if same_as is not None:
            self.union(same_as, node.name)
        if node.name not in self.const:
            self.const[node.name] = (torch.zeros(channels, dtype=torch.bool), torch.zeros(channels, dtype=torch.float64))

    def freeze(self, tensor: str, reason: str) -> None:
        self.frozen.setdefault(tensor, []).append(reason)

    # ---------------------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            self.visit(node)
        groups: dict[str, Space] = {}
        spaces: list[Space] = []
        for t in self.parent:
            r = self.find(t)
            if r not in groups:
                groups[r] = Space(id=len(spaces), size=self.size[r])
                spaces.append(groups[r])
            s = groups[r]
            s.tensors.append(t)
            s.producers += self.producers.get(t, [])
            s.channelwise += self.channelwise.get(t, [])
            s.frozen += self.frozen.get(t, [])
        for c in self.consumers:
            groups[self.find(c.tensor)].consumers.append(c)
        for s in spaces:
            s.channelwise = list(dict.fromkeys(s.channelwise))
        space_of = {t: groups[self.find(t)].id for t in self.parent}
        return ChannelGraph(spaces, self.const, dict(self.block), space_of)

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        """Input nodes of ``node`` that carry one of our channel tensors, in argument order."""
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n.name in self.parent else None)
        return found

    def visit(self, node: fx.Node) -> None:
        shape = _shape(node)
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                self.new_tensor(node, shape[1])
                self.freeze(node.name, "model input")
            return
        if node.op == "output":
            def mark(n: fx.Node) -> fx.Node:
                if n.name in self.parent:
                    self.freeze(n.name, "model output")
                return n
            fx.node.map_arg(node.args, mark)
            return
        if node.op == "get_attr":
            if node.users and shape is not None:
                raise UnsupportedOp("get_attr", _where(node), f"a tensor attribute `{node.target}` used in forward")
            return
        inputs = self.tensor_args(node)
        if node.op == "call_module":
            self.visit_module(node, inputs, shape)
        elif node.op == "call_method" and node.target in SHAPE_METHODS:
            return  # reads the shape only
        elif node.op == "call_function" and node.target is getattr:
            if node.args[1] in ("shape", "dtype", "device", "ndim"):
                return
            raise UnsupportedOp(_op_name(node), _where(node), f"attribute access .{node.args[1]}")
        elif node.op == "call_function" and node.target is operator.getitem and not inputs:
            return  # indexing a shape tuple
        else:
            self.visit_function(node, inputs, shape)

    # --------------------------------------------------------------------------------- modules
    def visit_module(self, node: fx.Node, inputs: list[fx.Node], shape: tuple | None) -> None:
        path = str(node.target)
        m = self.gm.get_submodule(path)
        self.module_calls[path] = self.module_calls.get(path, 0) + 1
        stateful = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if self.module_calls[path] > 1 and stateful:
            raise UnsupportedOp(type(m).__name__, path, "the module is called more than once (shared weights)")
        if len(inputs) != 1 or shape is None:
            raise UnsupportedOp(type(m).__name__, path, "expected one tensor input and one tensor output")
        x = inputs[0]
        if isinstance(m, nn.Conv2d):
            if is_depthwise(m):
                self.new_tensor(node, shape[1], same_as=x.name)
                self.channelwise.setdefault(node.name, []).append(path)
                self.const[node.name] = _depthwise_const(m, *self.const[x.name])
                return
            if m.groups != 1:
                raise UnsupportedOp("Conv2d(groups>1)", path, f"grouped convolution (groups={m.groups}) is not yet supported")
            self.consumers.append(Consumer(path, "conv", x.name))
            self.new_tensor(node, shape[1])
            self.producers[node.name] = [path]
            w = m.weight.detach()
            zero_rows = w.flatten(1).abs().sum(1) == 0
            value = m.bias.detach().double() if m.bias is not None else torch.zeros(shape[1], dtype=torch.float64)
            self.const[node.name] = (zero_rows.cpu(), value.cpu())
            return
        if isinstance(m, nn.Linear):
            if self.block.get(x.name) is None or len(_shape(x) or ()) != 2:
                raise UnsupportedOp("Linear", path, "Linear on a tensor that is not (batch, features)")
            self.consumers.append(Consumer(path, "linear", x.name, block=self.block[x.name]))
            self.new_tensor(node, shape[1])
            self.freeze(node.name, f"Linear features of {path}")
            return
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if not m.track_running_stats or m.running_mean is None:
                raise UnsupportedOp(type(m).__name__, path, "BatchNorm without running statistics")
            self.new_tensor(node, shape[1], self.block[x.name], same_as=x.name)
            if self.block[x.name] != 1:
                raise UnsupportedOp(type(m).__name__, path, "BatchNorm on flattened features")
            self.channelwise.setdefault(node.name, []).append(path)
            self.const[node.name] = _apply_const(lambda t: m(t.float()), *self.const[x.name])
            return
        if isinstance(m, ELEMENTWISE_MODULES):
            self.new_tensor(node, self.size[x.name], self.block[x.name], same_as=x.name)
            self.const[node.name] = _apply_const(lambda t: m(t.float()), *self.const[x.name])
            return
        if isinstance(m, POOL_MODULES):
            self.pool(node, x, shape, m)
            return
        if isinstance(m, nn.Flatten):
            self.flatten(node, x, shape)
            return
        raise UnsupportedOp(type(m).__name__, path)

    # ------------------------------------------------------------------------------- functions
    def visit_function(self, node: fx.Node, inputs: list[fx.Node], shape: tuple | None) -> None:
        target = node.target
        is_fn = node.op == "call_function"
        if not inputs:
            return  # no tensor of ours flows in
        if shape is None:
            raise UnsupportedOp(_op_name(node), _where(node), "an op that does not return one tensor")
        x = inputs[0]
        if (is_fn and target in ELEMENTWISE_FUNCTIONS) or (not is_fn and target in ELEMENTWISE_METHODS):
            if len(inputs) != 1:
                raise UnsupportedOp(_op_name(node), _where(node), "element-wise op with several tensor inputs")
            self.new_tensor(node, self.size[x.name], self.block[x.name], same_as=x.name)
            fn = _node_fn(node)
            self.const[node.name] = _apply_const(lambda t: fn(t.float()), *self.const[x.name])
            return
        is_add = (is_fn and target in ADD_OPS) or (not is_fn and target in ADD_METHODS)
        if is_add and len(inputs) == 2:
            a, b = inputs
            if _shape(a) != _shape(b) or _shape(a) != shape or self.block[a.name] != self.block[b.name]:
                raise UnsupportedOp(_op_name(node), _where(node), f"addition of tensors shaped {_shape(a)} and {_shape(b)}")
            if node.kwargs.get("alpha", 1) != 1 or (len(node.args) > 2):
                raise UnsupportedOp(_op_name(node), _where(node), "add with alpha")
            self.new_tensor(node, self.size[a.name], self.block[a.name], same_as=a.name)
            self.union(a.name, b.name)
            ca, va = self.const[a.name]
            cb, vb = self.const[b.name]
            self.const[node.name] = (ca & cb, torch.where(ca & cb, va + vb, torch.zeros_like(va)))
            return
        scalar_op = (is_fn and target in SCALAR_BINARY) or (not is_fn and target in SCALAR_BINARY_METHODS)
        if scalar_op and len(inputs) == 1 and _shape(x) == shape:
            self.new_tensor(node, self.size[x.name], self.block[x.name], same_as=x.name)
            fn = _node_fn(node)
            self.const[node.name] = _apply_const(lambda t: fn(t.float()), *self.const[x.name])
            return
        if is_fn and target in POOL_FUNCTIONS:
            self.pool(node, x, shape, None)
            return
        if (is_fn and target in FLATTEN_FUNCTIONS) or (not is_fn and target in FLATTEN_METHODS):
            self.flatten(node, x, shape)
            return
        if not is_fn and target == "mean" and len(inputs) == 1:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            xs = _shape(x)
            if xs is not None and len(xs) == 4 and sorted(d % 4 for d in dims) == [2, 3]:
                self.new_tensor(node, self.size[x.name], 1, same_as=x.name)
                self.const[node.name] = self.const[x.name]
                return
        raise UnsupportedOp(_op_name(node), _where(node))

    def pool(self, node: fx.Node, x: fx.Node, shape: tuple, m: nn.Module | None) -> None:
        if len(shape) != 4 or self.block[x.name] != 1 or shape[1] != self.size[x.name]:
            raise UnsupportedOp(_op_name(node), _where(node), "pooling that is not over (N, C, H, W)")
        self.new_tensor(node, shape[1], same_as=x.name)
        is_const, value = self.const[x.name]
        if isinstance(m, nn.AvgPool2d) or (m is None and node.target is F.avg_pool2d):
            padding = m.padding if m is not None else (node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0))
            include = m.count_include_pad if m is not None else node.kwargs.get("count_include_pad", True)
            override = m.divisor_override if m is not None else node.kwargs.get("divisor_override")
            padded = any(p != 0 for p in ((padding,) if isinstance(padding, int) else padding))
            if (padded and include) or override is not None:
                is_const = is_const & (value == 0)  # border windows average in zeros
        self.const[node.name] = (is_const.clone(), value.clone())

    def flatten(self, node: fx.Node, x: fx.Node, shape: tuple) -> None:
        xs = _shape(x)
        if xs is None or len(shape) != 2 or xs[0] != shape[0] or self.block[x.name] != 1:
            raise UnsupportedOp(_op_name(node), _where(node), f"reshape {xs} → {shape} is not a flatten of (N, C, …)")
        per_channel = 1
        for d in xs[2:]:
            per_channel *= d
        if shape[1] != xs[1] * per_channel:
            raise UnsupportedOp(_op_name(node), _where(node), f"reshape {xs} → {shape}")
        self.new_tensor(node, xs[1], per_channel, same_as=x.name)
        self.block[node.name] = per_channel
        self.const[node.name] = self.const[x.name]


def _node_fn(node: fx.Node):
    """A one-argument callable that applies ``node``'s op to a tensor (other args fixed)."""
    def fn(t: torch.Tensor) -> torch.Tensor:
        def swap(a):
            return t if isinstance(a, fx.Node) else a
        args = fx.node.map_aggregate(node.args, swap)
        kwargs = fx.node.map_aggregate(node.kwargs, swap)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        if "training" in kwargs:
            kwargs["training"] = False
        return node.target(*args, **kwargs)
    return fn


def _apply_const(fn, is_const: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Push constant channel values through a channel-wise function (evaluated on a (1, C) probe)."""
    if not bool(is_const.any()):
        return is_const.clone(), value.clone()
    try:
        with torch.no_grad():
            probe = value.view(1, -1, 1, 1).clone()
            out = fn(probe.clone()).double().reshape(-1)
    except Exception:
        return torch.zeros_like(is_const), torch.zeros_like(value)
    if out.numel() != value.numel() or not torch.isfinite(out[is_const]).all():
        return torch.zeros_like(is_const), torch.zeros_like(value)
    return is_const.clone(), torch.where(is_const, out, torch.zeros_like(out))


def _depthwise_const(m: nn.Conv2d, in_const: torch.Tensor, in_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = m.weight.detach().double().cpu()
    bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    zero = w.flatten(1).abs().sum(1) == 0
    no_border = all(p == 0 for p in m.padding) if isinstance(m.padding, tuple) else m.padding == "valid"
    if m.padding_mode != "zeros":
        no_border = True
    through = in_const & ((in_value == 0) | no_border)
    is_const = zero | through
    value = torch.where(zero, bias, in_value * w.flatten(1).sum(1) + bias)
    return is_const, torch.where(is_const, value, torch.zeros_like(value))


def analyse(gm: fx.GraphModule) -> ChannelGraph:
    """Channel spaces of a traced model, with constant-channel facts read from its *current* weights
    (re-run after zeroing: cheap, no forward pass)."""
    return _Builder(gm).run()


def build_graph(model: nn.Module, example: Any) -> tuple[fx.GraphModule, ChannelGraph]:
    """Trace ``model`` on ``example`` and analyse it."""
    gm = trace(model, example)
    return gm, analyse(gm)
