"""The ChannelPrune pipeline: score → zero → plan → surgery → self-check.

>>> result = prune_model(model, pct=90, batches=lambda: calib.batches(32), example=x[:1])
>>> result.check.passed, result.params_after / result.params_before

``model`` is changed in place into the pruned model (the reference's ``channelprune`` semantics). The
self-check runs every time: the pruned model must match the *masked equivalent* (same shapes, removed
channels' consumer weights zeroed, their constants folded into biases) to float tolerance — that
catches every index error — and its distance to the zeroed model measures the folding alone.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..channels import graph as graph_mod
from ..channels.plan import Plan, plan_removal
from ..core import gradients as grad
from ..core.errors import BadInput, CannotProcess, first_line
from ..core.model import (
    call_model,
    count_macs,
    count_params,
    first_output,
    is_depthwise,
    iter_spatial_convs,
    to_device,
)
from ..io.edits import apply_edit
from . import saliency as sal
from .check import CHECK_RTOL, SelfCheck, distance, run_outputs
from .surgery import mask_and_fold

Progress = Callable[[str, int, int | None], None]  # (stage, completed, total)
FILL_METHODS = ("none", "fillzero", "reset")
CRITERIA = ("saliency", "magnitude")


@dataclass
class LayerRow:
    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    filters: int = 0  # spatial filters before
    zeroed: int = 0  # spatial filters zeroed by the ranking


@dataclass
class PruneResult:
    pct: float
    criterion: str
    fill: str
    edit: dict
    layers: list[LayerRow]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    filters_total: int
    filters_zeroed: int
    channels_before: int
    channels_removed: int
    nonzero_folds: int
    inexact_folds: int
    check: SelfCheck
    agreement: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    eval_samples: int = 0
    eval_source: str = ""
    opaque: dict[str, str] = field(default_factory=dict)  # kept whole: untraceable modules, unsupported ops -> why
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("edit")
        return d


def layer_table(model: nn.Module, plan: Plan, masks: dict[str, torch.Tensor]) -> list[LayerRow]:
    rows = []
    for name, m in model.named_modules():
        e = plan.modules.get(name, {})
        if isinstance(m, nn.Conv2d):
            dw = is_depthwise(m)
            rem_out = len(e.get("out", e.get("channels", [])))
            rem_in = len(e.get("in", e.get("channels", [])))
            mask = masks.get(name)
            rows.append(LayerRow(
                name, "dwconv" if dw else ("conv" if tuple(m.kernel_size) != (1, 1) else "conv1x1"),
                m.in_channels, m.in_channels - rem_in, m.out_channels, m.out_channels - rem_out,
                filters=int(mask.numel()) if mask is not None else 0, zeroed=int(mask.sum()) if mask is not None else 0,
            ))
        elif isinstance(m, nn.Linear):
            block = int(e.get("in_block", 1))
            rem_in = len(e.get("in", [])) * block
            rows.append(LayerRow(name, "linear", m.in_features, m.in_features - rem_in, m.out_features, m.out_features))
    return rows


def prune_model(
    model: nn.Module,
    pct: float,
    *,
    example: Any,
    batches: Callable[[], Iterable] | None = None,
    num_batches: int | None = None,
    criterion: str = "saliency",
    fill: str = "none",
    device: str | torch.device = "cpu",
    grad_cost_fn: Callable = grad.default_grad_cost,
    target_fn: Callable | None = grad.onehot_targets,
    check_inputs: Any = None,
    seed: int = 0,
    round_to: int | None = None,
    progress: Progress | None = None,
    macs_before: int | None = None,
) -> PruneResult:
    """Prune ``model`` in place. ``batches()`` yields (x, y) calibration batches (y = -1: unlabeled);
    ``example`` is one input batch used to trace the model and count MACs (``macs_before``: already
    counted by the caller for one input of the same size)."""
    if not 0 < pct < 100:
        raise BadInput(f"--pct must be in (0, 100), got {pct}")
    if criterion not in CRITERIA:
        raise BadInput(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if round_to is not None and round_to < 1:
        raise BadInput(f"--round-to must be ≥ 1, got {round_to}")
    if fill not in FILL_METHODS:
        raise BadInput(f"--fill must be one of {', '.join(FILL_METHODS)}, got {fill!r}")
    if criterion == "saliency" and batches is None:
        raise BadInput("the saliency criterion needs calibration data", hint="pass --data PATH, or --criterion magnitude")
    t: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        t[name] = t.get(name, 0.0) + now - tick
        tick = now

    model.eval().to(device)
    example = to_device(example, device)
    params_before = count_params(model)
    if macs_before is None:
        macs_before = count_macs(model, example)
    gm = graph_mod.trace(model, example)  # fail fast, before the expensive pass
    lap("trace")

    # 1. score, recording the original model's predictions on the way (for agreement / accuracy)
    preds_before: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def recording_target(yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        preds_before.append(yhat.argmax(1).cpu() if yhat.ndim == 2 else torch.empty(0))
        labels.append(y.cpu() if y.ndim == 1 else torch.empty(0))
        return target_fn(yhat, y) if target_fn is not None else y

    limit = math.inf if num_batches is None else num_batches
    if criterion == "saliency":
        done = [0]

        def tick_batches(n: int) -> None:
            done[0] += n
            if progress:
                progress("saliency", done[0], None if limit == math.inf else int(limit))

        scores = sal.get_spatial_filter_saliency(model, batches(), device, limit, grad_cost_fn, recording_target, tick_batches)
    else:
        scores = sal.get_spatial_filter_magnitude(model)
        if batches is not None:  # no gradients needed, but record the original predictions
            with torch.no_grad():
                for i, (x, y) in enumerate(batches()):
                    if i >= limit:
                        break
                    recording_target(first_output(call_model(model, to_device(x, device))), y)
    lap("saliency")

    if check_inputs is None:
        check_inputs = example
    check_inputs = to_device(check_inputs, device)
    out_original = run_outputs(model, check_inputs) if batches is None else None
    convs = iter_spatial_convs(model)
    originals = {n: m.weight.detach().clone() for n, m in convs} if fill == "reset" else {}

    # 2. zero, 3. plan
    masks = sal.zero_least_salient_spatial_filters(model, scores, pct)
    mask_by_name = {n: mk for (n, _), mk in zip(convs, masks)}
    channel_graph = graph_mod.analyse(gm)
    plan = plan_removal(gm, channel_graph, round_to)
    if fill == "reset":
        _reset_unremoved(model, plan, originals)
    lap("plan")

    # 4. surgery: masked equivalent (a copy) and the pruned model (in place)
    rows = layer_table(model, plan, mask_by_name)
    out_zeroed = run_outputs(model, check_inputs)
    masked = copy.deepcopy(model)
    mask_and_fold(masked, plan.folds, plan.masked_inputs)
    mask_and_fold(model, plan.folds, plan.masked_inputs)
    apply_edit(model, plan.edit)
    graph_mod.check_control_flow(model, gm)
    lap("surgery")

    # 5. self-check
    out_masked = run_outputs(masked, check_inputs)
    del masked
    try:
        out_pruned = run_outputs(model, check_inputs)
    except Exception as e:
        raise CannotProcess(f"the pruned model fails to run: {type(e).__name__}: {first_line(e, 200)}",
                            hint="its forward probably hard-codes a channel count; nothing was written") from None
    pm_abs, pm_rel = distance(out_pruned, out_masked)
    mz_abs, mz_rel = distance(out_masked, out_zeroed)
    n_check = int(check_inputs.shape[0]) if isinstance(check_inputs, torch.Tensor) else int(check_inputs[0].shape[0])
    check = SelfCheck(n_check, pm_abs, pm_rel, mz_abs, mz_rel, passed=pm_rel <= CHECK_RTOL)
    if not check.passed:
        raise CannotProcess(
            f"self-check failed: the pruned model differs from its masked equivalent (max rel error {pm_rel:.2e} > {CHECK_RTOL:g})",
            hint="this is an explainfix bug; nothing was written. Please report it with the model",
        )
    lap("self-check")

    if fill == "fillzero":
        g = torch.Generator().manual_seed(seed)
        for _, conv in iter_spatial_convs(model):
            fill_zero_initialization(conv, generator=g)

    # 6. quality: top-1 agreement with the original, accuracy when labeled
    agreement = acc_before = acc_after = None
    n_eval, eval_source = 0, ""
    if batches is not None and preds_before and preds_before[0].numel():
        after = []
        with torch.no_grad():
            for i, (x, _) in enumerate(batches()):
                if i >= len(preds_before):
                    break
                after.append(first_output(call_model(model, to_device(x, device))).argmax(1).cpu())
        pb, pa, y = torch.cat(preds_before), torch.cat(after), torch.cat(labels)
        n_eval, eval_source = len(pb), "calibration data"
        agreement = float((pb == pa).float().mean())
        if y.numel() == len(pb) and bool((y >= 0).all()):
            acc_before = float((pb == y).float().mean())
            acc_after = float((pa == y).float().mean())
    elif out_original is not None and out_original and out_original[0].ndim == 2:
        pb, pa = out_original[0].argmax(1), out_pruned[0].argmax(1)
        agreement, n_eval, eval_source = float((pb == pa).float().mean()), len(pb), "seeded random inputs"
    lap("agreement")

    return PruneResult(
        pct=pct, criterion=criterion, fill=fill, edit=plan.edit, layers=rows,
        params_before=params_before, params_after=count_params(model),
        macs_before=macs_before, macs_after=count_macs(model, example),
        filters_total=sum(int(m.numel()) for m in masks), filters_zeroed=sum(int(m.sum()) for m in masks),
        channels_before=channel_graph.channels_total,
        channels_removed=plan.channels_removed,
        nonzero_folds=plan.nonzero_folds, inexact_folds=plan.inexact_folds, check=check,
        agreement=agreement, accuracy_before=acc_before, accuracy_after=acc_after,
        eval_samples=n_eval, eval_source=eval_source, opaque={**graph_mod.opaque_modules(gm), **channel_graph.passed}, timings=t,
    )


def fill_zero_initialization(conv: nn.Conv2d, generator: torch.Generator | None = None) -> None:
    """The reference's FillZero, in place: a kernel that is partly zero gets its zeros replaced by
    N(mean, std) of that kernel; a kernel that is entirely zero gets kaiming-uniform values."""
    with torch.no_grad():
        w = conv.weight
        cur = w.detach().clone()
        noise = torch.randn(cur.shape, generator=generator).to(cur)
        fill = noise * cur.std(dim=(-1, -2), keepdim=True) + cur.mean(dim=(-1, -2), keepdim=True)
        zero = torch.isclose(cur, torch.zeros((), dtype=cur.dtype, device=cur.device))
        cur[zero] = fill[zero]
        zero = torch.isclose(cur, torch.zeros((), dtype=cur.dtype, device=cur.device))
        if bool(zero.any()):
            fan_in = cur[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=√5) == U(-1/√fan_in, 1/√fan_in)
            kaiming = (torch.rand(cur.shape, generator=generator).to(cur) * 2 - 1) * bound
            cur[zero] = kaiming[zero]
        w.copy_(cur)


def _reset_unremoved(model: nn.Module, plan: Plan, originals: dict[str, torch.Tensor]) -> None:
    """``--fill reset``: restore every zeroed kernel that is not in a removed row or column."""
    with torch.no_grad():
        for name, m in iter_spatial_convs(model):
            e = plan.modules.get(name, {})
            rows = torch.ones(m.out_channels, dtype=torch.bool)
            cols = torch.ones(m.weight.shape[1], dtype=torch.bool)
            rows[e.get("out", e.get("channels", []))] = False
            if "in" in e:
                cols[[j % cols.numel() for j in e["in"]]] = False  # grouped: in-group positions
            keep = rows.view(-1, 1) & cols.view(1, -1)
            if is_depthwise(m):
                keep = rows.view(-1, 1)
            w = m.weight
            w[keep.to(w.device)] = originals[name][keep.to(w.device)]


def _batches_from_loader(loader: Iterable) -> Callable[[], Iterator]:
    return lambda: iter(loader)


def channelprune(
    model: nn.Module,
    pct: float,
    grad_cost_fn: Callable = grad.default_grad_cost,
    loader: Iterable | None = None,
    device: str = "cpu",
    num_minibatches: float = math.inf,
    zero_fill_method: str = "none",
    example: Any = None,
) -> PruneResult:
    """The seed library's ``channelprune``, in place, on a loader of (X, y) with y passed to
    ``grad_cost_fn(ŷ, y)`` as is. ``zero_fill_method``: 'none' | 'fillzero' (also 'FillZero') | 'reset'.
    Returns the :class:`PruneResult` (the seed returned None)."""
    fill = {"FillZero": "fillzero"}.get(zero_fill_method, zero_fill_method)
    if example is None:
        if loader is None:
            raise BadInput("channelprune needs a loader (or an example input)")
        first = next(iter(loader))[0]
        example = first[:1] if isinstance(first, torch.Tensor) else type(first)(t[:1] for t in first)
    return prune_model(
        model, pct, example=example, batches=None if loader is None else _batches_from_loader(loader),
        num_batches=None if num_minibatches == math.inf else int(num_minibatches),
        criterion="saliency" if loader is not None else "magnitude", fill=fill, device=device,
        grad_cost_fn=grad_cost_fn, target_fn=None,
    )
