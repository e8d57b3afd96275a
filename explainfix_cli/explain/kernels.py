"""Fixed spatial filters: the DCT basis, GHaar wavelets, DCT-steered filters, and freezing a model.

Semantics follow the ExplainFix reference (adgaudio/ExplainFix): 1-D DCT vectors are
``s_k cos(π/N (k+b)(n+a))`` (DCT-II: a=½, b=0; DCT-IV: a=b=½; orthonormal scales), N-D basis filters
are outer products of 1-D vectors enumerated in ``itertools.product`` order (index ``i·W + j`` in 2-D),
and GHaar filters steer horizontal/vertical/diagonal cosine outer products on ``linspace(0, π, M)``.
All functions are pure; the random ones take a ``torch.Generator`` (or a seed).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import BadInput
from ..core.model import iter_spatial_convs

_F64 = torch.float64
_DCT_AB = {"DCT-II": (0.5, 0.0), "DCT-IV": (0.5, 0.5)}


def dct_basis_1d(n: int, basis: str = "DCT-II") -> torch.Tensor:
    """(n, n) orthonormal 1-D DCT basis, one vector per row, row k has frequency k.

    >>> dct_basis_1d(2)  # rows [1, 1]/√2 and [1, -1]/√2 (up to rounding)
    """
    if basis not in _DCT_AB:
        raise BadInput(f"unknown DCT basis {basis!r}", hint="use 'DCT-II' or 'DCT-IV'")
    if n < 1:
        raise BadInput(f"a DCT basis needs a positive length, got {n}")
    a, b = _DCT_AB[basis]
    k = torch.arange(n, dtype=_F64).reshape(-1, 1) + b
    x = torch.arange(n, dtype=_F64).reshape(1, -1) + a
    scale = torch.full((n, 1), math.sqrt(2 / n), dtype=_F64)
    if basis == "DCT-II":
        scale[0] = 1 / math.sqrt(n)
    return scale * torch.cos(math.pi / n * k * x)


def dct_basis_nd(shape: int | Sequence[int], basis: str = "DCT-II") -> torch.Tensor:
    """Complete orthonormal N-D DCT basis, float64, of shape ``(prod(shape), *shape)``.

    Filter ``j`` is the outer product of 1-D vectors ``(i0, i1, …)`` = the j-th element of
    ``itertools.product(range(shape[0]), range(shape[1]), …)``; so in 2-D, ``j = i·W + j_col``.

    >>> dct_basis_nd((3, 3)).shape
    torch.Size([9, 3, 3])
    """
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if not shape:
        raise BadInput("dct_basis_nd needs at least one dimension")
    out = torch.ones((1,), dtype=_F64)  # (K, *spatial) with K = 1, no spatial dims yet
    for n in shape:
        vecs = dct_basis_1d(n, basis)  # (n, n)
        k, sp = out.shape[0], out.shape[1:]
        left = out.reshape(k, 1, *sp, 1)
        right = vecs.reshape(1, n, *([1] * len(sp)), n)
        out = (left * right).reshape(k * n, *sp, n)
    return out


def _pair(m: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(m, int):
        return m, m
    h, w = (int(v) for v in m)
    return h, w


def _ghaar_batch(shape, hvda: torch.Tensor, f: torch.Tensor, norm: bool) -> torch.Tensor:
    """(n, H, W) GHaar filters for n rows of weights (h, v, d, a) and n frequencies."""
    H, W = shape
    cr = torch.cos(f.reshape(-1, 1) * torch.linspace(0, math.pi, H, dtype=_F64))  # (n, H)
    cc = torch.cos(f.reshape(-1, 1) * torch.linspace(0, math.pi, W, dtype=_F64))  # (n, W)
    h, v, d, a = (hvda[:, i].reshape(-1, 1, 1) for i in range(4))
    out = (
        h * cr[:, :, None]  # varies down the rows, constant along each row: horizontal stripes
        + v * cc[:, None, :]  # varies across columns: vertical stripes
        + d * cr[:, :, None] * cc[:, None, :]
        + a
    )
    if norm:
        l2 = out.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
        out = out / torch.where(l2 > 0, l2, torch.ones_like(l2))
    return out


def ghaar2d(M: int | Sequence[int], h: float, v: float, d: float, a: float = 0.0, f: float = 1.0,
            norm: bool = True) -> torch.Tensor:
    """Generalized Haar filter: ``h·cos(fx)1ᵀ + v·1cos(fy)ᵀ + d·cos(fx)cos(fy)ᵀ + a·11ᵀ``, x = linspace(0, π, M).

    ``M`` is the side (or an (H, W) pair). h/v/d steer the horizontal-edge, vertical-edge and diagonal
    components, ``a`` the approximation (constant). With ``a=0`` and odd integer ``f`` the filter sums to 0;
    ``norm`` scales it to unit L2 norm (a zero filter stays zero). Returns float64 (M, M).

    >>> ghaar2d(3, 1, 0, 0)  # rows constant: [[1,1,1],[0,0,0],[-1,-1,-1]]/√6
    """
    hvda = torch.stack([torch.as_tensor(x, dtype=_F64) for x in (h, v, d, a)]).reshape(1, 4)
    return _ghaar_batch(_pair(M), hvda, torch.as_tensor(f, dtype=_F64).reshape(1), norm)[0]


def ghaar4_2d(N: int, M: int, a: float, h: float, v: float, d: float) -> torch.Tensor:
    """Steer the four lowest-frequency 2-D DCT-II filters: approximation, horizontal, vertical, diagonal.

    ``a·u0w0ᵀ + h·u1w0ᵀ + v·u0w1ᵀ + d·u1w1ᵀ`` with u (length N) and w (length M) the first two 1-D DCT-II
    vectors. The four components are orthonormal, so the result's L2 norm is ‖(a, h, v, d)‖.

    >>> ghaar4_2d(3, 3, 0, 1, 0, 0).sum()  # zero mean unless a != 0
    """
    u, w = dct_basis_1d(N), dct_basis_1d(M)
    u1 = u[1] if N > 1 else torch.zeros(N, dtype=_F64)
    w1 = w[1] if M > 1 else torch.zeros(M, dtype=_F64)
    return (a * torch.outer(u[0], w[0]) + h * torch.outer(u1, w[0]) + v * torch.outer(u[0], w1)
            + d * torch.outer(u1, w1))


def dct_steered_2d(N: int, M: int, w: Sequence[float] | torch.Tensor, basis_idxs: Sequence[int] | torch.Tensor,
                   p: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_l B[idx_l] · w_l ** p_l`` over chosen 2-D DCT-II filters B (``dct_basis_nd((N, M))``).

    ``basis_idxs`` use the product order (``i·M + j``); ``p`` defaults to 1 (linear steering) and should
    be integers when some w are negative. Returns float64 (N, M).

    >>> dct_steered_2d(3, 3, [1.0], [1])  # == dct_basis_nd((3, 3))[1]
    """
    idx = torch.as_tensor(basis_idxs, dtype=torch.long).reshape(-1)
    w = torch.as_tensor(w, dtype=_F64).reshape(-1)
    if idx.numel() != w.numel():
        raise BadInput(f"{w.numel()} weights for {idx.numel()} basis indices")
    if idx.numel() and (idx.min() < 0 or idx.max() >= N * M):
        raise BadInput(f"basis index out of range [0, {N * M})")
    coef = w if p is None else w ** torch.as_tensor(p, dtype=_F64).reshape(-1)
    return (dct_basis_nd((N, M))[idx] * coef.reshape(-1, 1, 1)).sum(0)


