"""ExplainSteer spectra, energy shares, JSON and figures (real torch, no mocks)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from explainfix_cli.core.gradients import onehot_targets
from explainfix_cli.core.model import iter_spatial_convs
from explainfix_cli.core.errors import BadInput
from explainfix_cli.explain.spectra import diagonal_order, energy_shares, explain_model, explainsteer_layerwise_with_saliency, explainsteer_layerwise_without_saliency, get_spectra
from explainfix_cli.explain.kernels import dct_basis_nd, fix_spatial_conv2d

ORDER_3x3 = [(0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, 2), (2, 1), (2, 2)]


def np_dct2(H: int, W: int) -> np.ndarray:
    """(H·W, H·W) orthonormal 2-D DCT-II basis, rows in product order, from the textbook formula."""
    def one(n):
        k, x = np.arange(n)[:, None], np.arange(n)[None, :]
        m = np.sqrt(2 / n) * np.cos(np.pi * k * (2 * x + 1) / (2 * n))
        m[0] = 1 / np.sqrt(n)
        return m
    u, v = one(H), one(W)
    return np.stack([np.outer(u[i], v[j]).ravel() for i in range(H) for j in range(W)])


def ref_dravel_order(n: int) -> list[int]:
    """The reference's edges-first diagonal traversal of an n×n matrix (its formula, re-derived)."""
    top = 4 * (n - 1)
    z = 2 * np.mgrid[:n, :n].sum(0)
    z = z * top / 2 - np.fliplr(np.abs(z - top / 2))
    return list(z.ravel().argsort(kind="stable"))


def test_traversal_3x3():
    assert diagonal_order((3, 3)) == ORDER_3x3


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
def test_traversal_matches_reference_dravel(n):
    assert [i * n + j for i, j in diagonal_order((n, n))] == ref_dravel_order(n)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (1, 3), (2, 7)])
def test_traversal_non_square(shape):
    order = diagonal_order(shape)
    H, W = shape
    assert sorted(order) == [(i, j) for i in range(H) for j in range(W)]
    assert order[0] == (0, 0) and order[-1] == (H - 1, W - 1)
    sums = [i + j for i, j in order]
    assert sums == sorted(sums)


class TwoConv(nn.Module):
    def __init__(self, shapes=((3, 3), (5, 5))):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, shapes[0], padding="same", bias=False)
        self.mid = nn.Conv2d(3, 3, 1)
        self.c2 = nn.Conv2d(3, 2, shapes[1], padding="same", bias=False)
        self.fc = nn.Linear(2, 4)

    def forward(self, x):
        x = self.c2(self.mid(self.c1(x)).tanh())
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("shape", [(3, 3), (5, 5), (7, 7), (3, 5)])
def test_single_basis_filter_puts_all_energy_on_its_index(shape):
    H, W = shape
    B = dct_basis_nd(shape)
    m = TwoConv((shape, (3, 3))).double()  # float64 so sqrt in e^1 does not amplify rounding noise
    target = (1, 2) if H > 1 else (0, 2)
    with torch.no_grad():
        m.c1.weight.copy_(B[target[0] * W + target[1]].expand_as(m.c1.weight) * 0.7)
    spec = explainsteer_layerwise_without_saliency(m).layers[0]
    k = spec.order.index(target)
    assert spec.ed.shape == (H * W,)
    assert spec.ed[k] == pytest.approx(0.7, rel=1e-5)
    rest = torch.cat([spec.ed[:k], spec.ed[k + 1:]])
    assert rest.abs().max() < 1e-12
    # e^1 puts sqrt(e^d) on row frequency 1 and column frequency 2
    assert spec.e1.shape == (H + W,)
    assert spec.e1[target[0]] == pytest.approx(math.sqrt(0.7), rel=1e-5)
    assert spec.e1[H + target[1]] == pytest.approx(math.sqrt(0.7), rel=1e-5)
    assert float(spec.e1.sum()) == pytest.approx(2 * math.sqrt(0.7), rel=1e-5)


