"""Turn a model into an fx graph the channel analysis can read, for models plain symbolic tracing rejects.

Plain ``torch.fx`` tracing fails as soon as Python looks at a traced value: ``if x.shape[-1] != s.shape[-1]``,
``len(x.shape)``, ``range(x.size(1))``. Here every proxy also carries the *concrete* value it has on the
example input (each op is run once, for real, as it is recorded), so control flow that depends only on
**shapes** is decided on the example; each such decision is recorded as a *guard*.

Control flow that depends on tensor **values** (``if x.mean() > 0``, ``.item()``) cannot be decided that way.
The submodule where it happens becomes *opaque*: it is traced as one call, run as it is, and every channel
that enters or leaves it is frozen (its own kernels may be zeroed, never removed). The model is retraced
until it succeeds; if the model's own ``forward`` is the culprit, it is refused naming the place.

Guards make a pruned model safe to trust: after surgery the model is traced again on the same input, and
if any shape decision comes out differently (the code branches on a channel count), pruning is refused.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx
from torch import nn
from torch.fx.proxy import Attribute

from ..core.errors import CannotProcess, UnsupportedOp, first_line
from ..core.model import attributes_kept, in_training_mode
from .rules import behaves_like_base, is_norm_act, same_padded

# nn.Module's own __call__/__getattr__, saved before fx patches them while tracing
_MODULE_CALL, _MODULE_GETATTR = nn.Module.__call__, nn.Module.__getattr__
MAX_OPAQUE = 64  # retrace at most this many times (one new opaque module each)
_FIXED_ATTRS = {"device", "dtype", "is_cuda", "layout"}
_DATA_METHODS = {"item", "tolist", "any", "all", "nonzero", "numpy", "cpu", "data_ptr"}


class DataDependent(Exception):
    """Python control flow needs a tensor value that is only known at run time."""


@dataclass
class Traced:
    graph: fx.Graph
    root: nn.Module
    opaque: dict[str, str] = field(default_factory=dict)  # module path -> why it could not be traced
    guards: list[tuple[str, Any]] = field(default_factory=list)  # (where, decided value), in order


class _Concrete:
    """Python conversions of a proxy, answered from its concrete (example) value when that is a shape fact."""

    def _value(self) -> Any:
        return self.tracer.concrete_of(self, "used as a Python value")  # type: ignore[attr-defined]

    def __len__(self) -> int:
        value = self.node.meta.get("concrete")  # type: ignore[attr-defined]
        n = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else len(self._value())
        return self.tracer.decide(self, n, "len()")  # type: ignore[attr-defined]

    def __index__(self) -> int:
        return self.tracer.decide(self, int(self._value()), "an index")  # type: ignore[attr-defined]

    def __int__(self) -> int:
        return self.__index__()

    def __float__(self) -> float:
        return self.tracer.decide(self, float(self._value()), "float()")  # type: ignore[attr-defined]

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__"):
            raise AttributeError(k)
        if k in _FIXED_ATTRS and self.tracer.evaluate:  # type: ignore[attr-defined]
            # where a tensor lives and its type never change with a channel count: answered from the example,
            # so ``torch.autocast(device_type=x.device.type)`` gets a real string
            value = self.node.meta.get("concrete")  # type: ignore[attr-defined]
            if isinstance(value, torch.Tensor):
                return getattr(value, k)
        return _ConcreteAttribute(self, k)  # type: ignore[arg-type]


class _ConcreteProxy(_Concrete, fx.Proxy):
    pass


class _ConcreteAttribute(_Concrete, Attribute):
    pass


def _holds_proxy(v: Any) -> bool:
    if isinstance(v, (tuple, list)):
        return any(_holds_proxy(x) for x in v)
    if isinstance(v, dict):
        return any(_holds_proxy(x) for x in v.values())
    return isinstance(v, fx.Proxy)


class ConcreteTracer(fx.Tracer):
    """fx tracer that records, on every node, the module path whose forward created it (``module_path``) and
    the concrete value on the example (``concrete``); shape-only control flow is decided and guarded."""

    def __init__(self, example_args: tuple, opaque: set[str] | None = None, evaluate: bool = True) -> None:
        super().__init__()
        self.evaluate = evaluate  # False: plain symbolic tracing (fast); any Python use of a value fails
        self._stack: list[str] = []
        self._example = list(example_args)
        self._placeholders = 0
        self.opaque = set(opaque or ())
        self._library_leaf: set[int] = set()  # norm-act layers and plain-behaving Linear/Conv2d subclasses
        self.guards: list[tuple[str, Any]] = []
        self.failed_at: str | None = None

    # ------------------------------------------------------------------ module bookkeeping
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.opaque or id(m) in self._library_leaf or super().is_leaf_module(m, qualname)

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        if not isinstance(root, nn.Module):
            return super().trace(root, concrete_args)
        # probed before tracing starts: a probe inside it would be recorded
        self._library_leaf = {id(m) for m in root.modules() if is_norm_act(m) or behaves_like_base(m) or same_padded(m)}
        # a forward that caches ``self.anchors`` / ``self.shape`` would leave proxies in the user's model;
        # fx's own new attributes (the _tensor_constant* it stores on the root) are not proxies and stay
        with attributes_kept(root, drop_new=lambda k, v: _holds_proxy(v)):
            return super().trace(root, concrete_args)

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list]:
        """Only the example's inputs become placeholders; every other forward argument (``targets=None``,
        ``augment=False``, ``*args``, ``**kwargs``) keeps its Python default, as in a plain call, so detection
        heads see ``None`` rather than a proxy of it."""
        fn = inspect.unwrap(root_fn)
        params = list(inspect.signature(fn).parameters.values())[1 if is_module else 0:]
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        n = len(self._example)
        if concrete_args is not None or len(positional) < n or (len(positional) == n and len(params) == n):
            return super().create_args_for_root(root_fn, is_module, concrete_args)  # nothing optional to fix
        args = [self.root] if is_module else []
        args += [self.create_proxy("placeholder", p.name, (), {}) for p in positional[:n]]
        return root_fn, args

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        path = self.path_of_module(m)
        self._stack.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # the innermost module being traced when it broke
                self.failed_at = path
            raise
        finally:
            self._stack.pop()

    def where(self) -> str:
        return self._stack[-1] if self._stack else ""

    # ------------------------------------------------------------------ concrete values
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["module_path"] = self.where() or "<top>"
        return node

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if not self.evaluate:
            return proxy
        node = proxy.node
        data = False

        def real(a: Any) -> Any:
            nonlocal data
            if isinstance(a, fx.Proxy):
                data = data or a.node.meta.get("data_dependent", False)
                return a.node.meta.get("concrete")
            return a
        cargs = fx.node.map_aggregate(args, real)
        ckwargs = fx.node.map_aggregate(kwargs, real)
        with torch.no_grad(), _unpatched():
            node.meta["concrete"] = self._evaluate(kind, target, cargs, ckwargs, node)
        node.meta["data_dependent"] = data or (kind == "call_method" and target in _DATA_METHODS)
        return proxy

    def _evaluate(self, kind: str, target: Any, args: Any, kwargs: Any, node: fx.Node) -> Any:
        if kind == "placeholder":
            i = self._placeholders
            self._placeholders += 1
            if i < len(self._example):
                a = self._example[i]
                return a.clone() if isinstance(a, torch.Tensor) else a  # in-place ops must not touch the example
            return args[0] if args else None
        if kind == "get_attr":
            obj: Any = self.root
            for part in str(target).split("."):
                obj = getattr(obj, part)
            return obj
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        return None

    def concrete_of(self, proxy: fx.Proxy, use: str) -> Any:
        if not self.evaluate:
            raise fx.proxy.TraceError(f"symbolic tracing cannot decide {use}")
        node = proxy.node
        value = node.meta.get("concrete")
        if node.meta.get("data_dependent") or isinstance(value, torch.Tensor):
            raise DataDependent(f"a tensor value is {use} in Python at {_user_line()}")
        return value

    def decide(self, proxy: fx.Proxy, value: Any, use: str) -> Any:
        self.guards.append((f"{self.where() or type(self.root).__name__} ({_user_line()}: {use} of {_describe(proxy.node)})", value))
        return value

    # fx hooks for `if proxy:` and `for v in proxy:`
    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.decide(obj, bool(self.concrete_of(obj, "a condition")), "a condition")

    def iter(self, obj: fx.Proxy) -> Iterator:
        if not self.evaluate:
            raise fx.proxy.TraceError("symbolic tracing cannot iterate a traced value")
        value = obj.node.meta.get("concrete")
        n = value.shape[0] if isinstance(value, torch.Tensor) and value.dim() else len(self.concrete_of(obj, "iterated"))
        self.decide(obj, n, "iteration length")
        return iter([obj[i] for i in range(n)])


@contextmanager
def _unpatched() -> Iterator[None]:
    """Run real modules while fx's tracing patches of nn.Module are active (else calls would be recorded)."""
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = _MODULE_CALL, _MODULE_GETATTR  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = call, getattr_  # type: ignore[method-assign]


