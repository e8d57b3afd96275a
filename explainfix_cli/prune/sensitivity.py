"""The ``sensitivity`` rank: how far to cut each layer, measured on the calibration data.

Inside a layer (the groups with the same producers: one conv, or one residual stream) channels go in the
order of the saliency per cost, as with ``saliency-per-layer``. How far each layer is cut is what differs:
every layer's least important quarter, half and three quarters (``GRID``) are in turn replaced by their
calibration mean — what a removal leaves once its constant is folded, before the refit — and the change of the
model's output is measured on the first ``PROBE_IMAGES`` calibration images (fewer where their inputs or
outputs would hold over ``PROBE_ELEMENTS`` numbers: a segmentation model's outputs are large): the KL divergence
of the class probabilities for a classifier (a 2-D output), the squared error relative to the output's energy
otherwise.
A group that would take its layer to the fraction q removed is keyed by that layer's curve at q (linear
between the measured points, from 0 at 0, the last slope beyond) divided by what the whole layer costs (its
MACs, or parameters for a parameter budget, relative to the mean layer): every layer is cut to the same
measured loss per cost, and the budget search picks the level. (Fashion-MNIST MobileNetV2 at 2×, one-shot,
seeds 0 / 1: per cost 90.28 / 90.20; in the prototype the same loss per layer, undivided, 89.72 / 89.78 against
90.32 / 90.28 per cost; the same fraction from every layer 87.52 / 88.32: benchmarks/README.md, "Session 19".)

One probe is one forward pass over those images per layer and grid point (MobileNetV2: 25 layers, 75 passes);
the curves are computed once per scored model and reused for every budget of a sweep. Under torchrun the
processes read the same global batches one process would (the count is set by the first batch), each its
share, and the sums are reduced, so every process takes the same cut as one would. A layer the probe cannot
measure (a loss that is not finite, or a consumer called without its input as a positional tensor, which the
probe cannot replace) counts as too sensitive to cut: ``UNMEASURED``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..channels.labels import ChannelGraph
from ..core import dist
from ..core.model import call_model, first_output, to_device
from ..core.progress import Progress
from .reconstruct import channel_rows

GRID = (0.25, 0.5, 0.75)  # fractions of a layer's groups replaced by their mean, one forward pass each
PROBE_IMAGES = 512  # calibration images the probe reads (held in memory for all passes)
PROBE_ELEMENTS = 1 << 24  # and no more batches than keep their inputs, and their outputs, under this many numbers
# (compute: a 224×224 input is 150,528 numbers, so about 112 images, in whole batches; 32×32 inputs stay at 512)
UNMEASURED = 1e12  # the loss of a layer the probe cannot measure: it is cut last

Layers = dict[tuple[str, ...], list[Any]]  # producers → that layer's groups (channel.Group), least important first


def _size(x: Any) -> tuple[int, int]:
    """(inputs, numbers) of one batch: a tensor, or a tuple of tensors (several inputs)."""
    parts = x if isinstance(x, (tuple, list)) else [x]
    return len(parts[0]), sum(t.numel() for t in parts if isinstance(t, torch.Tensor))


def _divergence(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(Σ per-image loss, Σ weight) of ``out`` against the reference: KL of class probabilities for an (N, C)
    output with C > 1, ‖out − ref‖² and ‖ref‖² otherwise."""
    if ref.dim() == 2 and ref.shape[1] > 1:
        p = torch.log_softmax(ref.double(), 1)
        q = torch.log_softmax(out.double(), 1)
        return float((p.exp() * (p - q)).sum()), float(len(ref))
    return float((out.double() - ref.double()).pow(2).sum()), float(ref.double().pow(2).sum())


def measure(model: nn.Module, graph: ChannelGraph, layers: Layers, batches: Callable[[], Iterable], device: Any,
            grid: tuple[float, ...] = GRID, images: int | None = None,
            progress: Progress | None = None) -> dict[tuple[str, ...], list[float]]:
    """Each layer's curve: the output divergence (module docstring) with its first ⌈q·n⌉ groups replaced by
    their mean, for every q of ``grid``, on the first ``images`` (default ``PROBE_IMAGES``) calibration images.
    ``model`` is left as it was (hooks only; its train/eval mode restored)."""
    was = model.training
    model.eval()
    try:
        return _measure(model, graph, layers, batches, device, grid, PROBE_IMAGES if images is None else images,
                        progress)
    finally:
        model.train(was)


