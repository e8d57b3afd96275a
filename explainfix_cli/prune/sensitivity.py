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
measured loss per cost, and the budget search picks the level. (Fashion-MNIST MobileNetV2 at 2×, one-shot:
the same loss per layer, undivided, 89.72 / 89.78 on two seeds; per cost 90.32 / 90.28; the same fraction from
every layer 87.52 / 88.32: benchmarks/README.md, "Session 19".)

One probe is one forward pass over those images per layer and grid point (MobileNetV2: 25 layers, 75 passes);
the curves are computed once per scored model and reused for every budget of a sweep. Under torchrun every
rank measures its shard and the sums are reduced, so every rank takes the same cut.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..channels.labels import ChannelGraph
from ..core import dist
from ..core.model import call_model, first_output, to_device
from ..core.progress import Progress

GRID = (0.25, 0.5, 0.75)  # fractions of a layer's groups replaced by their mean, one forward pass each
PROBE_IMAGES = 512  # calibration images per rank the probe reads (held in memory for all passes)
PROBE_ELEMENTS = 1 << 26  # and no more batches once their inputs, or the outputs kept, hold this many numbers

Layers = dict[tuple[str, ...], list[Any]]  # producers → that layer's groups (channel.Group), least important first


def _take(batches: Callable[[], Iterable], device: Any, images: int) -> list[Any]:
    """The first batches of the calibration data, up to ``images`` inputs or ``PROBE_ELEMENTS`` numbers (at
    least one batch), on ``device``."""
    out, n, size = [], 0, 0
    for x, _ in batches():
        if n >= images or size >= PROBE_ELEMENTS:
            break
        out.append(to_device(x, device))
        parts = x if isinstance(x, (tuple, list)) else [x]
        n += len(parts[0])
        size += sum(t.numel() for t in parts if isinstance(t, torch.Tensor))
    return out


def _divergence(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(Σ per-image loss, Σ weight) of ``out`` against the reference: KL of class probabilities for an (N, C)
    output, ‖out − ref‖² and ‖ref‖² otherwise."""
    if ref.dim() == 2:
        p = torch.log_softmax(ref.double(), 1)
        q = torch.log_softmax(out.double(), 1)
        return float((p.exp() * (p - q)).sum()), float(len(ref))
    return float((out.double() - ref.double()).pow(2).sum()), float(ref.double().pow(2).sum())


def measure(model: nn.Module, graph: ChannelGraph, layers: Layers, batches: Callable[[], Iterable], device: Any,
            grid: tuple[float, ...] = GRID, images: int = PROBE_IMAGES,
            progress: Progress | None = None) -> dict[tuple[str, ...], list[float]]:
    """Each layer's curve: the output divergence (module docstring) with its first ⌈q·n⌉ groups replaced by
    their mean, for every q of ``grid``. ``model`` is left as it was (hooks only, eval mode)."""
    model.eval()
    xs = _take(batches, device, images)
    consumers = [(c, graph.roots(c.labels)) for c in graph.consumers]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}

    def reads_last_dim(x: torch.Tensor, kind: str) -> bool:  # a linear layer reads its last dimension (ConvNeXt: NHWC)
        return kind == "linear" or x.dim() == 2

    def mean_hook(name: str, kind: str) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0].detach().double()
            flat = x.reshape(-1, x.shape[-1]) if reads_last_dim(x, kind) else x.transpose(0, 1).reshape(x.shape[1], -1).t()
            sums[name] = sums.get(name, 0) + flat.sum(0)
            counts[name] = counts.get(name, 0.0) + len(flat)
        return hook

    masks: dict[str, torch.Tensor] = {}
    means: dict[str, torch.Tensor] = {}

    def mask_hook(name: str, kind: str) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> tuple | None:
            mk = masks.get(name)
            if mk is None or not args or not isinstance(args[0], torch.Tensor):
                return None
            x = args[0]
            shape = (1,) * (x.dim() - 1) + (-1,) if reads_last_dim(x, kind) else (1, -1) + (1,) * (x.dim() - 2)
            return (torch.where(mk.to(x.device).view(shape), means[name].to(x).view(shape), x), *args[1:])
        return hook

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            return [first_output(call_model(model, x)) for x in xs]

    handles = [model.get_submodule(c.module).register_forward_pre_hook(mean_hook(c.module, c.kind)) for c, _ in consumers]
    refs: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for x in xs:  # a dense output (segmentation) is large: batches beyond PROBE_ELEMENTS are left out
                if refs and sum(r.numel() for r in refs) >= PROBE_ELEMENTS:
                    break
                refs.append(first_output(call_model(model, x)))
    finally:
        for h in handles:
            h.remove()
    del xs[len(refs):]
    for c, _ in consumers:  # the channel means over every rank's images
        name = c.module
        total = sums.get(name, torch.zeros(len(c.labels), dtype=torch.float64))
        n = torch.tensor([counts.get(name, 0.0)], dtype=torch.float64)
        dist.all_reduce_sum([total, n])
        means[name] = total / max(float(n), 1.0)

    curves: dict[tuple[str, ...], list[float]] = {}
    handles = [model.get_submodule(c.module).register_forward_pre_hook(mask_hook(c.module, c.kind)) for c, _ in consumers]
    try:
        for done, (key, members) in enumerate(layers.items()):
            values = []
            for q in grid:
                removed = {g.root for g in members[:int(np.ceil(q * len(members)))]}
                masks.clear()
                for c, roots in consumers:
                    mk = torch.tensor([r in removed for r in roots])
                    if bool(mk.any()):
                        masks[c.module] = mk
                loss = weight = 0.0
                for ref, out in zip(refs, run()):
                    a, b = _divergence(ref, out)
                    loss, weight = loss + a, weight + b
                loss, weight = dist.sum_counts(loss, weight)
                values.append(max(0.0, loss / weight) if weight > 0 else 0.0)  # KL ≥ 0: below is rounding
            curves[key] = values
            if progress:
                progress("sensitivity", done + 1, len(layers))
    finally:
        for h in handles:
            h.remove()
        masks.clear()
    return curves


def levels(layers: Layers, curves: dict[tuple[str, ...], list[float]], cost: str = "macs",
           grid: tuple[float, ...] = GRID, power: float = 1.0) -> dict[int, float]:
    """Each group's key (its root → the loss its layer reaches when it goes, per the layer's cost): group i of
    n is at q = (i+1)/n of its layer's curve, made non-decreasing, linear between the grid points, from 0 at 0,
    the last slope beyond the last point; divided by the layer's MACs (``cost="params"``: parameters) saved by
    all its groups, relative to the mean layer's, to ``power`` (0: every layer cut to the same loss)."""
    spend = {key: sum(g.macs if cost == "macs" else g.params for g in members) for key, members in layers.items()}
    mean = sum(spend.values()) / max(1, len(spend))
    xs = np.array([0.0, *grid])
    out: dict[int, float] = {}
    for key, members in layers.items():
        scale = (spend[key] / mean) ** power if spend[key] > 0 and mean > 0 else 1.0
        ys = np.maximum.accumulate(np.array([0.0, *curves[key]]))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        for i, g in enumerate(members):
            q = (i + 1) / len(members)
            level = float(np.interp(q, xs, ys)) if q <= xs[-1] else float(ys[-1] + slope * (q - xs[-1]))
            out[g.root] = level / scale
    return out
