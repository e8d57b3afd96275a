"""How each layer type is sliced, and the two ways a removal plan is applied.

A structural *edit* is JSON (it is stored in the recipe and replayed by :func:`apply_edit` to rebuild a
pruned model from its architecture)::

    {"op": "prune", "modules": {
        "layer1.0.conv1": {"out": [3, 7], "in": [0], "add_bias": true},   # Conv2d rows / columns
        "layer1.0.bn1":   {"channels": [3, 7]},                            # BN, depthwise conv
        "fc":             {"in": [5], "in_block": 1}}}                     # Linear: block per channel

* :func:`mask_and_fold` keeps every shape: it zeroes the consumers' columns of removed channels and adds
  their folded constants to the consumers' biases — the *masked equivalent*.
* :func:`apply_edit` removes the rows / columns / channels. Applied to the masked equivalent it gives
  the pruned model, which must compute the same function (the self-check).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .errors import CannotProcess


def keep_indices(n: int, removed: list[int]) -> torch.Tensor:
    drop = set(removed)
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def expand_block(channels: list[int] | torch.Tensor, block: int) -> torch.Tensor:
    """Channel indices → feature indices when each channel owns ``block`` consecutive features."""
    c = torch.as_tensor(channels, dtype=torch.long)
    return (c.view(-1, 1) * block + torch.arange(block).view(1, -1)).reshape(-1)


def _set(m: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(m, name)
    if value is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(m, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(m, name, value.contiguous())


def _ensure_bias(m: nn.Module, size: int) -> None:
    if m.bias is None:
        w = m.weight
        m.bias = nn.Parameter(torch.zeros(size, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)


def slice_conv(m: nn.Conv2d, e: dict) -> None:
    if e.get("add_bias"):
        _ensure_bias(m, m.out_channels)
    with torch.no_grad():
        if "channels" in e:  # depthwise: in = out = groups
            keep = keep_indices(m.out_channels, e["channels"]).to(m.weight.device)
            _set(m, "weight", m.weight[keep])
            _set(m, "bias", m.bias[keep] if m.bias is not None else None)
            m.in_channels = m.out_channels = m.groups = len(keep)
        if "out" in e:
            keep = keep_indices(m.out_channels, e["out"]).to(m.weight.device)
            _set(m, "weight", m.weight[keep])
            _set(m, "bias", m.bias[keep] if m.bias is not None else None)
            m.out_channels = len(keep)
        if "in" in e:
            if m.groups != 1:
                raise CannotProcess(f"cannot remove input channels of grouped conv (groups={m.groups})")
            keep = keep_indices(m.in_channels, e["in"]).to(m.weight.device)
            _set(m, "weight", m.weight[:, keep])
            m.in_channels = len(keep)


def slice_linear(m: nn.Linear, e: dict) -> None:
    if e.get("add_bias"):
        _ensure_bias(m, m.out_features)
    with torch.no_grad():
        if "in" in e:
            block = int(e.get("in_block", 1))
            drop = expand_block(e["in"], block).tolist()
            keep = keep_indices(m.in_features, drop).to(m.weight.device)
            _set(m, "weight", m.weight[:, keep])
            m.in_features = len(keep)


def slice_batchnorm(m: nn.modules.batchnorm._BatchNorm, e: dict) -> None:
    keep = keep_indices(m.num_features, e["channels"])
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, name)
            if t is not None:
                _set(m, name, t[keep.to(t.device)])
    m.num_features = len(keep)


SLICERS: dict[type, Callable[[nn.Module, dict], None]] = {
    nn.Conv2d: slice_conv,
    nn.Linear: slice_linear,
    nn.BatchNorm2d: slice_batchnorm,
    nn.BatchNorm1d: slice_batchnorm,
}


def _slicer(m: nn.Module, path: str) -> Callable[[nn.Module, dict], None]:
    for cls in type(m).__mro__:
        if cls in SLICERS:
            return SLICERS[cls]
    raise CannotProcess(f"no slicing rule for {type(m).__name__} at `{path}`")


def apply_edit(model: nn.Module, edit: dict) -> None:
    """Replay one recipe edit in place (structure and the kept values)."""
    if edit.get("op") != "prune":
        return  # value-only edits (fix, finetune) change no shapes
    for path, e in edit["modules"].items():
        try:
            m = model.get_submodule(path)
        except AttributeError:
            raise CannotProcess(f"the recipe edits `{path}`, which the architecture does not have") from None
        _slicer(m, path)(m, e)


def mask_and_fold(model: nn.Module, folds: list[dict], masked_inputs: dict[str, dict]) -> None:
    """Build the masked equivalent in place.

    ``folds``: ``{"module", "kind", "block", "channels", "values"}`` — constant inputs whose contribution
    ``value · Σ W[:, c]`` goes into the consumer's bias. ``masked_inputs``: module → ``{"in", "in_block"}``,
    the input channels whose weights are then zeroed."""
    with torch.no_grad():
        for f in folds:
            m = model.get_submodule(f["module"])
            w = m.weight.detach().double()
            values = torch.as_tensor(f["values"], dtype=torch.float64, device=w.device)
            if f["kind"] == "conv":
                contrib = (w[:, f["channels"]].sum(dim=(2, 3)) * values).sum(1)
            else:
                b = f["block"]
                cols = w[:, expand_block(f["channels"], b).to(w.device)].view(w.shape[0], len(f["channels"]), b)
                contrib = (cols.sum(2) * values).sum(1)
            _ensure_bias(m, w.shape[0])
            m.bias += contrib.to(m.bias.dtype)
        for path, e in masked_inputs.items():
            m = model.get_submodule(path)
            cols = expand_block(e["in"], int(e.get("in_block", 1))).to(m.weight.device)
            m.weight[:, cols] = 0
