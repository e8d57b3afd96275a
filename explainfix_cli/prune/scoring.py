"""Step 1 of a prune: score the model once over the calibration data, recording its own predictions.

>>> scored = score_model(model, gm, "channel", lambda: calib.batches(32))
>>> Pruner(model, PruneOptions(target_macs="4x"), example=x, batches=…).to(model=copy.deepcopy(model))  # prune/pruner.py

The channel criterion needs Σ|w·∂C/∂w| of every weight of the modules a removal touches; the saliency
criterion needs the per-kernel ExplainFix saliency; magnitude needs no data. Without data the scores are
weight magnitudes. The :class:`Recorder` keeps the original model's top-1 (and the labels) seen during
that pass, so the agreement of a pruned model is measured without another pass over the original.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..channels import graph as graph_mod
from ..core import dist
from ..core import gradients as grad
from ..core.model import call_model, first_output, to_device
from ..core.progress import Progress
from . import saliency as sal
from .channel import magnitudes, scored_modules


@dataclass
class Scored:
    criterion: str
    scores: Any  # channel: {module: {param: |w·g| tensor}}; filter criteria: per-layer kernel scores
    record: "Recorder"
    graph: Any = None  # the channel analysis (channel criterion)
    gm: Any = None  # the trace of the model as scored (prune/pruner.py: spent once that model is pruned)
    gradients: bool = False  # the scores are the saliency (a gradient pass), not Σ|w|
    curves: Any = None  # the sensitivity rank's per-layer curves (prune/sensitivity.py), measured on first use


def score_model(model: nn.Module, gm: Any, criterion: str, batches: Callable[[], Iterable] | None, *,
                device: Any = "cpu", num_batches: int | None = None, grad_cost_fn: Callable = grad.default_grad_cost,
                target_fn: Callable | None = grad.onehot_targets, progress: Progress | None = None,
                channel_graph: Any = None, gradients: bool = True) -> Scored:
    """One pass over ``batches()`` (at most ``num_batches``), or none for magnitude / no data. With data and
    ``gradients`` the channel criterion has the saliency (a rank that orders by Σ|w|, ``l1-per-layer``, takes
    the weights at selection: prune/channel.magnitudes), so one pass serves every budget of a sweep whichever
    rank ``--rank auto`` picks for it. ``channel_graph``: the channel analysis of ``gm`` when the caller already
    has it (it is not repeated). ``gradients=False`` (no budget asked ranks by the saliency: ``l1-per-layer``,
    pinned or chosen by ``auto``): weights only; the data then only records the original predictions (a
    forward pass). ``Scored.gradients`` says which."""
    record = Recorder(target_fn)
    limit = math.inf if num_batches is None else num_batches

    if criterion != "channel":
        channel_graph = None
    if criterion == "channel":
        channel_graph = graph_mod.analyse(gm) if channel_graph is None else channel_graph
        if batches is not None and gradients:
            names = scored_modules(channel_graph)
            params = [(n, pn, p) for n in names for pn, p in model.get_submodule(n).named_parameters(recurse=False)]
            values = grad.weight_saliency(model, [p for *_, p in params], batches(), device, num_minibatches=limit,
                                          grad_cost_fn=grad_cost_fn, target_fn=record, progress=progress)
            dist.all_reduce_sum(values)  # under torchrun each rank scored its shard of the batches
            scores: Any = {}
            for (n, pn, _), v in zip(params, values):
                scores.setdefault(n, {})[pn] = v.cpu()
        else:
            scores = magnitudes(model, channel_graph)
    elif criterion == "saliency":
        scores = sal.get_spatial_filter_saliency(model, batches(), device, limit, grad_cost_fn, target_fn=record,
                                                 progress=progress)
        dist.all_reduce_sum(scores)
    else:
        scores = sal.get_spatial_filter_magnitude(model)
    if batches is not None and not record.preds:  # no gradients needed, but record the original predictions
        with torch.no_grad():
            for i, (x, y) in enumerate(batches()):
                if i >= limit:
                    break
                record(first_output(call_model(model, to_device(x, device))), y)
                if progress:
                    progress("saliency", i + 1, None if limit == math.inf else int(limit))
    saliency = batches is not None and (criterion == "saliency" or (criterion == "channel" and gradients))
    return Scored(criterion, scores, record, channel_graph, gradients=saliency)


class Recorder:
    """The target function of the gradient pass that also records the original model's top-1 and labels."""

    def __init__(self, target_fn: Callable | None):
        self.target_fn = target_fn
        self.preds: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.classes = 0  # the head's width, seen on the first batch

    def __call__(self, yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.preds.append(yhat.argmax(1).cpu() if yhat.ndim == 2 else torch.empty(0))
        self.classes = yhat.shape[1] if yhat.ndim == 2 else 0
        self.labels.append(y.cpu() if y.ndim == 1 else torch.empty(0))
        return self.target_fn(yhat, y) if self.target_fn is not None else y

    def compare(self, model: nn.Module, batches: Callable[[], Iterable], device: Any) -> dict:
        """Top-1 agreement (and accuracy where the labels fit the head) of ``model`` with the recorded original,
        on the same batches; under torchrun each rank compares its shard and the counts are summed (every
        rank takes part, also one whose shard is empty)."""
        out = empty_quality()
        mine = bool(self.preds) and bool(self.preds[0].numel())
        if not dist.sum_counts(int(mine))[0]:
            return out  # not a classifier (or no data)
        after = []
        with torch.inference_mode():
            for i, (x, _) in enumerate(batches()):
                if i >= len(self.preds):
                    break
                after.append(first_output(call_model(model, to_device(x, device))).argmax(1).cpu())
        empty = torch.empty(0, dtype=torch.long)
        pb, pa = (torch.cat(self.preds), torch.cat(after)) if mine else (empty, empty)
        y = torch.cat(self.labels) if mine else empty
        # accuracy only where the labels can be the head's classes (a folder of other classes means nothing)
        valid = not mine or (y.numel() == len(pb) and bool((y >= 0).all()) and int(y.max()) < self.classes)
        n, agree, right_b, right_a, invalid = dist.sum_counts(
            len(pb), int((pb == pa).sum()), int((pb == y).sum()) if valid and mine else 0,
            int((pa == y).sum()) if valid and mine else 0, 0 if valid else 1)
        out.update(eval_samples=int(n), eval_source="calibration data", agreement=agree / n)
        if not invalid:
            out.update(accuracy_before=right_b / n, accuracy_after=right_a / n)
        return out


def empty_quality() -> dict:
    """The quality fields of a PruneResult before anything is measured."""
    return {"agreement": None, "accuracy_before": None, "accuracy_after": None, "eval_samples": 0, "eval_source": ""}


def random_agreement(out_original: list[torch.Tensor] | None, out_pruned: list[torch.Tensor]) -> dict:
    out = empty_quality()
    if out_original and out_original[0].ndim == 2:
        pb, pa = out_original[0].argmax(1), out_pruned[0].argmax(1)
        out.update(agreement=float((pb == pa).float().mean()), eval_samples=len(pb), eval_source="seeded random inputs")
    return out
