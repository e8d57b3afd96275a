"""Refit the layers that read removed channels, by least squares on the calibration data.

Removing a channel takes its contribution out of every layer that reads it. Each such layer (a conv with
``groups=1`` or a linear layer) can make up part of the loss with the channels it keeps: its new weights
``W'`` minimise ``‖Y − W'·X'‖²`` over sampled output positions, where ``Y`` is the *original* model's output
of that layer and ``X'`` the input the *pruned* model gives it (removed channels' columns stay zero) — the
reconstruction step of He et al. 2017 ("Channel pruning for accelerating very deep neural networks") and
ThiNet, layer after layer in forward order so each fit sees the upstream layers already refit.

Only layers whose output a BatchNorm alone reads are refit, and each refit row is scaled back to the norm it
had (the BatchNorm's running statistics rescaled to undo it exactly in eval mode: :func:`rescale_rows`). A fit
that grows the weights slows every later fine-tune of a normalised layer (its effective learning rate falls
as ‖w‖²), and a refit classifier or squeeze-excitation layer (no BatchNorm) grows its logits until
fine-tuning diverges: measured on MobileNetV3-Small at 10× fewer MACs (ridge 1.0, session 14), refitting every
layer left the 2-epoch fine-tune 18.8 points below no refit (48.6 % against 67.4 %), this rule 5.2 above
(benchmarks/README.md).

It runs on the *masked* model (every shape kept, removed channels' consumer columns zeroed), before the
surgery: the surgery and the self-check are then unchanged — the pruned model must still compute what the
masked (and refit) model computes. The fit is a ridge regression toward the layer's weights before it
(``RIDGE``, relative to the mean diagonal of ``X'ᵀX'``): stable when a layer has more inputs than sampled
rows, and never further from ``Y`` than the weights it starts from. Under torchrun ``X'ᵀX'`` and ``X'ᵀY``
are summed over the ranks, so every rank fits the same weights.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import dist
from ..core.model import call_model, to_device
from ..io.edits import expand_block

ROWS_PER_BATCH = 2048  # sampled output positions per batch and layer (all of them when fewer)
MAX_INPUTS = 8192  # a layer with more inputs (in·kh·kw) is not refit: its d×d sums would take > 0.5 GB
ROWS_ENOUGH, ROWS_PER_INPUT = 16384, 4  # a layer stops reading batches once it has max(these, 4·its inputs) rows
# ridge toward the weights before the fit, relative to the mean diagonal of X'ᵀX'. 0.1 against 1.0 (session 15, three
# Fashion-MNIST bases, 2×/4×/10×, means of two seeds): one-shot ahead in 9 of 9 cells (+0.1 to +10.9 points), after a
# 2-epoch fine-tune in 8, after distillation in 6 (the worst: MobileNetV2 4×, −1.1); not measured on the held-out
# MNASNet-0.5, where a stronger ridge (10) had helped distillation. benchmarks/README.md, "Session 15"
RIDGE = 0.1


class _Stop(BaseException):  # not an Exception: a forward's own `except Exception` must not swallow it
    """Raised by a hook once it has what it needs: the rest of the forward is skipped."""


@dataclass
class Refit:
    layers: int = 0  # layers refit
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it was not refit
    residual_before: float = 0.0  # Σ over refit layers of ‖Y − W·X'‖² / ‖Y‖², before and after
    residual_after: float = 0.0
    rows: int = 0  # sampled rows per layer (the largest)

    def to_json(self) -> dict:
        return {"layers": self.layers, "skipped": dict(list(self.skipped.items())[:10]),
                "residual_before": round(self.residual_before, 6),
                "residual_after": round(self.residual_after, 6), "rows": self.rows}


def _eligible(m: nn.Module, entry: dict) -> str | None:
    """Why ``m`` cannot be refit (None: it can)."""
    if entry.get("kind") == "convT":
        return "a transposed conv"
    if isinstance(m, nn.Linear):
        return None
    if not isinstance(m, nn.Conv2d):
        return f"a {type(m).__name__}"
    if m.groups != 1:
        return "a grouped conv"
    return None


class _Mismatch(Exception):
    """The input padded as the layer's forward pads it does not give the layer's output size."""


def _padding(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) as the conv's forward pads now (its attributes may have been changed after
    it was made, as segmentation libraries do to dilate a backbone)."""
    if m.padding_mode != "zeros":
        return tuple(m._reversed_padding_repeated_twice)  # what its forward passes to F.pad
    if m.padding == "valid":
        return (0, 0, 0, 0)
    if m.padding == "same":  # F.conv2d's own split: the odd pixel on the right/bottom
        (kh, kw), (dh, dw) = m.kernel_size, m.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = m.padding
    return (pw, pw, ph, ph)


