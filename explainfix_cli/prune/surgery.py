"""The masked equivalent of a removal plan: every shape kept, removed channels' consumer columns zeroed and
their constants folded into the consumers' biases. :func:`explainfix_cli.io.edits.apply_edit` applied to it
gives the pruned model, which must compute the same function (the self-check, prune/check.py).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..io.edits import ensure_bias, expand_block


def _rows_cols(m: nn.Module, kind: str, groups: int, index: int) -> tuple[Any, int]:
    """Which weight rows read input ``index`` of a consumer, and at which column."""
    if kind == "conv" and groups > 1:
        per, t = m.weight.shape[1], m.weight.shape[0] // groups
        k = index // per
        return slice(k * t, (k + 1) * t), index % per
    return slice(None), index


def mask_and_fold(model: nn.Module, folds: list[dict], masked_inputs: dict[str, dict]) -> None:
    """Build the masked equivalent in place.

    ``folds``: ``{"module", "kind", "groups", "block", "channels", "values"}`` — constant inputs whose
    contribution ``value · Σ W[rows, c]`` goes into the bias of the rows that read them.
    ``masked_inputs``: module → ``{"in", "in_block", "kind", "groups"}``, the input indices whose weights
    are then zeroed (for a ConvTranspose2d, rows of its weight)."""
    with torch.no_grad():
        for f in folds:
            m = model.get_submodule(f["module"])
            w = m.weight.detach().double()
            contrib = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
            for ch, value in zip(expand_block(f["channels"], int(f.get("block", 1))).tolist(),
                                 [v for v in f["values"] for _ in range(int(f.get("block", 1)))]):
                rows, col = _rows_cols(m, f["kind"], int(f.get("groups", 1)), ch)
                col_w = w[rows, col]
                contrib[rows] += (col_w.sum(dim=(1, 2)) if col_w.dim() == 3 else col_w) * value
            ensure_bias(m, w.shape[0])
            m.bias += contrib.to(m.bias.dtype)
        for path, e in masked_inputs.items():
            m = model.get_submodule(path)
            cols = expand_block(e["in"], int(e.get("in_block", 1))).tolist()
            if e.get("kind") == "convT":
                m.weight[cols] = 0
                continue
            for j in cols:
                rows, col = _rows_cols(m, e.get("kind", "conv"), int(e.get("groups", 1)), j)
                m.weight[rows, col] = 0
