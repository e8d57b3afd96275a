"""Per-kernel scores for every spatial filter, and the global zeroing step.

A *spatial filter* is one k×k kernel ``W[o, i]`` of a Conv2d whose kernel_size is not (1, 1).
Saliency follows the ExplainFix reference exactly::

    s[o, i] = Σ_batches Σ_hw |W[o, i] · ∂C/∂W[o, i]|,   C = grad_cost_fn(ŷ, y)   (default Σ y·ŷ)

where ŷ is first normalised under no_grad (``ŷ /= ŷ``): its values become 1 but the gradient path is
untouched, so ∂C/∂W is the gradient of the selected outputs themselves.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

Progress = Callable[[int], None]  # called with the number of batches just processed


def iter_spatial_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every Conv2d with a kernel larger than 1×1, in ``named_modules`` order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)
    ]


def default_grad_cost(yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference cost ``C = Σ y·ŷ`` (y one-hot selects each sample's class)."""
    return (y * yhat).sum()


def onehot_targets(yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Integer labels → one-hot over ŷ's classes; a negative label means *unlabeled* and is replaced by
    the model's own top class (pseudo-label). Anything that is not a 1-D integer tensor passes through."""
    if y.ndim != 1 or y.dtype.is_floating_point:
        return y
    labels = torch.where(y < 0, yhat.argmax(dim=1), y)
    return torch.nn.functional.one_hot(labels, num_classes=yhat.shape[1]).to(yhat.dtype)


def normalise_output(yhat: torch.Tensor) -> torch.Tensor:
    """Value ``ŷ/ŷ``, gradient identity: the reference's in-place ``ŷ /= ŷ`` without mutating a tensor
    that autograd may have saved."""
    with torch.no_grad():
        ratio = yhat / yhat
    return yhat - yhat.detach() + ratio


def first_output(out: Any) -> torch.Tensor:
    """The tensor saliency is computed on: the model's output, or the first tensor of a tuple/dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model output of type {type(out).__name__} has no tensor to compute saliency on")


def to_device(x: Any, device: torch.device | str) -> Any:
    """A tensor, or a tuple/list of tensors (several model inputs), moved to ``device``."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x.to(device, non_blocking=True)


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)``, or ``model(*x)`` for several inputs."""
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def spatial_grad_scores(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    num_minibatches: float = math.inf,
    grad_cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_grad_cost,
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> list[torch.Tensor]:
    """Accumulate ``score_fn(W, ∂C/∂W)`` (shape (O, I)) over batches for every spatial conv.

    The one gradient loop behind saliency (prune) and ExplainSteer's weights (explain). ``target_fn``
    maps (raw ŷ, y) to the target handed to ``grad_cost_fn`` (the CLI uses :func:`onehot_targets`).
    The model is put in eval mode and moved to ``device``; requires_grad flags are restored after.
    """
    if score_fn is None:
        score_fn = saliency_score
    model.eval().to(device)
    convs = iter_spatial_convs(model)
    weights = [m.weight for _, m in convs]
    flags = [w.requires_grad for w in weights]
    scores = [w.new_zeros(w.shape[:2]) for w in weights]
    if not weights:
        return scores
    try:
        for w in weights:
            w.requires_grad_(True)
        for n, batch in enumerate(loader):
            if n >= num_minibatches:
                break
            x, y = batch[0], batch[1]
            x, y = to_device(x, device), to_device(y, device)
            yhat = first_output(call_model(model, x))
            target = target_fn(yhat.detach(), y) if target_fn is not None else y
            cost = grad_cost_fn(normalise_output(yhat), target)
            grads = torch.autograd.grad(cost, weights, allow_unused=True)
            with torch.no_grad():
                for s, w, g in zip(scores, weights, grads):
                    if g is not None:
                        s += score_fn(w, g)
            if progress is not None:
                progress(1)
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
    return scores


def saliency_score(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (w * g).abs().sum(dim=tuple(range(2, w.ndim)))


def get_spatial_filter_saliency(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    num_minibatches: float = math.inf,
    grad_cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_grad_cost,
    target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> list[torch.Tensor]:
    """Saliency ``Σ|W·∂C/∂W|`` per spatial filter: one (O, I) tensor per spatial conv."""
    return spatial_grad_scores(
        model, loader, device, num_minibatches, grad_cost_fn, saliency_score, target_fn, progress
    )


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