# --------------------------------------------------------------------------- fixing a model's filters

FIX_METHODS = ("ghaar", "haar", "ghaar4", "dct", "dct_steered", "unchanged")


def _fixed_filters(method: str, shape: tuple[int, int, int, int], g: torch.Generator) -> torch.Tensor | None:
    """(O, I, H, W) float64 filters for one conv (None for 'unchanged')."""
    O, I, H, W = shape
    n, hw = O * I, H * W
    if method == "unchanged":
        return None
    if method in ("ghaar", "haar"):
        hvd = torch.rand(n, 3, generator=g, dtype=_F64) * 2 - 1
        hvda = torch.cat([hvd, torch.zeros(n, 1, dtype=_F64)], dim=1)
        if method == "ghaar":  # reference 'ghaarA': all frequency scales, not normalised
            f = torch.rand(n, generator=g, dtype=_F64) * 2 * (max(H, W) - 1)
            out = _ghaar_batch((H, W), hvda, f, norm=False)
        else:  # reference 'haar': frequency range grows with the kernel index, unit norm
            f = torch.rand(n, generator=g, dtype=_F64) * torch.arange(1, n + 1, dtype=_F64)
            out = _ghaar_batch((H, W), hvda, f, norm=True)
        return out.reshape(O, I, H, W)
    B = dct_basis_nd((H, W)).reshape(hw, hw)
    if method == "dct":  # reference 'DCT2': each filter is one basis filter, spread evenly
        if I == 1:
            idx = torch.randperm(n, generator=g).reshape(O, I) % hw
        else:
            idx = torch.rand(O, I, generator=g).argsort(dim=1) % hw
        return B[idx].reshape(O, I, H, W)
    coef = torch.zeros(n, hw, dtype=_F64)
    if method == "ghaar4":  # reference 'GHaar4.s1': steer the 4 lowest-frequency basis filters
        cols = torch.tensor([i * W + j for i in (0, 1) for j in (0, 1) if i < H and j < W])
        coef[:, cols] = torch.randn(n, len(cols), generator=g, dtype=_F64)
    elif method == "dct_steered":  # reference 'GHaarR.ms': random subset (size R per layer) per filter
        r = int(round(2 ** (torch.rand(1, generator=g, dtype=_F64).item() * math.log2(hw))))
        r = min(max(r, 1), hw)
        cols = torch.rand(n, hw, generator=g).argsort(dim=1)[:, :r]
        coef.scatter_(1, cols, torch.randn(n, r, generator=g, dtype=_F64))
    else:
        raise BadInput(f"unknown fixed-filter method {method!r}", hint=f"choose one of {', '.join(FIX_METHODS)}")
    return (coef @ B).reshape(O, I, H, W)


