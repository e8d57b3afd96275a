"""What happens to zeroed kernels that stay in surviving channels: ``fillzero`` (the reference's FillZero)
or ``restore`` (their original values come back: free accuracy on dense hardware)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..channels.plan import Plan
from ..core.model import is_depthwise, iter_spatial_convs


def fill_zero_initialization(conv: nn.Conv2d, generator: torch.Generator | None = None) -> None:
    """The reference's FillZero, in place: a kernel that is partly zero gets its zeros replaced by
    N(mean, std) of that kernel; a kernel that is entirely zero gets kaiming-uniform values."""
    with torch.no_grad():
        w = conv.weight
        cur = w.detach().clone()
        noise = torch.randn(cur.shape, generator=generator).to(cur)
        fill = noise * cur.std(dim=(-1, -2), keepdim=True) + cur.mean(dim=(-1, -2), keepdim=True)
        zero = torch.isclose(cur, torch.zeros((), dtype=cur.dtype, device=cur.device))
        cur[zero] = fill[zero]
        zero = torch.isclose(cur, torch.zeros((), dtype=cur.dtype, device=cur.device))
        if bool(zero.any()):
            fan_in = cur[0].numel()
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=√5) == U(-1/√fan_in, 1/√fan_in)
            kaiming = (torch.rand(cur.shape, generator=generator).to(cur) * 2 - 1) * bound
            cur[zero] = kaiming[zero]
        w.copy_(cur)


def restore_unremoved(model: nn.Module, plan: Plan, originals: dict[str, torch.Tensor]) -> None:
    """``--fill restore``: restore every zeroed kernel that is not in a removed row or column."""
    with torch.no_grad():
        for name, m in iter_spatial_convs(model):
            e = plan.modules.get(name, {})
            rows = torch.ones(m.out_channels, dtype=torch.bool)
            cols = torch.ones(m.weight.shape[1], dtype=torch.bool)
            rows[e.get("out", e.get("channels", []))] = False
            if "in" in e:
                cols[[j % cols.numel() for j in e["in"]]] = False  # grouped: in-group positions
            keep = rows.view(-1, 1) & cols.view(1, -1)
            if is_depthwise(m):
                keep = rows.view(-1, 1)
            w = m.weight
            w[keep.to(w.device)] = originals[name][keep.to(w.device)]
