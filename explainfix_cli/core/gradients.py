"""The one gradient loop over spatial filters, shared by saliency (prune) and ExplainSteer (explain).

A *spatial filter* is one k×k kernel ``W[o, i]`` of a Conv2d whose kernel_size is not (1, 1).
Saliency follows the ExplainFix reference exactly::

    s[o, i] = Σ_batches Σ_hw |W[o, i] · ∂C/∂W[o, i]|,   C = grad_cost_fn(ŷ, y)   (default Σ y·ŷ)

where ŷ is first normalised under no_grad (``ŷ /= ŷ``): its values become 1 but the gradient path is
untouched, so ∂C/∂W is the gradient of the selected outputs themselves.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .model import call_model, first_output, iter_spatial_convs, to_device
from .progress import Progress


def default_grad_cost(yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference cost ``C = Σ y·ŷ`` (y one-hot selects each sample's class)."""
    return (y * yhat).sum()


def onehot_targets(yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The one-hot selection of the outputs the cost sums.

    Classifier logits (N, C): integer labels → one-hot over ŷ's classes; a negative label means *unlabeled*
    and is replaced by the model's own top class (pseudo-label), as is a label the head has no class for. Dense outputs (N, C, H, W…): the model's
    own top class at every position (a folder's per-image labels say nothing about pixels). Anything that
    is not a 1-D integer label tensor passes through."""
    if y.ndim != 1 or y.dtype.is_floating_point:
        return y
    if yhat.ndim > 2:
        return torch.nn.functional.one_hot(yhat.argmax(dim=1), num_classes=yhat.shape[1]).movedim(-1, 1).to(yhat.dtype)
    labels = torch.where((y < 0) | (y >= yhat.shape[1]), yhat.argmax(dim=1), y)  # no such class: pseudo-label
    return torch.nn.functional.one_hot(labels, num_classes=yhat.shape[1]).to(yhat.dtype)


def normalise_output(yhat: torch.Tensor) -> torch.Tensor:
    """Value ``ŷ/ŷ``, gradient identity: the reference's in-place ``ŷ /= ŷ`` without mutating a tensor
    that autograd may have saved."""
    with torch.no_grad():
        ratio = yhat / yhat
    return yhat - yhat.detach() + ratio


def saliency_score(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ExplainFix saliency of each k×k kernel: ``Σ_hw |W · ∂C/∂W|`` (shape (O, I))."""
    return (w * g).abs().sum(dim=tuple(range(2, w.ndim)))


def spatial_grad_scores(model: nn.Module, loader: Iterable, device: torch.device | str, *,
                        score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = saliency_score,
                        **loop: Any) -> list[torch.Tensor]:
    """Accumulate ``score_fn(W, ∂C/∂W)`` (shape (O, I)) over batches for every spatial conv.

    The one gradient loop behind saliency (prune) and ExplainSteer's weights (explain); ``loop`` takes
    :func:`grad_loop`'s knobs (``num_minibatches``, ``grad_cost_fn``, ``target_fn``, ``progress``).
    The model is put in eval mode and moved to ``device``; requires_grad flags are restored after.
    """
    model.eval().to(device)
    weights = [m.weight for _, m in iter_spatial_convs(model)]
    scores = [w.new_zeros(w.shape[:2]) for w in weights]

    def add(grads: tuple) -> None:
        for s, w, g in zip(scores, weights, grads):
            if g is not None:
                s += score_fn(w, g)

    grad_loop(model, weights, loader, device, add, **loop)
    return scores


def weight_saliency(model: nn.Module, weights: list[torch.Tensor], loader: Iterable, device: torch.device | str,
                    **loop: Any) -> list[torch.Tensor]:
    """ExplainFix saliency of every element of ``weights``: Σ_batches |w · ∂C/∂w| (same shapes), the
    same loop and cost as :func:`spatial_grad_scores` (``loop`` as there) — the channel criterion sums it
    per channel group."""
    model.eval().to(device)
    scores = [w.detach().new_zeros(w.shape, dtype=torch.float64) for w in weights]

    def add(grads: tuple) -> None:
        for s, w, g in zip(scores, weights, grads):
            if g is not None:
                s += (w.detach() * g).abs().double()

    grad_loop(model, weights, loader, device, add, **loop)
    return scores


def grad_loop(
    model: nn.Module,
    weights: list[torch.Tensor],
    loader: Iterable,
    device: torch.device | str,
    add: Callable[[tuple], None],
    *,
    num_minibatches: float = math.inf,
    grad_cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_grad_cost,
    target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> None:
    """For each batch (at most ``num_minibatches``): ŷ, C = grad_cost_fn(normalised ŷ, target), then
    ``add(∂C/∂weights)`` (no_grad), then ``progress("saliency", batches done, num_minibatches or None)``.
    ``target_fn`` maps (raw ŷ, y) to the target (the CLI uses :func:`onehot_targets`; None: y itself).
    requires_grad flags are restored after. These keywords are the ones every scorer here forwards."""
    if not weights:
        return
    total = None if num_minibatches == math.inf else int(num_minibatches)
    flags = [w.requires_grad for w in weights]
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
                add(grads)
            if progress is not None:
                progress("saliency", n + 1, total)
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)


def autocast(device: "torch.device | str", enabled: bool) -> "contextlib.AbstractContextManager":
    """bf16 autocast for forward passes on CUDA (``--amp``); a no-op elsewhere. Parameters, their gradients
    and every accumulated score stay float32/float64."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