def fix_spatial_conv2d(model: nn.Module, method: str = "ghaar", seed: int = 0,
                       generator: torch.Generator | None = None, requires_grad: bool = False) -> list[str]:
    """Replace every spatial Conv2d's kernels by fixed filters (in place) and freeze the module.

    As in the reference, the whole module (weight and bias) gets ``requires_grad_(requires_grad)``.
    Methods: 'ghaar' (h, v, d ~ U(-1, 1), f ~ U(0, 2(k-1)), unnormalised), 'haar' (f ~ U(0, c+1) for
    kernel c, unit norm), 'ghaar4' (N(0,1)-steered 4 lowest DCT-II filters), 'dct' (each kernel one DCT-II
    basis filter), 'dct_steered' (N(0,1)-steering of R random basis filters, R log-uniform per layer),
    'unchanged' (keep values, only freeze). Deterministic given ``seed`` (or ``generator``).
    Returns the names of the layers changed, in ``named_modules`` order.

    >>> fix_spatial_conv2d(torchvision.models.resnet18(), "dct")[:2]
    ['conv1', 'layer1.0.conv1']
    """
    if method not in FIX_METHODS:
        raise BadInput(f"unknown fixed-filter method {method!r}", hint=f"choose one of {', '.join(FIX_METHODS)}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    names = []
    for name, conv in iter_spatial_convs(model):
        filters = _fixed_filters(method, tuple(conv.weight.shape), generator)
        if filters is not None:
            with torch.no_grad():
                conv.weight.copy_(filters.to(dtype=conv.weight.dtype, device=conv.weight.device))
        conv.requires_grad_(requires_grad)
        names.append(name)
    return names