def test_ed_e1_e0_hand_computed():
    g = torch.Generator().manual_seed(0)
    m = TwoConv(((3, 3), (2, 3)))
    with torch.no_grad():
        m.c1.weight.copy_(torch.randn(m.c1.weight.shape, generator=g))
        m.c2.weight.copy_(torch.randn(m.c2.weight.shape, generator=g))
    res = explainsteer_layerwise_without_saliency(m)
    assert res.names == ["c1", "c2"] and res.kernel_shapes == [(3, 3), (2, 3)]
    # layer c1 by hand
    F = m.c1.weight.detach().double().numpy().reshape(6, 9)
    ed = (np.abs(F @ np_dct2(3, 3).T)).sum(0) / 6
    r = np.sqrt(ed).reshape(3, 3)
    e1 = np.concatenate([r.sum(1), r.sum(0)])
    e0 = r.sum(1) + r.sum(0)
    ordered = [ed[i * 3 + j] for i, j in ORDER_3x3]
    np.testing.assert_allclose(res.ed[0].numpy(), ordered, rtol=1e-6)
    np.testing.assert_allclose(res.e1[0].numpy(), e1, rtol=1e-6)
    np.testing.assert_allclose(res.e0[0].numpy(), e0, rtol=1e-6)
    # non-square layer: e^1 has H+W entries, e^0 is None
    F2 = m.c2.weight.detach().double().numpy().reshape(6, 6)
    ed2 = (np.abs(F2 @ np_dct2(2, 3).T)).sum(0) / 6
    r2 = np.sqrt(ed2).reshape(2, 3)
    np.testing.assert_allclose(res.e1[1].numpy(), np.concatenate([r2.sum(1), r2.sum(0)]), rtol=1e-6)
    assert res.e0[1] is None
    assert sorted(res.ed[1].tolist()) == pytest.approx(sorted(ed2.tolist()), rel=1e-6)
    # iterating gives (e_d, e_1, e_0) per layer; get_spectra agrees with the layer function
    (a, b, c), (d, e, f) = list(res)
    assert torch.equal(a, res.ed[0]) and f is None
    ged, ge1, ge0 = get_spectra(torch.from_numpy(F), torch.full((6,), 1 / 6, dtype=torch.float64), (3, 3))
    np.testing.assert_allclose(ged.numpy(), ordered, rtol=1e-9)
    np.testing.assert_allclose(ge0.numpy(), e0, rtol=1e-9)


def batches_for(model_in: int, n: int, classes: int, size: int = 8, bs: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, model_in, size, size, generator=g), torch.randint(0, classes, (bs,), generator=g))
            for _ in range(n)]


def test_saliency_spectra_match_hand_computed_gradients():
    torch.manual_seed(0)
    m = TwoConv(((3, 3), (3, 3))).eval()
    data = batches_for(2, 3, 4)
    res = explainsteer_layerwise_with_saliency(m, data, "cpu", target_fn=onehot_targets)
    assert res.saliency and res.num_batches == 3
    # independent computation: per batch dC/dW with C = Σ onehot(y)·ŷ (ŷ/ŷ trick leaves grads unchanged)
    weights = [m.c1.weight, m.c2.weight]
    w_tot = [torch.zeros(3, 2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)]
    e1_tot = [np.zeros(6), np.zeros(6)]
    B = np_dct2(3, 3)
    for x, y in data:
        out = m(x)
        C = (nn.functional.one_hot(y, 4) * out).sum()
        grads = torch.autograd.grad(C, weights)
        for k, (w, gr) in enumerate(zip(weights, grads)):
            wb = gr.abs().sum(dim=(2, 3)).double()
            w_tot[k] += wb
            edb = wb.reshape(-1).numpy() @ np.abs(w.detach().double().numpy().reshape(-1, 9) @ B.T)
            r = np.sqrt(edb).reshape(3, 3)
            e1_tot[k] += np.concatenate([r.sum(1), r.sum(0)])
    for k, w in enumerate(weights):
        ed = w_tot[k].reshape(-1).numpy() @ np.abs(w.detach().double().numpy().reshape(-1, 9) @ B.T)
        np.testing.assert_allclose(res.ed[k].numpy(), [ed[i * 3 + j] for i, j in ORDER_3x3], rtol=1e-4)
        np.testing.assert_allclose(res.e1[k].numpy(), e1_tot[k], rtol=1e-4)
        np.testing.assert_allclose(res.e0[k].numpy(), e1_tot[k][:3] + e1_tot[k][3:], rtol=1e-4)
    # num_minibatches limits the loop
    assert explainsteer_layerwise_with_saliency(m, data, "cpu", 1, target_fn=onehot_targets).num_batches == 1


def test_saliency_resnet18_lengths_finite():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    data = [(torch.randn(1, 3, 32, 32), torch.tensor([i])) for i in range(3)]
    ticks = []
    report = explain_model(m, data, target_fn=onehot_targets, progress=lambda *report: ticks.append(report))
    assert ticks == [("saliency", 1, None), ("saliency", 2, None), ("saliency", 3, None)]  # core/progress.py
    names = [n for n, _ in iter_spatial_convs(m)]
    for res in (report.without_saliency, report.with_saliency):
        assert res.names == names and len(res) == 17
        for (ed, e1, e0), shape in zip(res, res.kernel_shapes):
            H, W = shape
            assert ed.shape == (H * W,) and e1.shape == (H + W,) and e0.shape == (H,)
            assert torch.isfinite(ed).all() and torch.isfinite(e1).all() and (ed >= 0).all()
    assert report.with_saliency.kernel_shapes[0] == (7, 7) and report.with_saliency.ed[0].shape == (49,)
    assert float(report.with_saliency.ed[5].sum()) > 0
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["saliency"] is True and doc["num_batches"] == 3 and len(doc["layers"]) == 17
    layer = doc["layers"][1]
    assert layer["name"] == "layer1.0.conv1" and layer["kernel_shape"] == [3, 3]
    assert [tuple(ij) for ij in layer["order"]] == ORDER_3x3
    for part in ("without_saliency", "with_saliency"):
        p = layer[part]
        assert len(p["e_d"]) == 9 and len(p["e_1"]) == 6 and len(p["e_0"]) == 3
        assert sum(p["shares"].values()) == pytest.approx(1.0)


