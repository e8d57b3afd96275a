"""The self-check: run models on the same inputs and measure how far apart their outputs are."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import InternalError
from ..core.model import call_model, output_tensors

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


def run_outputs(model: nn.Module, x: Any) -> list[torch.Tensor]:
    with torch.no_grad():
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