def _measure(model: nn.Module, graph: ChannelGraph, layers: Layers, batches: Callable[[], Iterable], device: Any,
             grid: tuple[float, ...], images: int, progress: Progress | None) -> dict[tuple[str, ...], list[float]]:
    consumers = [(c, torch.tensor(graph.roots(c.labels), dtype=torch.long)) for c in graph.consumers]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    masks: dict[str, torch.Tensor] = {}
    means: dict[str, torch.Tensor] = {}
    applied: set[str] = set()

    def mean_hook(name: str) -> Callable:
        def hook(m: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                rows = channel_rows(m, args[0].detach().double())
                sums[name] = sums.get(name, 0) + rows.sum(0)
                counts[name] = counts.get(name, 0.0) + len(rows)
        return hook

    def mask_hook(name: str) -> Callable:
        def hook(m: nn.Module, args: tuple) -> tuple | None:
            mk = masks.get(name)
            if mk is None or not args or not isinstance(args[0], torch.Tensor):
                return None
            applied.add(name)
            x = args[0]  # channels where channel_rows finds them: last for a linear layer, dimension 1 for a conv
            shape = (1,) * (x.dim() - 1) + (-1,) if isinstance(m, nn.Linear) else (1, -1) + (1,) * (x.dim() - 2)
            return (torch.where(mk.to(x.device).view(shape), means[name].to(x).view(shape), x), *args[1:])
        return hook

    def forward(x: Any) -> torch.Tensor:
        with torch.no_grad():
            return first_output(call_model(model, x))

    # the reference pass, channel means recorded; the global batch count from global batch 0 (rank 0's first)
    xs: list[Any] = []
    refs: list[torch.Tensor] = []
    world, rank = dist.world(), dist.rank()
    handles = [model.get_submodule(c.module).register_forward_pre_hook(mean_hook(c.module)) for c, _ in consumers]
    try:
        it = iter(batches())
        first = next(it, None)
        x0 = to_device(first[0], device) if first is not None else None
        if rank == 0 and x0 is not None:
            xs.append(x0)
            refs.append(forward(x0))
        n0, e0, o0 = dist.sum_counts(*((*_size(x0), refs[0].numel()) if refs else (0, 0, 0)))
        total = 0 if n0 == 0 else max(1, min(math.ceil(images / n0), math.ceil(PROBE_ELEMENTS / max(e0, 1)),
                                             math.ceil(PROBE_ELEMENTS / max(o0, 1))))
        if rank > 0 and x0 is not None and rank < total:
            xs.append(x0)
            refs.append(forward(x0))
        for i, (x, _) in enumerate(it, start=1):  # this process's i-th batch is global batch rank + i·world
            if rank + i * world >= total:
                break
            x = to_device(x, device)
            xs.append(x)
            refs.append(forward(x))
    finally:
        for h in handles:
            h.remove()
    for c, _ in consumers:  # the channel means over every process's images
        name = c.module
        summed = sums.get(name, torch.zeros(len(c.labels), dtype=torch.float64))
        n = torch.tensor([counts.get(name, 0.0)], dtype=torch.float64)
        dist.all_reduce_sum([summed, n])
        means[name] = summed / max(float(n), 1.0)

    curves: dict[tuple[str, ...], list[float]] = {}
    handles = [model.get_submodule(c.module).register_forward_pre_hook(mask_hook(c.module)) for c, _ in consumers]
    try:
        for done, (key, members) in enumerate(layers.items()):
            values: list[float] = []
            for q in grid:
                removed = torch.tensor([g.root for g in members[:math.ceil(q * len(members))]], dtype=torch.long)
                masks.clear()
                applied.clear()
                for c, roots in consumers:
                    mk = torch.isin(roots, removed)
                    if bool(mk.any()):
                        masks[c.module] = mk
                loss = weight = 0.0
                for ref, x in zip(refs, xs):
                    a, b = _divergence(ref, forward(x))
                    loss, weight = loss + a, weight + b
                missed = float(bool(xs) and set(masks) != applied)  # a consumer the hook could not reach
                loss, weight, missed = dist.sum_counts(loss, weight, missed)
                value = loss / weight if weight > 0 else 0.0
                values.append(UNMEASURED if missed or not math.isfinite(value) else max(0.0, value))  # KL < 0: rounding
            curves[key] = values
            if progress:
                progress("layer probe", done + 1, len(layers))
    finally:
        for h in handles:
            h.remove()
        masks.clear()
    return curves


def levels(layers: Layers, curves: dict[tuple[str, ...], list[float]], cost: str = "macs",
           grid: tuple[float, ...] = GRID, power: float = 1.0) -> dict[int, float]:
    """Each group's key (its root → the loss its layer reaches when it goes, per the layer's cost): group i of
    n is at (i+1)/n of its layer's curve — measured at ⌈q·n⌉/n for each q of ``grid``, made non-decreasing,
    linear between those points, from 0 at 0, the last slope beyond the last point; divided by the layer's
    MACs (``cost="params"``: parameters) saved by all its groups, relative to the mean layer's, to ``power``
    (0: every layer cut to the same loss)."""
    spend = {key: sum(g.macs if cost == "macs" else g.params for g in members) for key, members in layers.items()}
    mean = sum(spend.values()) / max(1, len(spend))
    out: dict[int, float] = {}
    for key, members in layers.items():
        scale = (spend[key] / mean) ** power if spend[key] > 0 and mean > 0 else 1.0
        n = len(members)
        points: dict[float, float] = {0.0: 0.0}
        for q, v in zip(grid, curves[key]):
            x = math.ceil(q * n) / n
            points[x] = max(points.get(x, 0.0), v)
        xs = np.array(sorted(points))
        ys = np.maximum.accumulate(np.array([points[x] for x in xs]))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
        for i, g in enumerate(members):
            q = (i + 1) / n
            level = float(np.interp(q, xs, ys)) if q <= xs[-1] else float(ys[-1] + slope * (q - xs[-1]))
            out[g.root] = level / scale
    return out
