"""Op tables and pure helpers of the channel analysis (analyzer.py)."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .labels import Lab

ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout,
)
from ..core.model import behaves_like_base, same_padded  # noqa: E402,F401 (re-exported for the tracer)

NORM_BASES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def is_norm_act(m: nn.Module) -> bool:
    """A model library's norm + activation layer (timm BatchNormAct2d, GroupNormAct, LayerNorm2d…): a
    subclass of a torch norm whose submodules are all element-wise (act, drop). Its forward calls
    ``F.batch_norm`` on its own attributes and then the act; as a leaf it is one channel-wise layer whose
    constants are computed by running the module itself, so the act is included exactly."""
    if type(m) in NORM_BASES or not isinstance(m, NORM_BASES) or type(m).__module__.startswith("torch."):
        return False
    return all(isinstance(c, ELEMENTWISE_MODULES) for c in m.children())


UNARY_FNS = {
    torch.relu, F.relu, F.relu6, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.silu, F.gelu, F.hardswish,
    F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout2d,
    F.relu_, torch.relu_, torch.clamp, torch.exp, torch.neg, operator.neg, torch.abs, torch.sqrt, torch.rsqrt,
}
UNARY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "clone", "float", "detach", "clamp",
                 "clamp_", "clamp_min", "clamp_max", "neg", "abs", "exp", "sqrt", "to"}
BINARY_FNS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
              operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.pow,
              torch.maximum, torch.minimum}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow"}
FACTORY_METHODS = {"new_full", "new_zeros", "new_ones", "new_empty", "new_tensor"}  # a new tensor, x's dtype only
RESHAPE_FNS, RESHAPE_METHODS = {torch.flatten, torch.reshape}, {"view", "reshape", "flatten"}
MOVE_FNS = {torch.permute, torch.transpose, torch.movedim, torch.swapaxes, torch.unsqueeze, torch.squeeze}
MOVE_METHODS = {"permute", "transpose", "movedim", "swapaxes", "unsqueeze", "squeeze", "expand"}
CUT_FNS = {torch.chunk, torch.split, torch.narrow, torch.unbind, torch.tensor_split, operator.getitem}
CUT_METHODS = {"chunk", "split", "narrow", "unbind", "tensor_split"}
CAT_FNS = {torch.cat, torch.concat, torch.concatenate}
REDUCE_FNS, REDUCE_METHODS = {torch.mean, torch.sum, torch.amax, torch.amin}, {"mean", "sum", "amax", "amin"}
SOFTMAX_FNS, SOFTMAX_METHODS = {F.softmax, F.log_softmax, torch.softmax}, {"softmax", "log_softmax"}
NORM_FNS = {F.layer_norm, F.group_norm}
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
POOL_FNS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate}


def labs_of(x: Any) -> list[Lab]:
    if isinstance(x, Lab):
        return [x]
    if isinstance(x, (tuple, list)):
        return [lab for v in x for lab in labs_of(v)]
    return []


def blank_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Lab.blank(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return tuple(blank_like(v) for v in value)
    return None


def dim_arg(args: tuple, kwargs: dict, pos: int, default: Any = 0) -> Any:
    return kwargs.get("dim", args[pos] if len(args) > pos else default)


def split_dims(sin: tuple, sout: tuple) -> list[int]:
    """Dims of ``sin`` that a reshape to ``sout`` splits into several dims (merges are fine)."""
    a = [(i, s) for i, s in enumerate(sin) if s != 1]
    b = [s for s in sout if s != 1]
    i = j = 0
    bad: list[int] = []
    while i < len(a) and j < len(b):
        group, pi, pj, nj = [a[i][0]], a[i][1], b[j], 1
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(a):
                    return list(range(len(sin)))
                group.append(a[i][0])
                pi, i = pi * a[i][1], i + 1
            else:
                if j >= len(b):
                    return list(range(len(sin)))
                pj, nj, j = pj * b[j], nj + 1, j + 1
        if nj > 1:
            bad += group
    return bad


def cut_dims(index: Any, rank: int) -> list[int]:
    """Dims that a ``__getitem__`` index does not take whole."""
    items = index if isinstance(index, tuple) else (index,)
    real = [it for it in items if it is not None and it is not Ellipsis]
    cut, d = [], 0
    for it in items:
        if it is None:
            continue
        if it is Ellipsis:
            d = rank - (len(real) - sum(1 for r in items[:items.index(it)] if r is not None and r is not Ellipsis))
            continue
        if not (isinstance(it, slice) and it == slice(None)):
            cut.append(d)
        d += 1
    return cut


def apply_const(fn: Any, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        out = fn(v.float()).double()
    except Exception:
        return torch.zeros_like(k), v
    if out.shape != v.shape:
        return torch.zeros_like(k), v
    return k & torch.isfinite(out), out


def depthwise_const(m: nn.Conv2d, in_const: torch.Tensor, in_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = m.weight.detach().double().cpu()
    bias = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    zero = w.flatten(1).abs().sum(1) == 0
    no_border = all(p == 0 for p in m.padding) if isinstance(m.padding, tuple) else m.padding == "valid"
    no_border = no_border and not same_padded(m)
    if m.padding_mode != "zeros":
        no_border = True
    through = in_const & ((in_value == 0) | no_border)
    is_const = zero | through
    value = torch.where(zero, bias, in_value * w.flatten(1).sum(1) + bias)
    return is_const, torch.where(is_const, value, torch.zeros_like(value))
