"""Size and cost of a model: parameters and multiply-accumulates for one input."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters, counting a tensor shared by several modules once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example`` for ONE sample (batch of 1 is used).

    Uses torch's FlopCounterMode (conv, matmul, addmm, bmm, … count 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    def one(x):
        return x[:1] if isinstance(x, torch.Tensor) else type(x)(one(v) for v in x)

    x = one(example)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*x) if isinstance(x, (tuple, list)) else model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)
