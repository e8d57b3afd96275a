"""The ChannelPrune pipeline: score → zero → plan → surgery → self-check.

>>> result = prune_model(model, PruneOptions(pct=90), batches=lambda: calib.batches(32), example=x[:1])
>>> result.check.passed, result.params_after / result.params_before

(``prune_model`` and the :class:`~.pruner.Pruner` it uses live in prune/pruner.py; this module holds what
follows the scoring pass, :func:`prune_scored`, and the result types.) ``model`` is changed in place into the pruned model (the reference's ``channelprune`` semantics). The
self-check runs every time: the pruned model must match the *masked equivalent* (same shapes, removed
channels' consumer weights zeroed, their constants folded into biases) to float tolerance — that
catches every index error — and its distance to the zeroed model measures the folding alone.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..channels import graph as graph_mod
from ..channels.plan import auto_multiple
from ..core.errors import BadInput, CannotProcess, first_line
from ..core.layout import channels_last
from ..core.progress import Progress  # noqa: F401 (re-exported: jobs and users import it from here)
from ..core.model import (
    count_macs,
    count_params,
    effective_kernel_convs,
    is_depthwise,
    iter_spatial_convs,
    to_device,
)
from ..io.edits import apply_edit
from .channel import output_sizes, scored_modules
from .check import SelfCheck, check_training_mode, masked_train_outputs, run_outputs, self_check
from . import sensitivity
from .fill import fill_zero_initialization, restore_unremoved
from .options import PruneOptions
from .reconstruct import norm_after, refit_consumers
from .scoring import Scored, empty_quality, random_agreement
from .select import select_channels, select_filters
from .surgery import mask_and_fold

STANDARDISED = "its forward transforms the kernel (weight standardisation): zeroing the raw kernel would not zero it, so it is not ranked or zeroed"


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
    weights_before: int = 0  # elements of the layer's weight
    weights_after: int = 0


@dataclass
class PruneResult:
    pct: float | None  # the filter criteria's pct (searched for a budget); None for the channel criterion
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
    inexact_kept: int  # channels kept because their removal needs an inexact fold (--allow-inexact-folds)
    check: SelfCheck
    agreement: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    eval_samples: int = 0
    eval_source: str = ""
    opaque: dict[str, str] = field(default_factory=dict)  # kept whole: untraceable modules, unsupported ops -> why
    timings: dict[str, float] = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # the resolved PruneOptions
    budget: dict | None = None  # requested vs achieved (budget.BudgetOutcome)
    groups_removed: int = 0  # channel criterion
    recalibrated: dict | None = None  # BatchNorm re-estimated after pruning: batches, quality before it
    record: Any = field(default=None, repr=False)  # scoring.Recorder: the original's top-1 on the calibration data
    kept: dict[str, int] = field(default_factory=dict)  # channels removable by their weights that stay, by reason
    frozen_by: dict[str, int] = field(default_factory=dict)  # frozen channels by the op that froze them, most first
    floor_layers: list[str] = field(default_factory=list)  # channel criterion: layers cut to --floor (no more could go)
    refit: dict | None = None  # --refit: layers refit by least squares, their relative residual before/after
    rounding: dict | None = None  # --round-to gave channels back: {"layers": {layer: channels kept}, "macs": MACs kept}

    @property
    def nothing_removed(self) -> str | None:
        """Why no channel was removed (None when some were)."""
        if self.channels_removed:
            return None
        if self.criterion != "channel" and self.filters_total == 0:
            return ("the model has no spatial (k×k) kernels, so --pct (which zeroes them) removes nothing; "
                    "use a budget instead: --target-macs 2x or --target-params 2x")
        if self.kept:
            why, n = next(iter(self.kept.items()))
            return f"{n} channels could go but stay ({why})" + (f"; {len(self.kept) - 1} other reasons in kept" if len(self.kept) > 1 else "")
        if self.filters_zeroed == 0:
            return "no spatial filter was zeroed (raise --pct, or use a budget: --target-macs 2x)"
        return ("a channel goes only when every kernel reading it is zeroed; the zeroed kernels are spread over "
                "channels (raise --pct, or use --target-macs with the channel criterion)")

    @property
    def quality_fell(self) -> str | None:
        """The measured drop, in words, when top-1 agreement or accuracy fell far (below :data:`FAR_AGREEMENT`,
        or more than :data:`FAR_ACCURACY_DROP` points); None otherwise (or when nothing was measured on data)."""
        if self.agreement is None or self.eval_source == "seeded random inputs":
            return None
        drop = None if self.accuracy_before is None else self.accuracy_before - self.accuracy_after
        if self.agreement >= FAR_AGREEMENT and (drop is None or drop <= FAR_ACCURACY_DROP):
            return None
        words = f"top-1 agreement with the original is {100 * self.agreement:.1f}%"
        if drop is not None:
            words += f", accuracy {100 * self.accuracy_before:.1f}% → {100 * self.accuracy_after:.1f}%"
        return words

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("edit")
        d.pop("record")
        d["nothing_removed"] = self.nothing_removed
        d["quality_fell"] = self.quality_fell
        return d


FAR_AGREEMENT, FAR_ACCURACY_DROP = 0.9, 0.05  # below 90 % agreement, or 5 points of accuracy lost: say what next


def at_floor(rows: list[LayerRow], opts: PruneOptions) -> list[str]:
    """Layers the channel criterion cut to ``--floor``: they keep fewer than ``max(1, ⌈floor·out⌉)`` plus one
    rounding step of channels, so the ranking could take nothing more from them."""
    out = []
    for row in rows:
        if row.out_after >= row.out_before or row.kind == "linear":
            continue
        least = max(1, math.ceil(opts.floor * row.out_before))
        step = auto_multiple(row.out_after - 1) if opts.round_to == "auto" else int(opts.round_to or 1)  # the next smaller count
        if row.out_after < least + step:
            out.append(row.name)
    return out


_TABLE_KINDS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _channels(m: nn.Module) -> tuple[int, int]:
    """(in, out) channels of a conv / transposed conv / linear, read from its weight as it is now."""
    w = m.weight
    if isinstance(m, nn.Linear):
        return int(w.shape[1]), int(w.shape[0])
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return int(w.shape[0]), int(w.shape[1]) * m.groups
    return int(w.shape[1]) * m.groups, int(w.shape[0])


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return "convT"
    if is_depthwise(m):
        return "dwconv"
    return "conv1x1" if all(k == 1 for k in m.kernel_size) else "conv"


def layer_shapes(model: nn.Module) -> dict[str, tuple[str, int, int, int]]:
    """{name: (kind, in, out, weight elements)} of every conv, transposed conv and linear layer (what the
    table lists)."""
    return {name: (_kind(m), *_channels(m), m.weight.numel()) for name, m in model.named_modules()
            if isinstance(m, _TABLE_KINDS) and isinstance(getattr(m, "weight", None), torch.Tensor)}


def layer_table(before: dict[str, tuple[str, int, int, int]], model: nn.Module,
                masks: dict[str, torch.Tensor]) -> list[LayerRow]:
    """One row per layer of ``before`` (:func:`layer_shapes` of the model before surgery), its in and out
    channels before and as the pruned ``model`` has them now, with the kernels the ranking zeroed."""
    rows = []
    after = layer_shapes(model)
    for name, (kind, in_before, out_before, w_before) in before.items():
        _, in_after, out_after, w_after = after.get(name, (kind, in_before, out_before, w_before))
        mask = masks.get(name)
        rows.append(LayerRow(name, kind, in_before, in_after, out_before, out_after,
                             filters=int(mask.numel()) if mask is not None else 0,
                             zeroed=int(mask.sum()) if mask is not None else 0,
                             weights_before=w_before, weights_after=w_after))
    return rows


def prune_scored(
    model: nn.Module,
    gm: Any,
    channel_graph: Any,
    scored: Scored,
    opts: PruneOptions,
    *,
    example: Any,
    check_inputs: Any,
    batches: Callable[[], Iterable] | None,
    device: str | torch.device,
    seed: int,
    macs_before: int,
    measure_quality: bool = True,
    progress: Progress | None = None,
) -> PruneResult:
    """Steps 2–5 of a prune, in place, given the scores (prune/pruner.py ``Pruner`` runs step 1 once and calls
    this for every budget): ``gm`` is ``model``'s trace, ``channel_graph`` its channel analysis (channel
    criterion), ``opts`` resolved."""
    t: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        t[name] = t.get(name, 0.0) + now - tick
        tick = now

    if scored.criterion != opts.criterion:
        raise BadInput(f"the scores were computed for the {scored.criterion} criterion, not {opts.criterion}")
    params_before = count_params(model)
    scores, record = scored.scores, scored.record

    check_inputs = to_device(check_inputs, device)
    out_original = run_outputs(model, check_inputs) if batches is None else None
    originals = {n: m.weight.detach().clone() for n, m in iter_spatial_convs(model)} if opts.fill == "restore" else {}

    # 2. choose (zero + plan, or rank groups + plan), to --pct or to the budget
    if opts.criterion == "channel":
        sizes = output_sizes(model, example, scored_modules(channel_graph))

        def probe(layers: dict) -> dict:  # measured once per scored model: a sweep's budgets reuse it
            if scored.curves is None:
                lap("plan")
                scored.curves = sensitivity.measure(model, channel_graph, layers, batches, device, progress=progress)
                lap("sensitivity")
            return scored.curves
        chosen = select_channels(model, gm, channel_graph, scores, sizes, opts, example, macs_before,
                                 probe if batches is not None else None)
    else:
        chosen = select_filters(model, gm, scores, opts, example, macs_before)
    plan = chosen.plan
    if opts.fill == "restore":
        restore_unremoved(model, plan, originals)
    lap("plan")

    # 3. surgery: masked equivalent (a copy) and the pruned model (in place)
    before = layer_shapes(model)
    out_asked = run_outputs(model, check_inputs) if opts.criterion != "channel" else None
    original = copy.deepcopy(model) if opts.refit and batches is not None else None
    mask_and_fold(model, plan.folds, plan.masked_inputs)
    refit = None
    if original is not None:  # on the masked model: the surgery and the self-check below see the refit weights
        lap("surgery")
        refit = refit_consumers(model, original, plan.masked_inputs, norm_after(gm), batches, device, example, seed=seed,
                                progress=(lambda done, total: progress("refit", done, total)) if progress else None)
        del original
        lap("refit")
    masked = copy.deepcopy(model)
    apply_edit(model, plan.edit)
    rows = layer_table(before, model, chosen.masks)
    graph_mod.check_control_flow(model, gm)
    lap("surgery")

    # 4. self-check against the asked-for model: zeroed (filter criteria) or channels masked (channel)
    out_masked = run_outputs(masked, check_inputs)
    train_masked = masked_train_outputs(masked, check_inputs)  # the same in training mode (train-only branches)
    del masked
    try:
        out_pruned = run_outputs(model, check_inputs)
    except Exception as e:
        raise CannotProcess(f"the pruned model fails to run: {type(e).__name__}: {first_line(e, 200)}",
                            hint="its forward probably hard-codes a channel count; nothing was written") from None
    check = self_check(out_pruned, out_masked, out_asked if out_asked is not None else out_masked, check_inputs,
                       inexact=plan.inexact_folds > 0)
    check_training_mode(check, model, train_masked, check_inputs)
    lap("self-check")

    if opts.fill == "fillzero":
        g = torch.Generator().manual_seed(seed)
        for _, conv in iter_spatial_convs(model):
            fill_zero_initialization(conv, generator=g)

    # 5. quality: top-1 agreement with the original, accuracy when labeled
    if batches is None:
        quality = random_agreement(out_original, out_pruned)
    elif measure_quality:
        with channels_last(model, example):
            quality = record.compare(model, batches, device)
    else:  # the caller measures it later (after re-estimating BatchNorm): one forward pass saved
        quality = empty_quality()
    lap("agreement")

    masks = list(chosen.masks.values())
    return PruneResult(
        pct=chosen.pct, criterion=opts.criterion, fill=opts.fill, edit=plan.edit, layers=rows,
        params_before=params_before, params_after=count_params(model),
        macs_before=macs_before, macs_after=count_macs(model, example),
        filters_total=sum(int(m.numel()) for m in masks), filters_zeroed=sum(int(m.sum()) for m in masks),
        channels_before=chosen.graph.channels_total,
        channels_removed=plan.channels_removed,
        nonzero_folds=plan.nonzero_folds, inexact_folds=plan.inexact_folds, inexact_kept=plan.inexact_kept, check=check,
        **quality, opaque={**graph_mod.opaque_modules(gm), **chosen.graph.passed,
                                 **{name: STANDARDISED for name in effective_kernel_convs(model)}}, timings=t,
        options=opts.to_json(), budget=chosen.budget.to_json() if chosen.budget else None,
        groups_removed=chosen.groups_removed, kept=plan.kept, record=record,
        frozen_by=dict(list(chosen.graph.frozen_by.items())[:5]),
        floor_layers=at_floor(rows, opts) if opts.criterion == "channel" else [],
        refit=refit.to_json() if refit is not None else None,
        rounding={"round_to": opts.round_to, "layers": plan.rounded, "macs": chosen.rounding_macs} if plan.rounded else None,
    )
