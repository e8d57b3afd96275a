"""DCT basis, GHaar / DCT-steered filters and fix_spatial_conv2d (real torch, no mocks)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from explainfix_cli.core.errors import BadInput
from explainfix_cli.explain.kernels import FIX_METHODS, dct_basis_1d, dct_basis_nd, dct_steered_2d, fix_spatial_conv2d, ghaar2d, ghaar4_2d


def np_dct(n: int, basis: str = "DCT-II") -> np.ndarray:
    """Textbook orthonormal DCT matrices (rows = basis vectors), written independently."""
    k = np.arange(n).reshape(-1, 1)
    x = np.arange(n).reshape(1, -1)
    if basis == "DCT-II":
        m = np.sqrt(2 / n) * np.cos(np.pi * k * (2 * x + 1) / (2 * n))
        m[0] = 1 / np.sqrt(n)
        return m
    return np.sqrt(2 / n) * np.cos(np.pi * (2 * k + 1) * (2 * x + 1) / (4 * n))


def test_dct_basis_3x3_shape():
    assert dct_basis_nd((3, 3)).shape == (9, 3, 3)
    assert dct_basis_nd(4).shape == (4, 4)


@pytest.mark.parametrize("basis", ["DCT-II", "DCT-IV"])
@pytest.mark.parametrize("shape", [(3, 3), (5, 5), (7, 7), (3, 5), (1, 3), (6,), (2, 3, 4)])
def test_dct_basis_orthonormal(shape, basis):
    B = dct_basis_nd(shape, basis)
    n = math.prod(shape)
    assert B.shape == (n, *shape)
    M = B.reshape(n, n)
    torch.testing.assert_close(M @ M.T, torch.eye(n, dtype=M.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(M.T @ M, torch.eye(n, dtype=M.dtype), atol=1e-12, rtol=0)


@pytest.mark.parametrize("basis", ["DCT-II", "DCT-IV"])
def test_dct_1d_matches_textbook_formula(basis):
    for n in (1, 2, 3, 5, 8):
        np.testing.assert_allclose(dct_basis_1d(n, basis).numpy(), np_dct(n, basis), atol=1e-12)


def test_dct_basis_product_order_and_dc():
    H, W = 3, 4
    B = dct_basis_nd((H, W)).numpy()
    u, v = np_dct(H), np_dct(W)
    for j, (a, b) in enumerate(itertools.product(range(H), range(W))):
        np.testing.assert_allclose(B[j], np.outer(u[a], v[b]), atol=1e-12)
    # DCT-II: filter 0 is constant, every other filter sums to 0
    np.testing.assert_allclose(B[0], np.full((H, W), 1 / np.sqrt(H * W)), atol=1e-12)
    np.testing.assert_allclose(B[1:].sum(axis=(1, 2)), 0, atol=1e-12)
    B3 = dct_basis_nd((2, 3, 2)).numpy()
    w = np_dct(2)
    j = 1 * 6 + 2 * 2 + 1  # product index of (1, 2, 1)
    np.testing.assert_allclose(B3[j], np.einsum("a,b,c->abc", w[1], np_dct(3)[2], w[1]), atol=1e-12)


def test_unknown_basis_is_bad_input():
    with pytest.raises(BadInput):
        dct_basis_nd((3, 3), basis="DCT-I")


@pytest.mark.parametrize("M", [3, 4, 7, (3, 5)])
@pytest.mark.parametrize("f", [1.0, 3.0])
def test_ghaar_zero_mean_unit_norm(M, f):
    for hvd in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.3, -0.7, 0.2)]:
        g = ghaar2d(M, *hvd, f=f)
        H, W = (M, M) if isinstance(M, int) else M
        assert g.shape == (H, W)
        assert abs(float(g.sum())) < 1e-9
        assert float((g**2).sum()) == pytest.approx(1.0)


def test_ghaar_orientation():
    h = ghaar2d(5, 1, 0, 0)
    v = ghaar2d(5, 0, 1, 0)
    d = ghaar2d(5, 0, 0, 1)
    # horizontal: every row constant, top row positive, bottom row negative (horizontal edge detector)
    assert torch.allclose(h, h[:, :1].expand_as(h))
    assert h[0, 0] > 0 > h[-1, 0]
    torch.testing.assert_close(v, h.T)
    # diagonal: symmetric, and flipping either axis negates it
    torch.testing.assert_close(d, d.T)
    torch.testing.assert_close(d.flip(0), -d)
    torch.testing.assert_close(d.flip(1), -d)
    expected = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]]) / np.sqrt(6)
    np.testing.assert_allclose(ghaar2d(3, 1, 0, 0).numpy(), expected, atol=1e-12)


def test_ghaar_approximation_and_no_norm():
    g = ghaar2d(4, 0, 0, 0, a=1.0)
    assert torch.allclose(g, torch.full((4, 4), 0.25, dtype=g.dtype))  # constant, unit norm
    raw = ghaar2d(3, 2.0, 0, 0, norm=False)
    np.testing.assert_allclose(raw.numpy()[:, 0], [2.0, 0.0, -2.0], atol=1e-12)
    assert torch.equal(ghaar2d(3, 0, 0, 0), torch.zeros(3, 3, dtype=torch.float64))  # no NaN


def test_ghaar4_components():
    N, M = 4, 5
    u, w = np_dct(N), np_dct(M)
    a, h, v, d = 0.5, -1.0, 2.0, 0.25
    got = ghaar4_2d(N, M, a, h, v, d).numpy()
    want = a * np.outer(u[0], w[0]) + h * np.outer(u[1], w[0]) + v * np.outer(u[0], w[1]) + d * np.outer(u[1], w[1])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.sum(got**2) == pytest.approx(a * a + h * h + v * v + d * d)
    assert abs(ghaar4_2d(3, 3, 0, 1, 1, 1).sum()) < 1e-12  # zero mean without the approximation
    hor = ghaar4_2d(3, 3, 0, 1, 0, 0)
    assert torch.allclose(hor, hor[:, :1].expand_as(hor))  # horizontal: rows constant


def test_dct_steered():
    B = dct_basis_nd((3, 3))
    torch.testing.assert_close(dct_steered_2d(3, 3, [1.0], [4]), B[4])
    w = torch.tensor([0.5, -2.0, 1.5])
    idx = [1, 3, 8]
    s = dct_steered_2d(3, 3, w, idx)
    torch.testing.assert_close(s, 0.5 * B[1] - 2.0 * B[3] + 1.5 * B[8])
    assert float((s**2).sum()) == pytest.approx(float((w**2).sum()))  # orthonormal basis
    assert abs(float(s.sum())) < 1e-12  # index 0 (DC) not used -> zero mean
    sq = dct_steered_2d(3, 3, w, idx, p=[2, 2, 1])
    torch.testing.assert_close(sq, 0.25 * B[1] + 4.0 * B[3] + 1.5 * B[8])
    assert dct_steered_2d(2, 3, [1.0], [5]).shape == (2, 3)
    with pytest.raises(BadInput):
        dct_steered_2d(3, 3, [1.0, 2.0], [0])
    with pytest.raises(BadInput):
        dct_steered_2d(3, 3, [1.0], [9])


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, (3, 5), padding=(1, 2), bias=False)
        self.dw = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.pw = nn.Conv2d(4, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        x = self.pw(self.dw(self.b(self.a(x)).relu()))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", FIX_METHODS)
def test_fix_spatial_conv2d_freezes_and_runs(method):
    torch.manual_seed(0)
    m = Small()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    names = fix_spatial_conv2d(m, method, seed=3)
    assert names == ["a", "b", "dw"]
    for conv in (m.a, m.b, m.dw):
        assert all(not p.requires_grad for p in conv.parameters())
        assert torch.isfinite(conv.weight).all()
    assert m.pw.weight.requires_grad and torch.equal(m.pw.weight, before["pw.weight"])
    changed = not torch.equal(m.a.weight, before["a.weight"])
    assert changed == (method != "unchanged")
    out = m(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 2)
    out.sum().backward()
    assert m.pw.weight.grad is not None and m.a.weight.grad is None
    # deterministic for one seed, different for another
    m2, m3 = Small(), Small()
    fix_spatial_conv2d(m2, method, seed=3)
    fix_spatial_conv2d(m3, method, seed=4)
    if method != "unchanged":
        assert torch.equal(m2.b.weight, m.b.weight)
        assert not torch.equal(m3.b.weight, m.b.weight)


def test_fixed_filter_properties():
    m = Small()
    fix_spatial_conv2d(m, "dct", seed=0)
    B = dct_basis_nd((3, 5)).float().reshape(15, -1)
    F = m.b.weight.reshape(-1, 15)
    assert torch.allclose((F @ B.T).abs().max(dim=1).values, torch.ones(F.shape[0]), atol=1e-5)  # each is one basis filter
    fix_spatial_conv2d(m, "haar", seed=0)
    torch.testing.assert_close(m.a.weight.pow(2).sum(dim=(2, 3)), torch.ones(4, 3))
    fix_spatial_conv2d(m, "ghaar4", seed=0)
    coef = (m.dw.weight.reshape(-1, 25) @ dct_basis_nd((5, 5)).float().reshape(25, -1).T).abs()
    low = [0, 1, 5, 6]  # (0,0), (0,1), (1,0), (1,1)
    assert coef[:, [j for j in range(25) if j not in low]].max() < 1e-5
    fix_spatial_conv2d(m, "dct_steered", seed=0, requires_grad=True)
    assert m.a.weight.requires_grad  # requires_grad argument honoured


def test_fix_unknown_method():
    with pytest.raises(BadInput):
        fix_spatial_conv2d(Small(), "nope")


def test_fix_resnet18_forward():
    torchvision = pytest.importorskip("torchvision")
    m = torchvision.models.resnet18(num_classes=10)
    names = fix_spatial_conv2d(m, "ghaar", seed=0)
    assert names[0] == "conv1" and len(names) == 17 and all("downsample" not in n for n in names)
    assert not m.conv1.weight.requires_grad and not m.layer4[1].conv2.weight.requires_grad
    assert m.fc.weight.requires_grad
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
