"""The self-check: run models on the same inputs and measure how far apart their outputs are."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import CannotProcess, InternalError, first_line
from ..core.model import call_model, full_float32, in_training_mode, output_tensors, without_dropout

CHECK_RTOL = 1e-4  # pruned vs masked equivalent, relative to the output's largest magnitude


@dataclass
class SelfCheck:
    """``passed``: the pruned model computes what the asked-for (zeroed) model does, ≤ CHECK_RTOL relative.
    ``exact`` is False only under ``--allow-inexact-folds``, which then reports the distance instead."""

    samples: int
    pruned_vs_masked_abs: float
    pruned_vs_masked_rel: float
    masked_vs_zeroed_abs: float
    masked_vs_zeroed_rel: float
    passed: bool
    status: str = "passed"  # passed | inexact (allowed by --allow-inexact-folds)
    training: str = "not run"  # the same check in training mode: passed | skipped: why (check_training_mode)
    training_rel: float | None = None  # its pruned vs masked max rel error


def run_outputs(model: nn.Module, x: Any) -> list[torch.Tensor]:
    """The eval-mode outputs, as float32, computed in full float32 precision (no TF32 on CUDA)."""
    with torch.no_grad(), full_float32():
        return [t.detach().float() for t in output_tensors(call_model(model, x))]


def distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs difference, that divided by the reference's largest magnitude) over all outputs."""
    worst_abs, worst_rel = 0.0, 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return math.inf, math.inf
        d = float((x - y).abs().max()) if x.numel() else 0.0
        if not math.isfinite(d):
            return math.inf, math.inf
        scale = float(y.abs().max()) if y.numel() else 0.0
        worst_abs = max(worst_abs, d)
        worst_rel = max(worst_rel, d / scale if scale > 0 else d)
    return worst_abs, worst_rel


def self_check(out_pruned: list[torch.Tensor], out_masked: list[torch.Tensor], out_zeroed: list[torch.Tensor],
               inputs: Any, inexact: bool) -> SelfCheck:
    """Pruned vs masked equivalent (an index error is an explainfix bug), masked vs the zeroed model the
    user asked for (the folds). Raises InternalError (exit 4) unless both hold, except that inexact folds the user
    allowed give ``status="inexact"`` with the distance and ``passed=False``."""
    pm_abs, pm_rel = distance(out_pruned, out_masked)
    mz_abs, mz_rel = distance(out_masked, out_zeroed)
    n = int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) else int(inputs[0].shape[0])
    if pm_rel > CHECK_RTOL:
        raise InternalError(
            f"self-check failed: the pruned model differs from its masked equivalent (max rel error {pm_rel:.2e} > {CHECK_RTOL:g})",
            hint="this is an explainfix bug; nothing was written. Please report it with the model")
    exact = mz_rel <= CHECK_RTOL
    if not exact and not inexact:
        raise InternalError(
            f"self-check failed: the pruned model differs from the zeroed model (max rel error {mz_rel:.2e} > {CHECK_RTOL:g})",
            hint="this is an explainfix bug; nothing was written. Please report it with the model")
    return SelfCheck(n, pm_abs, pm_rel, mz_abs, mz_rel, passed=exact, status="passed" if exact else "inexact")


def train_outputs(model: nn.Module, x: Any, seed: int = 0) -> list[torch.Tensor]:
    """The outputs in training mode — train-only branches run — with dropout off, a fixed seed for other
    random ops (stochastic depth) and BatchNorm on its running statistics: batch statistics over a few
    samples (two values per channel on a 1×1 map) magnify float summation-order differences into
    percent-size ones (timm inception_v3 at 64 px: 8e-3), while BatchNorm never mixes channels, so an index
    error shows either way. The model's mode flags and running statistics are unchanged after."""
    devices = [x.device] if isinstance(x, torch.Tensor) and x.device.type == "cuda" else []
    with torch.no_grad(), full_float32(), in_training_mode(model), without_dropout(), torch.random.fork_rng(devices=devices):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        torch.manual_seed(seed)
        return [t.detach().float() for t in output_tensors(call_model(model, x))]


def masked_train_outputs(masked: nn.Module, inputs: Any) -> list[torch.Tensor] | str:
    """The masked equivalent's training-mode outputs for :func:`check_training_mode`, or why there are none
    (the unpruned-shape model does not run in training mode on these inputs, e.g. BatchNorm on one value
    per channel: not a fault of the pruning)."""
    try:
        return train_outputs(masked, inputs)
    except Exception as e:  # noqa: BLE001
        return f"skipped: the model does not run in training mode on the check inputs ({type(e).__name__}: {first_line(e, 120)})"


def check_training_mode(check: SelfCheck, pruned: nn.Module, want: list[torch.Tensor] | str, inputs: Any) -> None:
    """The pruned model against its masked equivalent (``want``: :func:`masked_train_outputs`) in training
    mode too — a branch only training runs, such as Inception's auxiliary head, reads channels too; fills
    ``check.training``. The folds were decided in eval mode, so only pruned vs masked is compared."""
    if isinstance(want, str):
        check.training = want
        return
    try:
        got = train_outputs(pruned, inputs)
    except Exception as e:
        raise CannotProcess(f"the pruned model fails to run in training mode: {type(e).__name__}: {first_line(e, 200)}",
                            hint="a branch only training runs depends on a pruned channel count; nothing was written") from None
    _, rel = distance(got, want)
    if len(got) != len(want) or rel > CHECK_RTOL:
        raise InternalError(
            f"self-check failed in training mode: the pruned model differs from its masked equivalent (max rel error {rel:.2e} > {CHECK_RTOL:g})",
            hint="this is an explainfix bug; nothing was written. Please report it with the model")
    check.training, check.training_rel = "passed", rel
