"""The self-check: run models on the same inputs and measure how far apart their outputs are."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.model import call_model, output_tensors

CHECK_RTOL = 1e-4  # pruned vs masked equivalent, relative to the output's largest magnitude


@dataclass
class SelfCheck:
    samples: int
    pruned_vs_masked_abs: float
    pruned_vs_masked_rel: float
    masked_vs_zeroed_abs: float
    masked_vs_zeroed_rel: float
    passed: bool


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
