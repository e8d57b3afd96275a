"""Score once, prune to any number of budgets (the shape of Torch-Pruning's ``MetaPruner``).

    pruner = Pruner(model, PruneOptions(target_macs="4x"), example=x[:1], batches=lambda: calib.batches(32))
    result = pruner.to()                         # the model itself, in place, to the options' budget
    r10 = pruner.to("10x", model=copy.deepcopy(original))   # a copy to another budget: the scores are reused

Every way into pruning goes through here: :func:`prune_model` (the API), ``explainfix prune``, each point of
``sweep`` and each round of ``compress`` (jobs/prune.py ``prune_opened``). The options are validated once, when
the pruner is made; the budget is checked against the channel plan before the scoring pass reads any data;
the scoring pass (one pass over the calibration data: forward/backward for the saliency, forward only when
no budget ranks by it) runs once, on the model as it was given. By default a pruner computes the saliency
whenever its rank may use it at some budget (``gradients=None``), so it prunes to any budget; the jobs pass
``gradients`` to skip the backward pass where their budgets rank by Σ|w| only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..channels import graph as graph_mod
from ..core import gradients as grad
from ..core.errors import BadInput
from ..core.layout import channels_last
from ..core.model import count_macs, to_device
from ..core.progress import Progress
from .options import PruneOptions
from .pipeline import PruneResult, prune_scored
from .scoring import Scored, score_model
from .select import check_budget


@dataclass
class Pruner:
    """``model`` and how to prune it: ``options`` (validated here, once), ``example`` (one input batch: tracing
    and MACs), ``batches()`` yielding (x, y) calibration batches (y = -1: unlabeled; None: no data)."""

    model: nn.Module
    options: PruneOptions
    example: Any
    batches: Callable[[], Iterable] | None = None
    device: str | torch.device = "cpu"
    num_batches: int | None = None
    grad_cost_fn: Callable = grad.default_grad_cost
    target_fn: Callable | None = grad.onehot_targets
    progress: Progress | None = None  # the scoring pass's batches
    stage_progress: Progress | None = None  # later stages (the refit: "refit", layers done, layers)
    amp: bool = False
    macs_before: int | None = None  # of one ``example``, when the caller counted them already
    gradients: bool | None = None  # the saliency pass: None = unless the rank is pinned to Σ|w| (any budget can
    # then be asked); False = Σ|w| only (a budget that ranks by the saliency is then refused)
    timings: dict[str, float] = field(default_factory=dict)
    _scored: Scored | None = field(default=None, repr=False)
    _gm: Any = field(default=None, repr=False)  # the trace of the model as given
    _analysed: Any = field(default=None, repr=False)  # its channel analysis, when the budget check made one
    _floor: tuple[str, float] | None = field(default=None, repr=False)  # (metric, smallest reachable fraction)

    def __post_init__(self) -> None:
        self.options = self.options.resolved(has_data=self.batches is not None).with_model(self.model)
        self.model.eval().to(self.device)
        self.example = to_device(self.example, self.device)
        if self.macs_before is None:
            self.macs_before = count_macs(self.model, self.example)

    def _gradients(self) -> bool:
        """Whether the scoring pass computes the saliency (see ``gradients``)."""
        if self._scored is not None:
            return self._scored.gradients
        return self.options.may_need_saliency if self.gradients is None else self.gradients

    def at(self, budget: str | float | None) -> PruneOptions:
        """The options with another budget of the same metric (``"10x"`` or ``0.1``); a pct for ``--pct``."""
        if budget is None:
            return self.options
        if self.options.budget is None:
            try:
                changed = replace(self.options, pct=float(budget), resolved_for=None)
            except (TypeError, ValueError):
                raise BadInput(f"this Pruner zeroes a pct of spatial filters; {budget!r} is not a pct",
                               hint="make the Pruner with a budget (PruneOptions(target_macs=...)) to prune to factors") from None
        else:
            field_name = "target_macs" if self.options.budget[0] == "macs" else "target_params"
            changed = replace(self.options, resolved_for=None, **{field_name: budget})
        return changed.resolved(has_data=self.batches is not None)

    def check(self) -> None:
        """Trace the model and refuse an unreachable budget (no data is read); done once, before scoring."""
        if self._gm is None:
            tick = time.perf_counter()
            self._gm = graph_mod.trace(self.model, self.example)  # fail fast, before the expensive pass
            self._analysed = self._check(self.options, self.model, self._gm)
            self.timings["trace+budget-check"] = time.perf_counter() - tick

    def scored(self) -> Scored:
        """The one scoring pass over the calibration data (run on first use, after :meth:`check`)."""
        if self._scored is None:
            self.check()
            tick = time.perf_counter()
            opts = self.options
            with channels_last(self.model, self.example), grad.autocast(self.device, self.amp):
                self._scored = score_model(self.model, self._gm, opts.criterion, self.batches, device=self.device,
                                           num_batches=self.num_batches, grad_cost_fn=self.grad_cost_fn,
                                           target_fn=self.target_fn, progress=self.progress,
                                           channel_graph=self._analysed,
                                           gradients=self._gradients())
            self._scored.gm = self._gm
            self.timings["saliency"] = time.perf_counter() - tick
        return self._scored

    def to(self, budget: str | float | None = None, *, model: nn.Module | None = None, check_inputs: Any = None,
           seed: int = 0, measure_quality: bool = True) -> PruneResult:
        """Prune ``model`` (default: the pruner's own, in place; else a copy of it, e.g. ``copy.deepcopy``) to
        ``budget`` (default: the options' own), reusing the one scoring pass."""
        opts = self.at(budget)
        if opts.needs_saliency and self.batches is not None and not self._gradients():  # before any data is read
            raise BadInput(f"{opts.ranking[0]} at this budget ranks by the saliency, but this Pruner was made with "
                           "gradients=False (Σ|w| only)", hint="make the Pruner with gradients=None or True")
        scored = self.scored()
        if model is None or model is self.model:  # the model as scored, now pruned in place: its trace is spent
            if scored.gm is None:
                raise BadInput("this Pruner's model was pruned already; its scores are of the model before",
                               hint="make a new Pruner for the pruned model, or pass model=copy.deepcopy(original)")
            target, gm, graph = self.model, scored.gm, scored.graph
            scored.gm = None
            checked = self._check(opts, target, gm) if opts != self.options else None
            graph = checked if checked is not None else graph
        else:  # a copy of the model as scored: its own trace, and the analysis of that trace
            target = model.eval().to(self.device)
            gm = graph_mod.trace(target, self.example)
            graph = self._check(opts, target, gm)
            if opts.criterion == "channel" and graph is None:
                graph = graph_mod.analyse(gm)
        result = prune_scored(target, gm, graph, scored, opts, example=self.example,
                              check_inputs=self.example if check_inputs is None else check_inputs,
                              batches=self.batches, device=self.device, seed=seed, macs_before=self.macs_before,
                              measure_quality=measure_quality, progress=self.stage_progress)
        result.timings = {**self.timings, **result.timings}
        return result

    def _check(self, opts: PruneOptions, model: nn.Module, gm: Any) -> Any:
        """Refuse a budget below the plan's floor; returns the channel analysis when it made one."""
        if opts.budget is None:
            return None
        metric, target = opts.budget
        if self._floor is not None and self._floor[0] == metric and target >= self._floor[1]:
            return None  # already known to be reachable
        floor, analysed = check_budget(model, gm, opts, self.example, self.macs_before)
        self._floor = (metric, floor)
        return analysed


def prune_model(
    model: nn.Module,
    options: PruneOptions,
    *,
    example: Any,
    batches: Callable[[], Iterable] | None = None,
    num_batches: int | None = None,
    device: str | torch.device = "cpu",
    grad_cost_fn: Callable = grad.default_grad_cost,
    target_fn: Callable | None = grad.onehot_targets,
    check_inputs: Any = None,
    seed: int = 0,
    progress: Progress | None = None,
    macs_before: int | None = None,
    amp: bool = False,
    measure_quality: bool = True,
) -> PruneResult:
    """Prune ``model`` in place, as ``options`` say (``PruneOptions(target_macs="4x")``, ``PruneOptions(pct=70)``):
    one :class:`Pruner`, used once.

    >>> r = prune_model(model, PruneOptions(pct=90), example=x[:1], batches=lambda: calib.batches(32))
    >>> r.check.passed, r.params_after / r.params_before
    """
    if not isinstance(options, PruneOptions):
        raise BadInput(f"prune_model takes a PruneOptions, got {type(options).__name__}",
                       hint="e.g. PruneOptions(pct=70) or PruneOptions(target_macs='4x')")
    pruner = Pruner(model, options, example, batches, device=device, num_batches=num_batches, grad_cost_fn=grad_cost_fn,
                    target_fn=target_fn, progress=progress, amp=amp, macs_before=macs_before)
    return pruner.to(check_inputs=check_inputs, seed=seed, measure_quality=measure_quality)


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
    options = PruneOptions(pct=pct, criterion="saliency" if loader is not None else "magnitude", fill=fill)
    return prune_model(
        model, options, example=example, batches=None if loader is None else (lambda: iter(loader)),
        num_batches=None if num_minibatches == math.inf else int(num_minibatches),
        device=device, grad_cost_fn=grad_cost_fn, target_fn=None,
    )
