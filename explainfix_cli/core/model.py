"""What every stage asks of a model: its spatial convs, how to call it, its size and cost (params, MACs)."""
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


def iter_spatial_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every Conv2d with a kernel larger than 1×1, in ``named_modules`` order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)
    ]


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


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a forward's output (tensor, tuple/list, dict; nested), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in output_tensors(o)]
    return []


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