def _patches(m: nn.Module, x: torch.Tensor, index: torch.Tensor, out_hw: tuple[int, ...] = ()) -> torch.Tensor:
    """Rows of the layer's unfolded input at the flat output positions ``index``: (rows, in·kh·kw), in the
    order of ``weight.flatten(1)`` (a linear layer: the input rows themselves). ``out_hw``: the conv's output
    size, which the padded input must give (else :class:`_Mismatch`)."""
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])[index]
    kh, kw = m.kernel_size
    (sh, sw), (dh, dw) = m.stride, m.dilation
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    xp = F.pad(x, _padding(m), mode=mode)
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    if out_hw and (ho, wo) != tuple(out_hw):
        raise _Mismatch
    n, rest = index // (ho * wo), index % (ho * wo)
    oy, ox = rest // wo, rest % wo
    rows = (oy * sh)[:, None] + dh * torch.arange(kh, device=x.device)[None, :]  # (S, kh)
    cols = (ox * sw)[:, None] + dw * torch.arange(kw, device=x.device)[None, :]  # (S, kw)
    p = xp[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (S, kh, kw, C)
    return p.permute(0, 3, 1, 2).reshape(len(index), -1)


def channel_rows(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A tensor a layer reads or writes as (positions, channels) rows: a linear layer's channels are its last
    dimension (at any rank), a conv's are dimension 1; positions in the order :func:`_patches` indexes."""
    if isinstance(m, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _capture(model: nn.Module, module: nn.Module, x: Any, want: str) -> torch.Tensor:
    """The input (``want="in"``) or output of ``module`` in ``model(x)``; the forward stops there."""
    got: list[torch.Tensor] = []

    def hook(_m, args, out=None):
        got.append((args[0] if want == "in" else out).detach())
        raise _Stop

    handle = module.register_forward_hook(hook) if want == "out" else module.register_forward_pre_hook(hook)
    try:
        call_model(model, x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise LookupError("the layer was not called")
    return got[0]


def norm_after(gm: Any) -> dict[str, str]:
    """{layer: the BatchNorm that alone reads its output} in the trace ``gm``: scaling such a layer's output row
    by c is undone by its BatchNorm once the running statistics are scaled by c and c² (training-mode too)."""
    out: dict[str, str] = {}
    nodes = list(gm.graph.nodes) if gm is not None else []
    calls: dict[str, int] = {}
    for node in nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for node in nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.modules.batchnorm._BatchNorm) \
                and user.args and user.args[0] is node and calls[str(user.target)] == calls[str(node.target)] == 1:
            out[str(node.target)] = str(user.target)  # a BatchNorm called once (its statistics change)
    return out


def rescale_rows(layer: nn.Module, bn: nn.Module, c: torch.Tensor) -> None:
    """Scale ``layer``'s output rows by ``c`` (weight and bias) and undo it in the BatchNorm ``bn`` that alone
    reads them: running mean × c, running variance so that ``var + eps`` scales by c² — exact in eval mode. A
    row whose variance that would make negative (c < 1, variance near eps) is not scaled. Training mode
    normalises by the batch: the same up to eps."""
    with torch.no_grad():
        stats = getattr(bn, "running_mean", None) is not None
        if stats:
            cc = c.to(bn.running_var.dtype)
            var = cc * cc * (bn.running_var + bn.eps) - bn.eps
            ok = var > 0
            c = torch.where(ok.to(c.device), c, torch.ones_like(c))
            bn.running_mean.mul_(torch.where(ok, cc, torch.ones_like(cc)))
            bn.running_var.copy_(torch.where(ok, var, bn.running_var))
        c = c.to(layer.weight.dtype)
        layer.weight.mul_(c.view(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is not None:
            layer.bias.mul_(c)


def _forward_order(model: nn.Module, names: list[str], x: Any) -> tuple[list[str], set[str]]:
    """``names`` in the order the forward first calls them, and those it calls more than once."""
    calls: dict[str, int] = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, _a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n in names]
    try:
        with torch.no_grad():
            call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return list(calls), {n for n, c in calls.items() if c > 1}


def refit_consumers(masked: nn.Module, original: nn.Module, masked_inputs: dict[str, dict], norms: dict[str, str],
                    batches: Callable[[], Iterable], device: torch.device | str, example: Any, *, seed: int = 0,
                    rows_per_batch: int = ROWS_PER_BATCH, ridge: float = RIDGE,
                    progress: Callable[[int, int], None] | None = None) -> Refit:
    """Refit, in ``masked`` (in place), every layer of ``masked_inputs`` (the plan's consumers of removed
    channels) that :func:`_eligible` allows and a BatchNorm of ``norms`` (:func:`norm_after`) alone reads, on
    ``batches()`` of (x, _), against ``original`` (the model before the cut, same module names)."""
    report = Refit()
    names = []
    for name, entry in masked_inputs.items():
        why = _eligible(masked.get_submodule(name), entry) or (
            None if name in norms else "no BatchNorm (called once) reads its output alone")
        if why:
            report.skipped[name] = why
        else:
            names.append(name)
    if not names:
        return report
    masked.eval()  # no forward below may move a BatchNorm's statistics
    original.eval()
    order, shared = _forward_order(masked, names, to_device(example, device))  # every rank has the example
    for name in names:
        if name in shared:
            report.skipped[name] = "called more than once per forward"
        elif name not in order:
            report.skipped[name] = "not called by the forward"
    order = [n for n in order if n not in shared]
    for i, name in enumerate(order):
        if _refit_one(masked, original, name, masked_inputs[name], norms[name], batches, device, seed + i,
                      rows_per_batch, ridge, report):
            report.layers += 1
        if progress:
            progress(i + 1, len(order))
    return report


def _refit_one(masked: nn.Module, original: nn.Module, name: str, entry: dict, bn_name: str, batches, device,
               seed: int, rows_per_batch: int, ridge: float, report: Refit) -> bool:
    """Refit one layer (see :func:`refit_consumers`); False (and why in ``report.skipped``) when it stays."""
    m, m0 = masked.get_submodule(name), original.get_submodule(name)
    w = m.weight.detach()
    per = w[0].numel() // w.shape[1]  # columns per input channel (kh·kw; 1 for a linear layer)
    keep_ch = torch.ones(w.shape[1], dtype=torch.bool)
    keep_ch[expand_block(entry["in"], int(entry.get("in_block", 1)))] = False
    keep = keep_ch.repeat_interleave(per).to(w.device)
    has_bias = m.bias is not None
    current = w.flatten(1)[:, keep]
    if has_bias:
        current = torch.cat([current, m.bias.detach()[:, None]], 1)
    current = current.double().t()  # (d, out)
    d = current.shape[0]
    if d > MAX_INPUTS:  # X'ᵀX' is d×d in float64
        report.skipped[name] = f"{d} inputs (the refit stops at {MAX_INPUTS})"
        return False
    gram = torch.zeros(d, d, dtype=torch.float64, device=w.device)
    cross = torch.zeros(d, w.shape[0], dtype=torch.float64, device=w.device)
    energy = torch.zeros(1, dtype=torch.float64, device=w.device)  # ‖Y‖²
    rows, read, limit, mismatch = 0, 0, None, 0.0
    enough = max(ROWS_ENOUGH, ROWS_PER_INPUT * d)  # the sums cost d² per row: a 3×3×512 conv has 4,608 inputs
    with torch.no_grad():
        for x, _ in batches():
            if limit is not None and read >= limit:
                break
            x = to_device(x, device)
            try:
                y_raw = _capture(original, m0, x, "out")
                xin = _capture(masked, m, x, "in")
            except LookupError:  # not called on this batch (data-dependent control flow): nothing to add
                continue
            y = channel_rows(m0, y_raw)
            count = y.shape[0]
            if limit is None:  # the first K batches of the global order, K from the first batch's rows: under
                # torchrun this rank's share of them (batch b is on rank b % world), so any world reads the same
                per_batch = min(count, rows_per_batch)
                limit = len(range(dist.rank(), -(-enough // per_batch), dist.world()))
            if read >= limit:
                break
            read += 1
            # the same positions in every batch (the layer's seed, restarted per batch): any order of batches, any world
            index = (torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:rows_per_batch]
                     if count > rows_per_batch else torch.arange(count)).to(y.device)
            try:
                a = _patches(m, xin, index, tuple(y_raw.shape[2:]) if y_raw.dim() == 4 else ())[:, keep].double()
            except _Mismatch:
                mismatch = 1.0
                break
            if has_bias:
                a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
            t = y[index].double()
            gram += a.t() @ a
            cross += a.t() @ t
            energy += (t * t).sum()
            rows += len(a)
    dist.all_reduce_sum([gram, cross, energy])  # every rank fits the same weights
    if dist.sum_counts(mismatch)[0]:  # every rank decides alike (and reached both collectives)
        report.skipped[name] = "its input, padded as its forward pads it, does not give its output size"
        return False
    report.rows = max(report.rows, int(dist.sum_counts(rows)[0]))

    def err(wt: torch.Tensor) -> float:  # ‖Y − X'·W‖² from the sums
        return float(energy - 2 * (wt * cross).sum() + (wt * (gram @ wt)).sum())

    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    try:
        fit = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype, device=gram.device), cross + lam * current)
    except RuntimeError:
        report.skipped[name] = "its least-squares system is singular"
        return False
    before, after = err(current), err(fit)
    if not torch.isfinite(fit).all() or not after < before:
        report.skipped[name] = "the fit did not lower its residual"
        return False
    # rows (weights and bias) back to their norm before the fit (see the module's docstring)
    c = current.norm(dim=0) / fit.norm(dim=0).clamp_min(1e-30)
    c = torch.where(torch.isfinite(c) & (c > 0), c, torch.ones_like(c))
    with torch.no_grad():
        flat = w.flatten(1).clone()
        flat[:, keep] = fit[:d - int(has_bias)].t().to(w.dtype)
        m.weight.copy_(flat.view_as(w))
        if has_bias:
            m.bias.copy_(fit[-1].to(m.bias.dtype))
    rescale_rows(m, masked.get_submodule(bn_name), c)
    total = float(energy) or 1.0
    report.residual_before += before / total
    report.residual_after += after / total
    return True