def _user_line() -> str:
    """file:line of the model code being traced (the first frame outside torch and this module)."""
    frame = inspect.currentframe()
    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.dirname(__file__)) + os.sep)
    while frame is not None:
        f = frame.f_code.co_filename
        if not f.startswith(skip):
            return f"{os.sep.join(f.split(os.sep)[-3:])}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _describe(node: fx.Node) -> str:
    t = node.target
    return f"{node.op} {getattr(t, '__name__', t)}"


def _warm(model: nn.Module, example_args: tuple) -> None:
    """One real forward first: a forward that caches on its first call (``if self.shape != shape:
    self.anchors = …``) then takes the same branch in the trace before and after pruning (the guard sees a
    channel count, not a cold cache), and the graph reads the real cache. The cache stays, as after any
    call. Skipped in training mode (it would move BatchNorm statistics)."""
    if model.training:
        return
    try:
        with torch.no_grad():
            model(*example_args)
    except Exception:  # noqa: BLE001 - the trace itself reports what fails, naming where
        pass


def trace_model(model: nn.Module, example_args: tuple, opaque: dict[str, str] | None = None) -> Traced:
    """Trace ``model`` on ``example_args``; make submodules opaque one by one where values drive control flow.
    ``opaque`` (path -> reason) names submodules to keep whole from the start."""
    _warm(model, example_args)
    return _trace_model(model, example_args, opaque)


