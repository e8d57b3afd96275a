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
call sites, and an input folds only if it is the same constant at every call (analyzer.SHAREABLE).

Grouped convolutions: input channel ``k·s + i`` (group k, position i) is merged with position ``i`` of
every other group, and so are the outputs: a removal keeps every group the same size (see surgery.py).

Training mode: a forward may run other ops in training (Inception's and GoogLeNet's auxiliary heads). The
model is traced in training mode too (mode flags and BatchNorm statistics restored after); where that graph
differs, a second pass over it extends the eval pass (Analyzer's ``prior``): every layer both run is merged
position by position like a shared layer's call sites, so a train-only consumer drops the columns of what
goes; train-only layers keep their own output channels (no eval forward scores them); folds are decided in
eval mode only. A training graph that cannot be traced or analysed is left out (``explainfix_train_skipped``)
and the self-check's training-mode forward (prune/check.py) still proves the pruned model there.

Anything it does not understand on a tensor that carries atoms raises :class:`UnsupportedOp` naming the
op and the module path; ops on atom-free tensors (input preprocessing, positional tables) are harmless, and
so are ops whose every incoming atom is already frozen (freezing is final): they run as they are, their
output carries no atoms, and ``ChannelGraph.passed`` names them. Tracing (including models plain torch.fx
rejects, and submodules kept opaque) is tracing.py's.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..core.errors import CannotProcess, ExplainFixError, UnsupportedOp, first_line
from ..core.model import in_training_mode
from .analyzer import Analyzer
from .labels import ChannelGraph, module_of, op_name, where_of
from .tracing import MAX_OPAQUE, check_guards, trace_model, trace_training


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
    kept: dict[str, str] = {}
    kept_train: dict[str, str] = {}  # kept whole in training mode only (the eval pass still sees inside)
    for _ in range(MAX_OPAQUE + 1):
        traced = trace_model(model, args, kept)
        gm = fx.GraphModule(traced.root, traced.graph)
        gm.meta["explainfix_example"] = args
        gm.meta["explainfix_traced"] = traced
        train, gm.meta["explainfix_train_skipped"] = trace_training(model, args, traced, {**kept, **kept_train})
        if train is not None:  # training mode runs other ops (a train-only branch): analysed too
            tgm = fx.GraphModule(train.root, train.graph)
            tgm.meta.update(explainfix_example=args, explainfix_traced=train)
            gm.meta["explainfix_train"] = tgm
            for node in train.graph.nodes:  # the plan reads every analysed layer from ``gm``
                if node.op == "call_module" and not _has_module(gm, str(node.target)):
                    gm.add_submodule(str(node.target), tgm.get_submodule(str(node.target)))
        try:
            analyse(gm)
            return gm
        except UnsupportedOp as e:
            path = e.module
            if e.hard or not path or path in traced.opaque or (train is not None and path in train.opaque):
                if not getattr(e, "training", False):
                    raise
                # only the training-mode pass fails: its graph is left out (the self-check's training-mode
                # forward still proves the pruned model there) and the reason kept
                gm.meta["explainfix_train"], gm.meta["explainfix_train_skipped"] = None, e.message
                analyse(gm)
                return gm
            # The op is inside a submodule: keep that submodule whole (run as it is, channels in and out
            # frozen) and analyse the rest; the self-check still proves the result.
            cls = type(model.get_submodule(path)).__name__
            what = f"{cls}: {e.why}" if e.op == f"module {cls}" else f"{cls} holds `{e.op}` ({e.why})"
            (kept_train if getattr(e, "training", False) else kept)[path] = f"{what}; run as it is, channels in and out frozen"
    raise CannotProcess(f"more than {MAX_OPAQUE} submodules of {type(model).__name__} had to be kept whole; refusing")


def _has_module(gm: fx.GraphModule, path: str) -> bool:
    try:
        gm.get_submodule(path)
        return True
    except AttributeError:
        return False


def check_control_flow(model: nn.Module, gm: fx.GraphModule) -> None:
    """After surgery: refuse if a shape decision taken while tracing ``gm`` comes out differently now."""
    check_guards(model, gm.meta["explainfix_example"], gm.meta["explainfix_traced"])
    train = gm.meta.get("explainfix_train")
    if train is not None:
        check_guards(model, gm.meta["explainfix_example"], train.meta["explainfix_traced"], training=True)


def opaque_modules(gm: fx.GraphModule) -> dict[str, str]:
    """Submodules kept whole because they could not be traced (path -> reason), in either mode."""
    out: dict[str, str] = {}
    for g, mode in ((gm.meta.get("explainfix_train"), " (training mode)"), (gm, "")):
        traced = g.meta.get("explainfix_traced") if g is not None else None
        out.update({k: v + mode for k, v in (traced.opaque.items() if traced is not None else ())})
    return out


def analyse(gm: fx.GraphModule) -> ChannelGraph:
    """Atoms, couplings and constant facts from the model's *current* weights (re-run after zeroing). A
    model whose training-mode forward runs other ops (``gm.meta["explainfix_train"]``) is analysed in that
    mode too, on top of the eval-mode pass: the couplings of both hold (Analyzer's ``prior``)."""
    an = Analyzer(gm)
    _run(an, gm, "")
    train = gm.meta.get("explainfix_train")
    if train is not None:
        with in_training_mode(train):
            _run(Analyzer(train, prior=an), train, " (in training mode)")
    return ChannelGraph(an.parent, an.frozen, an.consumers, an.producers, an.channelwise, an.passed)


def _run(an: Analyzer, gm: fx.GraphModule, mode: str) -> None:
    node = None
    try:
        with torch.no_grad():
            an.run(*gm.meta["explainfix_example"])
    except UnsupportedOp as e:
        if mode:
            err = UnsupportedOp(e.op, e.where, e.why + mode, module=e.module, hard=e.hard)
            err.training = True  # type: ignore[attr-defined]
            raise err from None
        raise
    except ExplainFixError:
        raise
    except Exception as e:  # never crash: an op we could not analyse is refused, naming it
        node = an.current
        where = where_of(node) if node is not None else type(gm).__name__
        op = op_name(node) if node is not None else "forward"
        err = UnsupportedOp(op, where, f"analysis failed{mode}: {type(e).__name__}: {first_line(e, 160)}",
                            module=module_of(node) if node is not None else None)
        err.training = bool(mode)  # type: ignore[attr-defined]
        raise err from None


def build_graph(model: nn.Module, example: Any) -> tuple[fx.GraphModule, ChannelGraph]:
    """Trace ``model`` on ``example`` and analyse it."""
    gm = trace(model, example)
    return gm, analyse(gm)