def test_fixed_model_saliency_restores_flags():
    m = TwoConv()
    fix_spatial_conv2d(m, "dct", seed=0)
    res = explainsteer_layerwise_with_saliency(m, batches_for(2, 2, 4), "cpu", target_fn=onehot_targets)
    assert all(float(e.sum()) > 0 for e in res.ed)
    assert not m.c1.weight.requires_grad and not m.c2.weight.requires_grad
    # each DCT-fixed kernel is one basis filter, so without saliency e^d is a histogram of basis use
    base = explainsteer_layerwise_without_saliency(m)
    assert float(base.ed[0].sum()) == pytest.approx(1.0, rel=1e-5)


def test_explain_model_without_data_and_json():
    m = TwoConv(((3, 3), (3, 5)))
    report = explain_model(m)
    assert report.with_saliency is None
    doc = report.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["saliency"] is False and doc["num_batches"] == 0
    assert [lay["name"] for lay in doc["layers"]] == ["c1", "c2"]
    assert doc["layers"][1]["kernel_shape"] == [3, 5] and doc["layers"][1]["without_saliency"]["e_0"] is None
    assert doc["layers"][0]["with_saliency"] is None


def test_empty_loader_and_no_spatial_convs():
    with pytest.raises(BadInput):
        explainsteer_layerwise_with_saliency(TwoConv(), [], "cpu")
    flat = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.LazyLinear(2))
    report = explain_model(nn.Sequential(nn.Conv2d(3, 4, 1)))
    assert len(report.without_saliency) == 0 and report.notes
    assert report.to_json()["layers"] == []
    assert len(explainsteer_layerwise_without_saliency(flat)) == 0


def test_energy_shares():
    s = energy_shares(torch.arange(1.0, 10.0))  # 1..9: thirds are 1+2+3, 4+5+6, 7+8+9
    assert s == pytest.approx({"low": 6 / 45, "mid": 15 / 45, "high": 24 / 45})
    assert energy_shares(torch.tensor([3.0, 1.0, 0.0])) == pytest.approx({"low": 0.75, "mid": 0.25, "high": 0.0})
    assert energy_shares(torch.zeros(9)) == {"low": 0.0, "mid": 0.0, "high": 0.0}
    four = energy_shares(torch.ones(4))  # bands of 4 entries: 0,0,1,2
    assert four == pytest.approx({"low": 0.5, "mid": 0.25, "high": 0.25})
    lst = energy_shares([torch.ones(3), None])
    assert lst[1] is None and lst[0]["mid"] == pytest.approx(1 / 3)


def test_save_spectra_png_and_plot(tmp_path):
    from PIL import Image

    from explainfix_cli.explain.figures import plot_spectrum_ed, save_spectra_png

    m = TwoConv(((3, 3), (5, 5)))
    report = explain_model(m, batches_for(2, 2, 4), target_fn=onehot_targets)
    out = save_spectra_png(report, tmp_path / "sub" / "spectra.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        wide = im.size[0]
    out2 = save_spectra_png(explain_model(m), tmp_path / "plain.png", loglog=True)
    with Image.open(out2) as im:
        assert im.size[0] < wide  # one column without saliency, two with
    fig = plot_spectrum_ed(report.with_saliency.ed)  # ragged 9 and 25: padded
    assert len(fig.axes) >= 3
    heat = fig.axes[0].images[0].get_array()
    assert heat.shape == (25, 2) and heat.mask[9:, 0].all() and not heat.mask[:, 1].any()
    save_spectra_png(explain_model(nn.Sequential(nn.Conv2d(1, 1, 1))), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_shared_weight_between_two_convs():
    m = TwoConv(((3, 3), (3, 3)))
    m.c3 = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    m.c3.weight = m.c1.weight  # tied: both convs are listed, both must get spectra
    res = explainsteer_layerwise_with_saliency(m, batches_for(2, 2, 4), "cpu", target_fn=onehot_targets)
    assert res.names == ["c1", "c2", "c3"]
    torch.testing.assert_close(res.ed[0], res.ed[2])
    torch.testing.assert_close(res.e1[0], res.e1[2])
    assert float(res.e1[2].sum()) > 0