def _trace_model(model: nn.Module, example_args: tuple, opaque: dict[str, str] | None) -> Traced:
    opaque = dict(opaque or {})
    name = type(model).__name__
    try:  # plain symbolic tracing first: no forward pass, and most models need nothing more
        tracer = ConcreteTracer(example_args, set(opaque), evaluate=False)
        return Traced(tracer.trace(model), tracer.root, dict(opaque))
    except Exception:  # noqa: BLE001 - retried below with concrete values, which names the failure
        pass
    for _ in range(MAX_OPAQUE + 1):
        tracer = ConcreteTracer(example_args, set(opaque))
        try:
            graph = tracer.trace(model)
            for node in graph.nodes:  # the example's intermediate tensors: not needed past tracing
                node.meta.pop("concrete", None)
            return Traced(graph, tracer.root, opaque, tracer.guards)
        except Exception as e:  # noqa: BLE001 - any failure names where it happened
            first = first_line(e, 200)
            kind = "data-dependent control flow" if isinstance(e, DataDependent) else type(e).__name__
            where = tracer.failed_at
            if not where or where in opaque:
                raise UnsupportedOp("symbolic trace", f"{name}.forward" if not where else where,
                                    f"cannot trace the model ({kind}): {first}") from None
            cls = type(model.get_submodule(where)).__name__
            opaque[where] = f"{cls} cannot be traced ({kind}: {first}); run as it is, channels in and out frozen"
    raise CannotProcess(f"more than {MAX_OPAQUE} submodules of {name} could not be traced; refusing")


def trace_training(model: nn.Module, example_args: tuple, eval_traced: Traced,
                   opaque: dict[str, str] | None = None) -> tuple[Traced | None, str | None]:
    """The model's graph in training mode, where it differs from the eval-mode one (``eval_traced``): a branch
    only training runs (Inception's auxiliary head), another output. ``(None, None)`` when the two graphs
    run the same ops on the same values (only the ops' own mode differs: dropout, BatchNorm statistics);
    ``(None, why)`` when training mode cannot be traced. The model's mode flags and buffers are untouched."""
    try:
        with in_training_mode(model):
            traced = _trace_model(model, example_args, opaque)
    except Exception as e:  # noqa: BLE001 - e.g. a forward that wants targets in training mode
        return None, f"training mode could not be traced: {first_line(e, 200)}"
    if _signature(traced.graph) == _signature(eval_traced.graph):
        return None, None
    return traced, None


def _signature(graph: fx.Graph) -> list[tuple]:
    """Which ops run on which values (names of fx's numbered tensor constants left out: each trace counts on)."""
    names = {n: f"{n.op}{i}" for i, n in enumerate(graph.nodes)}

    def target(n: fx.Node) -> Any:
        if n.op == "get_attr" and str(n.target).startswith("_tensor_constant"):
            return "_tensor_constant"
        return n.target if isinstance(n.target, str) else id(n.target)
    return [(n.op, target(n), tuple(names[a] for a in n.all_input_nodes)) for n in graph.nodes]


def check_guards(model: nn.Module, example_args: tuple, traced: Traced, training: bool = False) -> None:
    """Retrace ``model`` (after surgery; in training mode if ``training``) and refuse if any shape decision
    of the original trace changed."""
    if not traced.guards:
        return  # no Python decision looked at a traced value: nothing can change with channel counts
    if training:
        with in_training_mode(model):
            _check_guards(model, example_args, traced)
    else:
        _check_guards(model, example_args, traced)


def _check_guards(model: nn.Module, example_args: tuple, traced: Traced) -> None:
    tracer = ConcreteTracer(example_args, set(traced.opaque))
    try:
        _warm(model, example_args)
        tracer.trace(model)
    except Exception as e:  # noqa: BLE001
        raise CannotProcess(f"the pruned model no longer traces: {first_line(e, 200)}",
                            hint="its forward depends on a channel count; nothing was written") from None
    for (where, before), (_, after) in zip(traced.guards, tracer.guards):
        if before != after:
            raise CannotProcess(
                f"control flow depends on a channel count at {where}: it was {before!r}, after pruning {after!r}",
                hint="the pruned model would take another branch; nothing was written")
    if len(traced.guards) != len(tracer.guards):
        raise CannotProcess(f"control flow of {type(model).__name__} changed after pruning "
                            f"({len(traced.guards)} → {len(tracer.guards)} shape decisions)",
                            hint="its forward depends on a channel count; nothing was written")
