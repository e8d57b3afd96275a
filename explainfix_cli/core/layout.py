"""Channels-last for the passes that only read a model: saliency, BatchNorm re-estimation, agreement, fine-tuning.

oneDNN on CPU and cuDNN on CUDA run most convolutions faster on NHWC tensors (resnet50 @224² forward+backward
on 2 CPU cores: about 0.6–0.8 of the NCHW time; benchmarks/README.md). Converting the 4-D parameters is
enough: a conv whose weight is channels-last produces a channels-last output, and the layout follows.

Nothing outside such a pass sees the change: :func:`channels_last` converts on entry and gives every
parameter its own contiguous layout back on exit, so surgery, the self-check, exports and saved files work
on the same tensors as before. A model whose forward depends on the layout (a ``.view`` that needs NCHW
strides, a custom kernel) is left as it is: one sample is run both ways first, and any error or an output
that differs by more than float rounding keeps the contiguous layout for the pass.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .model import call_model, output_tensors

# relative distance of the probe's outputs: NHWC kernels sum in another order (about 1e-6 in float32 on the
# CPU; cuDNN convolutions default to TF32, about 1e-3). A forward that depends on the layout is off by far more.
TOLERANCE = {"cpu": 1e-3, "cuda": 1e-2}
ENV = "EXPLAINFIX_CHANNELS_LAST"  # "0" keeps the contiguous layout everywhere (a debugging switch)


def wanted() -> bool:
    return os.environ.get(ENV, "1") != "0"


@contextmanager
def channels_last(model: nn.Module, example: Any, enabled: bool = True) -> Iterator[bool]:
    """Run the block with the model's 4-D parameters channels-last when that computes the same outputs on
    ``example`` (one sample is enough); yields whether it did. Restored to contiguous on exit."""
    params = [p for p in model.parameters() if p.dim() == 4 and p.is_contiguous()]
    if not (enabled and wanted() and params and _images(example)):
        yield False
        return
    converted = _probe(model, params, example[:1] if isinstance(example, torch.Tensor) else example)
    try:
        yield converted
    finally:
        if converted:
            _set(params, torch.contiguous_format)


def _images(example: Any) -> bool:
    return isinstance(example, torch.Tensor) and example.dim() == 4


def _set(params: list[torch.Tensor], fmt: torch.memory_format) -> None:
    with torch.no_grad():
        for p in params:
            p.data = p.data.contiguous(memory_format=fmt)


def _probe(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor) -> bool:
    """Convert, and keep the conversion only if one eval-mode forward gives the contiguous model's outputs."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    x = x.to(params[0].device)
    try:
        with torch.no_grad():
            try:
                want = output_tensors(call_model(model, x))
            except Exception:  # noqa: BLE001 - not ours to report: the pass itself will say what is wrong
                return False
            _set(params, torch.channels_last)
            try:
                got = output_tensors(call_model(model, x))
            except Exception:  # noqa: BLE001 - a forward that needs NCHW strides: keep them
                got = []
        same = len(got) == len(want) and all(g.shape == w.shape and _close(g, w) for g, w in zip(got, want))
        if not same:
            _set(params, torch.contiguous_format)
        return same
    finally:
        for m, mode in modes:
            m.train(mode)


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    if not want.is_floating_point():
        return bool(torch.equal(got, want))
    scale = float(want.double().norm())
    tolerance = TOLERANCE.get(want.device.type, TOLERANCE["cuda"])
    return float((got.double() - want.double()).norm()) <= tolerance * max(scale, 1e-12)
