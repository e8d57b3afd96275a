"""Submodules the engine cannot see through are kept whole (run as they are, their channels frozen) so the
rest of the model still prunes exactly; forwards that cache state (detection heads) are traced and
exported without leaving that cache behind."""
import copy

import pytest
import torch
from test_graph import X, prune
from torch import nn

from explainfix_cli.channels.graph import build_graph
from explainfix_cli.core.errors import CannotProcess, UnsupportedOp
from explainfix_cli.core.model import attributes_kept
from explainfix_cli.deploy.onnx import export_onnx


class Odd(nn.Module):  # an op the engine does not know, inside a submodule
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.cumsum(self.c(x), 1)


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.odd = Odd()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.bn(self.a(x))))
        return self.head(self.odd(torch.relu(y)))


def test_unknown_op_in_a_submodule_keeps_that_submodule_whole():
    m = Body()
    r = prune(m, X, zero=[(m.a, [1, 5])])
    assert list(r.opaque) == ["odd"] and "torch.cumsum" in r.opaque["odd"] and "frozen" in r.opaque["odd"]
    assert (m.a.out_channels, m.bn.num_features, m.b.in_channels) == (6, 6, 6)  # removed before it
    assert m.b.out_channels == 8 and m.odd.c.in_channels == 8  # what enters the kept-whole module stays


def test_unknown_op_in_the_models_own_forward_is_still_refused():
    class Top(Body):
        def forward(self, x):
            return torch.cumsum(self.head(self.b(self.a(x))), 1)

    with pytest.raises(UnsupportedOp, match=r"torch.cumsum.*<top>"):
        build_graph(Top().eval(), X[:1])


class CachingHead(nn.Module):
    """As ultralytics' Detect: anchors are computed on the first call (or a new input size) and cached
    in plain attributes; later calls reuse them."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(8, 4, 1)
        self.shape = None
        self.anchors = torch.empty(0)

    def forward(self, x):
        y = self.c(x)
        if self.shape != x.shape:  # the whole BCHW shape, batch included
            self.anchors = torch.arange(x.shape[2] * x.shape[3], dtype=x.dtype).view(1, 1, x.shape[2], x.shape[3])
            self.shape = x.shape
        return (y + self.anchors.type_as(y)) * y.new_full((1,), 0.5)


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = CachingHead()

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.a(x))))


def test_a_caching_head_is_analysed_and_left_as_it_was():
    m = Detector().eval()
    gm, g = build_graph(m, X[:1])
    assert m.head.shape == (2, 8, 8, 8) and type(m.head.anchors) is torch.Tensor  # a real cache (as after a call), no proxy
    assert not gm.meta["explainfix_traced"].opaque  # type_as and new_full are understood
    m.bn.bias.data[[2, 6]] = -5.0  # dead after the ReLU: exact removal
    r = prune(m, X, zero=[(m.a, [2, 6])])
    assert m.a.out_channels == 6 and m.head.c.in_channels == 6 and not r.opaque
    m(X)  # the user's own call fills the cache; a new trace (the guard check after surgery) still agrees
    build_graph(m, X[:1])


def test_export_keeps_the_batch_dynamic_despite_a_shape_cache(tmp_path):
    m = Detector().eval()
    m(X[:2])  # a cache from an earlier call: the export compares it with the batch and fixes it
    res = export_onnx(m, X[:2], tmp_path / "m.onnx")
    assert res.dynamic_batch and res.exporter == "dynamo"
    assert any("cached shape" in w and "batches 2 and 3" in w for w in res.warnings)  # retried on 3, checked
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: X.numpy()})[0]  # batch 3, not the export's 2
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), m(X), atol=1e-5)


def test_a_forward_that_branches_on_the_batch_size_is_not_exported_dynamic(tmp_path):
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.c(x)
            return y * 2 if x.shape[0] == 2 else y  # a traced export would bake the batch-2 branch in

    with pytest.raises(CannotProcess, match="batch axis of input is fixed at 2"):
        export_onnx(Branch().eval(), X[:2], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_attributes_kept_restores_plain_attributes_only():
    m = CachingHead()
    w = m.c.weight
    with attributes_kept(m):
        m(torch.randn(1, 8, 4, 4))
        m.extra = 1
        assert m.shape is not None
    assert m.shape is None and not hasattr(m, "extra") and m.c.weight is w
    copy.deepcopy(m)


def test_an_unknown_layer_is_kept_whole_by_name():
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv1d(8, 4, 3)

        def forward(self, x):
            return self.c(self.b(torch.relu(self.a(x))).mean(3))

    m = WithConv1d()
    r = prune(m, X, zero=[(m.a, [1, 2])])
    assert r.opaque == {"c": "Conv1d: not supported by the channel-dependency engine; run as it is, channels in and out frozen"}
    assert m.a.out_channels == 6 and m.c.in_channels == 8
