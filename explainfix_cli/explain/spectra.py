"""ExplainSteer: which DCT-II frequencies each spatial conv layer uses (ExplainFix, Gaudio et al. 2022).

For a spatial conv with kernels ``F`` (rows, O·I × H·W) and the orthonormal 2-D DCT-II basis ``B``
(rows, product order ``i·W + j``)::

    e^d = wᵀ |F Bᵀ|                                  one value per basis filter (length H·W)
    e^1 = [Σ_j  e^d_(i,j)^(1/d)  for each row-index i] ++ [Σ_i … for each column-index j]  (length H+W)
    e^0 = e^1[:H] + e^1[H:]                          square kernels only, else None (length H)

with d = 2 and ``w`` the per-kernel weight: ``1/(O·I)`` without saliency; with saliency
``Σ_hw |∂C/∂W|`` from the shared gradient loop (``saliency.spatial_grad_scores``). As in the
reference, with saliency e^d sums over batches (= one e^d of the summed weights) while e^1 and e^0 are
the sums of each batch's own back-projection (identical for one batch). e^d is then reordered from low
to high frequency by :func:`diagonal_order`; e^1/e^0 are indexed by 1-D frequency, already low→high.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core import dist
from ..core.errors import BadInput
from ..core.gradients import default_grad_cost, spatial_grad_scores
from ..core.progress import Progress
from ..core.model import iter_spatial_convs
from .kernels import dct_basis_nd

BANDS = ("low", "mid", "high")


def diagonal_order(shape: Sequence[int], edges_first: bool = True) -> list[tuple[int, ...]]:
    """Basis indices from low to high frequency: anti-diagonals ``i + j = s`` for s = 0, 1, …

    Within one anti-diagonal, entries farther from the line's midpoint come first (``edges_first``; for
    square kernels this equals the reference's ``dravel``), ties in raster order. Non-2-D shapes are
    ordered by the index sum only.

    >>> diagonal_order((3, 3))
    [(0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
    """
    shape = tuple(int(s) for s in shape)
    idx = list(itertools.product(*(range(n) for n in shape)))
    if len(shape) != 2 or not edges_first:
        return sorted(idx, key=sum)  # stable: raster order within a line
    H, W = shape

    def key(ij):
        s = ij[0] + ij[1]
        mid = (max(0, s - W + 1) + min(s, H - 1)) / 2  # midpoint row of anti-diagonal s
        return s, -abs(ij[0] - mid)

    return sorted(idx, key=key)


def _flat(order: Sequence[tuple[int, ...]], shape: Sequence[int]) -> torch.Tensor:
    strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
    return torch.tensor([sum(i * s for i, s in zip(t, strides)) for t in order], dtype=torch.long)


def backproject(ed_raster: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(e^1, e^0) from e^d in raster (product) order: each ``e^d_j^(1/d)`` is added to the 1-D index of j
    in every dimension; e^0 sums the per-dimension parts when all sides are equal (else None)."""
    d = len(shape)
    r = ed_raster.reshape(*shape) ** (1 / d)
    parts = [r.sum(dim=tuple(a for a in range(d) if a != k)) if d > 1 else r for k in range(d)]
    e1 = torch.cat(parts)
    e0 = torch.stack(parts).sum(0) if all(n == shape[0] for n in shape) else None
    return e1, e0


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _abs_coefficients(weight: torch.Tensor) -> torch.Tensor:
    """``|F Bᵀ|`` (O·I × H·W) for a conv weight."""
    O, I, H, W = weight.shape
    dt = _work_dtype(weight.device)
    B = dct_basis_nd((H, W)).reshape(H * W, H * W).to(device=weight.device, dtype=dt)
    return (weight.detach().reshape(O * I, H * W).to(dt) @ B.T).abs()


def get_spectra(F: torch.Tensor, w: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(e^d low→high, e^1, e^0) for kernels ``F`` (N × prod(shape), one per row) and weights ``w`` (N,).

    >>> ed, e1, e0 = get_spectra(torch.eye(9)[:1], torch.ones(1), (3, 3))  # a single delta kernel
    """
    shape = tuple(shape)
    dt = _work_dtype(F.device)
    B = dct_basis_nd(shape).reshape(math.prod(shape), -1).to(device=F.device, dtype=dt)
    ed = w.reshape(1, -1).to(F.device, dt) @ (F.to(dt) @ B.T).abs()
    ed = ed.reshape(-1)
    e1, e0 = backproject(ed, shape)
    return ed[_flat(diagonal_order(shape), shape).to(ed.device)], e1, e0


@dataclass
class LayerSpectrum:
    """ExplainSteer spectra of one spatial conv. ``ed[k]`` belongs to basis filter ``order[k]`` = (i, j);
    ``e1`` = row-frequency part (length H) ++ column-frequency part (length W); ``e0`` None unless H == W."""

    name: str
    kernel_shape: tuple[int, int]
    ed: torch.Tensor
    e1: torch.Tensor
    e0: torch.Tensor | None
    order: list[tuple[int, int]]


@dataclass
class ExplainSteerResult:
    """Per-layer spectra in ``named_modules`` order; iterates as ``(e_d, e_1, e_0)`` like the reference.

    >>> for ed, e1, e0 in explainsteer_layerwise_without_saliency(model): ...
    """

    layers: list[LayerSpectrum]
    saliency: bool = False
    num_batches: int = 0

    ed = property(lambda self: [s.ed for s in self.layers])
    e1 = property(lambda self: [s.e1 for s in self.layers])
    e0 = property(lambda self: [s.e0 for s in self.layers])
    names = property(lambda self: [s.name for s in self.layers])
    kernel_shapes = property(lambda self: [s.kernel_shape for s in self.layers])

    def __iter__(self):
        return iter([(s.ed, s.e1, s.e0) for s in self.layers])

    def __len__(self) -> int:
        return len(self.layers)


def _layer(name: str, shape: tuple[int, int], ed_raster: torch.Tensor, e1: torch.Tensor, e0) -> LayerSpectrum:
    order = diagonal_order(shape)
    ed = ed_raster[_flat(order, shape).to(ed_raster.device)]
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return LayerSpectrum(name, shape, cpu(ed), cpu(e1), cpu(e0), order)


def explainsteer_layerwise_without_saliency(model: nn.Module) -> ExplainSteerResult:
    """Spectra of every spatial conv with uniform weights ``1/(O·I)`` (needs no data)."""
    layers = []
    for name, conv in iter_spatial_convs(model):
        O, I, H, W = conv.weight.shape
        A = _abs_coefficients(conv.weight)
        ed = A.mean(dim=0)  # == (1/(O·I))ᵀ |F Bᵀ|
        layers.append(_layer(name, (H, W), ed, *backproject(ed, (H, W))))
    return ExplainSteerResult(layers, saliency=False)


class _PerBatchSpectra:
    """score_fn for ``spatial_grad_scores``: returns ``Σ_hw |∂C/∂W|`` and, on the side, adds each batch's
    back-projected e^1/e^0 (the reference sums those per batch)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.index: dict[int, list[int]] = {}  # a weight shared by several convs maps to all of them
        self.calls: dict[int, int] = {}
        self.coef: dict[int, torch.Tensor] = {}
        self.e1: dict[int, torch.Tensor] = {}
        self.e0: dict[int, torch.Tensor | None] = {}

    def __call__(self, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if id(w) not in self.index:  # built lazily: the loop moves the model first
            self.index = {}
            for k, (_, m) in enumerate(iter_spatial_convs(self.model)):
                self.index.setdefault(id(m.weight), []).append(k)
        ks = self.index[id(w)]
        n = self.calls.get(id(w), 0)
        self.calls[id(w)] = n + 1
        k = ks[n % len(ks)]  # the loop calls once per conv per batch, in layer order
        wb = g.abs().sum(dim=(2, 3))
        if k not in self.coef:
            self.coef[k] = _abs_coefficients(w)
        A = self.coef[k]
        e1, e0 = backproject(wb.reshape(1, -1).to(A.dtype) @ A, tuple(w.shape[2:]))
        self.e1[k] = e1 if k not in self.e1 else self.e1[k] + e1
        self.e0[k] = e0 if k not in self.e0 or e0 is None else self.e0[k] + e0
        return wb


def explainsteer_layerwise_with_saliency(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    num_minibatches: float = float("inf"),
    grad_cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_grad_cost,
    target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> ExplainSteerResult:
    """Saliency-weighted spectra: ``w = Σ_batches Σ_hw |∂C/∂W|`` with ``C = grad_cost_fn(ŷ/ŷ, y)``.

    ``loader`` yields (x, y, …); ``target_fn`` maps (ŷ, y) to the target (e.g. ``saliency.onehot_targets``
    for integer labels). The model is moved to ``device`` and left in eval mode. Raises BadInput when the
    loader yields no batch.

    >>> res = explainsteer_layerwise_with_saliency(model, loader, "cpu", num_minibatches=4)
    """
    batches = 0

    def count(stage: str, done: int, total: int | None) -> None:
        nonlocal batches
        batches = done
        if progress is not None:
            progress(stage, done, total)

    side = _PerBatchSpectra(model)
    weights = spatial_grad_scores(model, loader, device, score_fn=side, num_minibatches=num_minibatches, grad_cost_fn=grad_cost_fn,
                                  target_fn=target_fn, progress=count)
    if dist.active():  # under torchrun each rank saw its shard of the batches: sum everything per layer
        batches = int(dist.sum_counts(batches)[0])
        dist.all_reduce_sum(weights)
        for k, (_, conv) in enumerate(iter_spatial_convs(model)):
            A = side.coef.get(k, _abs_coefficients(conv.weight))
            e1_zero, e0_zero = backproject(torch.zeros(A.shape[1], dtype=A.dtype), tuple(conv.weight.shape[2:]))
            side.e1[k] = side.e1.get(k, e1_zero).clone()
            parts = [side.e1[k]]
            if e0_zero is not None:
                side.e0[k] = (side.e0.get(k) if side.e0.get(k) is not None else e0_zero).clone()
                parts.append(side.e0[k])
            dist.all_reduce_sum(parts)
    if batches == 0 and weights:
        raise BadInput("no calibration batches for saliency", hint="give a data set with at least one batch")
    layers = []
    for k, ((name, conv), w) in enumerate(zip(iter_spatial_convs(model), weights)):
        H, W = conv.weight.shape[2:]
        A = side.coef.get(k)
        if A is None:  # this layer never received a gradient
            A = _abs_coefficients(conv.weight)
        ed = w.reshape(1, -1).to(A.dtype) @ A
        ed = ed.reshape(-1)
        e1_zero, e0_zero = backproject(torch.zeros_like(ed), (H, W))
        layers.append(_layer(name, (H, W), ed, side.e1.get(k, e1_zero), side.e0.get(k, e0_zero)))
    return ExplainSteerResult(layers, saliency=True, num_batches=batches)


def _band_of(k: int, n: int) -> int:
    return min(2, (3 * k) // n)


def energy_shares(spectrum: torch.Tensor | Sequence[torch.Tensor | None] | None) -> Any:
    """Low/mid/high share of a low→high ordered spectrum (e^d after reordering, or e^0).

    Bands are thirds of the *ordered index*: entry k of n goes to band ``min(2, 3k // n)`` (3×3 e^d:
    indices 0–2 low, 3–5 mid, 6–8 high). Shares sum to 1; an all-zero spectrum gives zeros. A list gives
    one dict per entry (None stays None).

    >>> energy_shares(torch.tensor([2.0, 1, 1]))
    {'low': 0.5, 'mid': 0.25, 'high': 0.25}
    """
    if spectrum is None:
        return None
    if not isinstance(spectrum, torch.Tensor):
        return [energy_shares(s) for s in spectrum]
    s = spectrum.detach().double().reshape(-1).cpu()
    n, total = s.numel(), float(s.sum())
    sums = [0.0, 0.0, 0.0]
    for k in range(n):
        sums[_band_of(k, n)] += float(s[k])
    if not (total > 0 and math.isfinite(total)):
        return dict.fromkeys(BANDS, 0.0)
    return {b: v / total for b, v in zip(BANDS, sums)}


def _floats(t: torch.Tensor | None) -> list[float | None] | None:
    if t is None:
        return None
    return [v if math.isfinite(v) else None for v in t.detach().double().reshape(-1).tolist()]


@dataclass
class ExplainReport:
    """Both spectra of one model: without saliency always, with saliency when data was given."""

    without_saliency: ExplainSteerResult
    with_saliency: ExplainSteerResult | None = None
    notes: list[str] = field(default_factory=list)

    names = property(lambda self: self.without_saliency.names)
    kernel_shapes = property(lambda self: self.without_saliency.kernel_shapes)

    def to_json(self) -> dict:
        """Plain dict: per layer its name, kernel shape, basis order and e_d/e_1/e_0 + shares of e_d."""

        def part(s: LayerSpectrum | None):
            if s is None:
                return None
            return {"e_d": _floats(s.ed), "e_1": _floats(s.e1), "e_0": _floats(s.e0),
                    "shares": energy_shares(s.e0 if s.e0 is not None else s.ed)}

        sal = self.with_saliency
        layers = []
        for k, s in enumerate(self.without_saliency.layers):
            layers.append({
                "name": s.name,
                "kernel_shape": list(s.kernel_shape),
                "order": [list(ij) for ij in s.order],
                "without_saliency": part(s),
                "with_saliency": part(sal.layers[k]) if sal is not None else None,
            })
        return {
            "saliency": sal is not None,
            "num_batches": sal.num_batches if sal is not None else 0,
            "shares_definition": "share of e_0 (1-D frequency, low->high; e_d when the kernel is not square) in index "
                                 "thirds: entry k of n -> band min(2, 3k//n); a 3x3 kernel's e_0 is exactly low/mid/high",
            "layers": layers,
            "notes": list(self.notes),
        }


def explain_model(
    model: nn.Module,
    batches: Iterable | None = None,
    device: torch.device | str = "cpu",
    num_minibatches: float = math.inf,
    target_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Progress | None = None,
    grad_cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_grad_cost,
) -> ExplainReport:
    """ExplainSteer for the CLI: spectra without saliency, plus with saliency when ``batches`` is given.

    >>> report = explain_model(model, loader, target_fn=saliency.onehot_targets); report.to_json()
    """
    report = ExplainReport(explainsteer_layerwise_without_saliency(model))
    if not report.without_saliency.layers:
        report.notes.append("model has no spatial Conv2d (all kernels 1x1 or no convs)")
    if batches is not None:
        report.with_saliency = explainsteer_layerwise_with_saliency(
            model, batches, device, num_minibatches, grad_cost_fn, target_fn, progress
        )
    return report
