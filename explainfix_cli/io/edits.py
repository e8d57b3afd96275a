"""The recipe's structural edits: their JSON format and the one table that says how each layer type is sliced.

A structural *edit* is JSON (it is stored in the recipe and replayed by :func:`apply_edit` to rebuild a
pruned model from its architecture)::

    {"op": "prune", "modules": {
        "layer1.0.conv1": {"out": [3, 7], "in": [0], "add_bias": true},   # Conv2d rows / columns
        "layer1.0.bn1":   {"channels": [3, 7]},                            # BN, depthwise conv
        "fc":             {"in": [5], "in_block": 1, "out": [2]}}}          # Linear: block per channel
    # grouped Conv2d: "in"/"out" take the same in-group positions from every group (groups stays);
    # ConvTranspose2d: "in"/"out" on weight dims 0/1 (grouped: the same in-group positions, as Conv2d);
    # InstanceNorm, GroupNorm(groups=C), PReLU: "channels"

:func:`apply_edit` removes the rows / columns / channels: prune applies it to the masked equivalent
(prune/surgery.py), and loading an explainfix directory replays every edit of its recipe.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.errors import CannotProcess


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


def ensure_bias(m: nn.Module, size: int) -> None:
    if m.bias is None:
        w = m.weight
        m.bias = nn.Parameter(torch.zeros(size, dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)


def _group_local(removed: list[int], n: int, groups: int, what: str) -> list[int]:
    """Removed indices of a grouped layer → the in-group positions, which must be the same in every group."""
    per = n // groups
    local = [sorted(j % per for j in removed if j // per == k) for k in range(groups)]
    if any(lo != local[0] for lo in local):
        raise CannotProcess(f"the removal would make the groups of a grouped conv's {what} unequal")
    return local[0]


def slice_conv(m: nn.Conv2d, e: dict) -> None:
    """Conv2d. Grouped (1 < groups, not depthwise): a removal takes the same in-group positions from every
    group (graph.py merges them), so ``groups`` stays and every group keeps the same size."""
    if e.get("add_bias"):
        ensure_bias(m, m.out_channels)
    with torch.no_grad():
        if "channels" in e:  # depthwise: in = out = groups
            keep = keep_indices(m.out_channels, e["channels"]).to(m.weight.device)
            _set(m, "weight", m.weight[keep])
            _set(m, "bias", m.bias[keep] if m.bias is not None else None)
            m.in_channels = m.out_channels = m.groups = len(keep)
        if "out" in e:
            if m.groups > 1:
                _group_local(e["out"], m.out_channels, m.groups, "outputs")
            keep = keep_indices(m.out_channels, e["out"]).to(m.weight.device)
            _set(m, "weight", m.weight[keep])
            _set(m, "bias", m.bias[keep] if m.bias is not None else None)
            m.out_channels = len(keep)
        if "in" in e:
            per = m.in_channels // m.groups
            local = _group_local(e["in"], m.in_channels, m.groups, "inputs") if m.groups > 1 else e["in"]
            keep = keep_indices(per, local).to(m.weight.device)
            _set(m, "weight", m.weight[:, keep])
            m.in_channels = len(keep) * m.groups


def slice_conv_transpose(m: nn.ConvTranspose2d, e: dict) -> None:
    """ConvTranspose2d: weight is (in, out/groups, kh, kw). Grouped: as for Conv2d, a removal takes the same
    in-group positions from every group, so ``groups`` stays."""
    if e.get("add_bias"):
        ensure_bias(m, m.out_channels)
    with torch.no_grad():
        if "out" in e:
            per = m.out_channels // m.groups
            local = _group_local(e["out"], m.out_channels, m.groups, "outputs") if m.groups > 1 else e["out"]
            keep_local = keep_indices(per, local).to(m.weight.device)
            keep = keep_indices(m.out_channels, e["out"]).to(m.weight.device)
            _set(m, "weight", m.weight[:, keep_local])
            _set(m, "bias", m.bias[keep] if m.bias is not None else None)
            m.out_channels = len(keep)
        if "in" in e:
            if m.groups > 1:
                _group_local(e["in"], m.in_channels, m.groups, "inputs")
            keep = keep_indices(m.in_channels, e["in"]).to(m.weight.device)
            _set(m, "weight", m.weight[keep])
            m.in_channels = len(keep)


def slice_linear(m: nn.Linear, e: dict) -> None:
    if e.get("add_bias"):
        ensure_bias(m, m.out_features)
    with torch.no_grad():
        if "in" in e:
            block = int(e.get("in_block", 1))
            drop = expand_block(e["in"], block).tolist()
            keep = keep_indices(m.in_features, drop).to(m.weight.device)
            _set(m, "weight", m.weight[:, keep])
            m.in_features = len(keep)
        if "out" in e:
            keep = keep_indices(m.out_features, e["out"]).to(m.weight.device)
            _set(m, "weight", m.weight[keep])
            _set(m, "bias", m.bias[keep] if m.bias is not None else None)
            m.out_features = len(keep)


def slice_norm(m: nn.Module, e: dict) -> None:
    """BatchNorm (with or without affine / running stats), InstanceNorm, GroupNorm(groups = C), PReLU."""
    n = m.weight.shape[0] if isinstance(m, nn.PReLU) else (m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features)
    keep = keep_indices(n, e["channels"])
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, name, None)
            if t is not None:
                _set(m, name, t[keep.to(t.device)])
    if isinstance(m, nn.PReLU):
        m.num_parameters = len(keep)
    elif isinstance(m, nn.GroupNorm):
        if m.num_groups != m.num_channels:
            raise CannotProcess("cannot slice a GroupNorm with fewer groups than channels")
        m.num_channels = m.num_groups = len(keep)
    else:
        m.num_features = len(keep)


SLICERS: dict[type, Callable[[nn.Module, dict], None]] = {
    nn.Conv2d: slice_conv,
    nn.ConvTranspose2d: slice_conv_transpose,
    nn.Linear: slice_linear,
    nn.modules.batchnorm._BatchNorm: slice_norm,
    nn.modules.instancenorm._InstanceNorm: slice_norm,
    nn.GroupNorm: slice_norm,
    nn.PReLU: slice_norm,
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
