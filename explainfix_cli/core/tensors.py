"""A forward's inputs and outputs as flat, named tensors (export and verification read them the same way).

    as_input_tuple(x)                          # (x,): the positional args of forward
    flatten_outputs({"logits": a, "aux": (b, c)})   # [("logits", a), ("aux_0", b), ("aux_1", c)]
    with eval_mode(model): ...                 # eval, then the train/eval flag it had
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .errors import BadInput, CannotProcess


def as_input_tuple(example: Any) -> tuple[torch.Tensor, ...]:
    """A tensor or a tuple/list of tensors → a tuple of tensors (the positional args of forward)."""
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and example and all(isinstance(t, torch.Tensor) for t in example):
        return tuple(example)
    raise BadInput("example inputs must be a tensor or a non-empty tuple of tensors")


def flatten_outputs(out: Any) -> list[tuple[str, torch.Tensor]]:
    """Name every tensor of a forward's output, in the exporters' (pytree) order.

    tensor → ``output``; tuple/list → ``output_0, output_1…``; dict → its keys; nested parts are
    joined with ``_``:  ``{"logits": a, "aux": (b, c)}`` → ``[("logits", a), ("aux_0", b), ("aux_1", c)]``.
    """
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    return _flatten(out, "output" if isinstance(out, (tuple, list)) else "")


def _flatten(obj: Any, prefix: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        raise CannotProcess(
            f"model output `{prefix or 'output'}` is a {type(obj).__name__}, not a tensor",
            hint="ONNX outputs must be tensors; return tensors (or tuples/dicts of tensors) from forward()",
        )
    named: list[tuple[str, torch.Tensor]] = []
    for key, value in items:
        named += _flatten(value, f"{prefix}_{key}" if prefix else key)
    return named


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then restore its train/eval flag."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
