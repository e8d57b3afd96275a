"""Per-kernel scores for every spatial filter (the ExplainFix criteria), and the global zeroing step.

Saliency follows the reference exactly: ``s[o, i] = Σ_batches Σ_hw |W[o, i] · ∂C/∂W[o, i]|`` (the gradient
loop is :func:`explainfix_cli.core.gradients.spatial_grad_scores`); magnitude is ``Σ_hw |W[o, i]|``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..core.gradients import default_grad_cost, saliency_score, spatial_grad_scores
from ..core.model import iter_spatial_convs


def get_spatial_filter_saliency(model: nn.Module, loader: Iterable, device: torch.device | str,
                                num_minibatches: float = math.inf, grad_cost_fn: Callable = default_grad_cost,
                                **loop: Any) -> list[torch.Tensor]:
    """Saliency ``Σ|W·∂C/∂W|`` per spatial filter: one (O, I) tensor per spatial conv.

    The reference's signature; ``loop`` takes the gradient loop's other keywords (``target_fn``, ``progress``:
    :func:`explainfix_cli.core.gradients.grad_loop`)."""
    return spatial_grad_scores(model, loader, device, score_fn=saliency_score, num_minibatches=num_minibatches,
                               grad_cost_fn=grad_cost_fn, **loop)


def get_spatial_filter_magnitude(model: nn.Module) -> list[torch.Tensor]:
    """The data-free criterion ``Σ_hw |W[o, i]|`` per spatial filter."""
    with torch.no_grad():
        return [m.weight.abs().sum(dim=(2, 3)) for _, m in iter_spatial_convs(model)]


def global_lowest(scores: list[torch.Tensor], pct: float) -> list[torch.Tensor]:
    """Boolean masks (O, I), one per layer: the ``int(pct/100 · N)`` lowest scores over all layers.

    One global ranking (stable: ties keep layer order), as the reference's argsort over the
    concatenated scores."""
    if not 0 <= pct <= 100:
        raise ValueError(f"pct must be in [0, 100], got {pct}")
    flat = torch.cat([s.detach().reshape(-1).cpu().double() for s in scores]) if scores else torch.zeros(0)
    k = int((pct / 100) * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[:k]] = True
    masks, start = [], 0
    for s in scores:
        masks.append(chosen[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return masks


def zero_least_salient_spatial_filters(
    model: nn.Module, saliency_scores: list[torch.Tensor], pct: float
) -> list[torch.Tensor]:
    """Zero (in place) the globally least salient ``pct``% spatial filters; returns the masks."""
    convs = iter_spatial_convs(model)
    if len(convs) != len(saliency_scores):
        raise ValueError(f"{len(saliency_scores)} score tensors for {len(convs)} spatial convs")
    masks = global_lowest(saliency_scores, pct)
    with torch.no_grad():
        for (_, m), mask in zip(convs, masks):
            m.weight[mask.to(m.weight.device)] = 0
    return masks
