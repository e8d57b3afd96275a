"""The dependency engine on small hand-built modules: one coupling per test, each pruned end to end with
the self-check, and the recipe edit replayed on a freshly built model (what checkpoint.rebuild does)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explainfix_cli.channels.graph import build_graph
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.core.errors import UnsupportedOp
from explainfix_cli.io.edits import apply_edit
from explainfix_cli.prune.pruner import prune_model


def prune(model, x, zero=(), allow_inexact=False):
    """Zero the given (module, rows) first, prune at 1 %, check and replay the edit on a fresh copy."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        for mod, rows in zero:
            mod.weight[rows] = 0.0
            if getattr(mod, "bias", None) is not None:
                mod.bias[rows] = 0.0
    fresh = copy.deepcopy(model)
    r = prune_model(model, PruneOptions(pct=1, criterion="magnitude", allow_inexact_folds=allow_inexact), example=x[:1], check_inputs=x)
    assert (r.check.passed or allow_inexact) and r.check.pruned_vs_masked_rel <= 1e-4
    apply_edit(fresh, r.edit)
    a, b = fresh.state_dict(), model.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    return r


X = torch.randn(3, 3, 8, 8)


class Cat(nn.Module):  # DenseNet / Inception / fire module
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(9)
        self.c = nn.Conv2d(9, 2, 3)

    def forward(self, x):
        return self.c(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


def test_concat_offsets_into_consumer_and_producers():
    m = Cat()
    r = prune(m, X, zero=[(m.a, [1]), (m.b, [0, 3])])
    assert (m.a.out_channels, m.b.out_channels, m.bn.num_features, m.c.in_channels) == (3, 3, 6, 6)
    assert r.edit["modules"]["c"]["in"] == [1, 4, 7]  # 4 + 0, 4 + 3: offset into the consumer


class Shuffle(nn.Module):  # ShuffleNetV2 unit: chunk, branch, cat, channel shuffle
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.b1, self.b2 = nn.Conv2d(4, 6, 1), nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x1, x2 = self.stem(x).chunk(2, dim=1)
        y = torch.cat([x1, self.b2(torch.relu(self.b1(x2)))], 1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(y)


def test_chunk_and_shuffle_freeze_the_cut_space_but_not_the_branch():
    m = Shuffle()
    prune(m, X, zero=[(m.stem, [0]), (m.b1, [2]), (m.b2, [1])])
    assert m.stem.out_channels == 8 and m.b2.out_channels == 4  # cut by chunk / split by the shuffle view
    assert m.b1.out_channels == 5 and m.b2.in_channels == 5  # the branch's inner space is free


class LiteralView(nn.Module):  # a reshape that names the channel count by a number, as user code often does
    def __init__(self, sized: bool):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 2)
        self.sized = sized

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        y = y.reshape(y.shape[0], 4, -1) if self.sized else y.reshape(y.shape[0], y.shape[1], -1)
        return self.fc(y.mean(-1))


def test_a_view_that_names_the_channel_count_by_a_literal_freezes_that_space():
    # the literal stays 4 after a removal (the model is rebuilt from its unchanged code): b's outputs stay, a's go
    m = LiteralView(sized=True)
    gm, graph = build_graph(m, X)
    (why,) = [k for k in graph.frozen_by if "literal" in k]
    assert why.startswith("a view that names the size of its channel dim by a literal (4 at dim 1)")
    prune(m, X, zero=[(m.a, [5]), (m.b, [0])])
    assert m.a.out_channels == 5 and m.b.out_channels == 4 and m.fc.in_features == 4
    # the same view with the size read from the tensor: free
    m = LiteralView(sized=False)
    prune(m, X, zero=[(m.a, [5]), (m.b, [0])])
    assert m.a.out_channels == 5 and m.b.out_channels == 3 and m.fc.in_features == 3


def test_slicing_maps_indices():
    class Sl(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return self.c(y[:, :2])

    m = Sl()
    prune(m, X, zero=[(m.a, [5]), (m.b, [0])])
    assert m.a.out_channels == 5 and m.b.out_channels == 4  # y is cut by [:, :2]: frozen


class Grouped(nn.Module):  # ResNeXt / RegNet
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.g(torch.relu(self.a(x)))))


def test_grouped_conv_removes_the_same_position_from_every_group():
    m = Grouped()
    # a's rows 0, 2, 4, 6 are position 0 of the 4 groups: they go together; row 1 alone cannot go
    r = prune(m, X, zero=[(m.a, [0, 2, 4, 6, 1])])
    assert m.a.out_channels == 4 and m.g.in_channels == 4 and m.g.groups == 4 and m.g.weight.shape[1] == 1
    assert r.edit["modules"]["g"]["in"] == [0, 2, 4, 6]


def test_grouped_conv_outputs_go_one_per_group():
    m = Grouped()
    # output rows 1, 3, 5, 7 are the second output of each of the 4 groups: all dead, so each group keeps one
    r = prune(m, X, zero=[(m.g, [1, 3, 5, 7])])
    assert m.g.out_channels == 4 and m.g.groups == 4 and m.g.in_channels == 8 and m.c.in_channels == 4
    assert r.edit["modules"]["g"]["out"] == [1, 3, 5, 7]


class SE(nn.Module):  # MobileNetV3 / EfficientNet / RegNetY
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.fc1, self.fc2 = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)
        self.proj = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = F.hardswish(self.dw(F.relu(self.expand(x))))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.proj(y * s)


def test_squeeze_excitation_couples_the_scale_with_the_main_path():
    m = SE()
    with torch.no_grad():
        m.proj.weight[:, 4] = 0.0  # proj ignores channel 4 — but fc1 reads it, and the scale is multiplied in
    prune(m, X)
    assert m.expand.out_channels == 6
    m = SE()
    with torch.no_grad():
        m.proj.weight[:, 4] = 0.0
        m.fc1.weight[:, 4] = 0.0
    prune(m, X)
    assert (m.expand.out_channels, m.dw.groups, m.fc2.out_channels, m.proj.in_channels) == (5, 5, 5, 5)


class Norms(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.a, self.norm, self.c = nn.Conv2d(3, 6, 1), norm, nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(self.norm(self.a(x)))


@pytest.mark.parametrize("norm,prunable", [
    (nn.PReLU(6), True), (nn.InstanceNorm2d(6, affine=True), True), (nn.BatchNorm2d(6, affine=False), True),
    (nn.GroupNorm(6, 6), True), (nn.GroupNorm(2, 6), False),
], ids=["prelu", "instancenorm", "bn-no-affine", "groupnorm-per-channel", "groupnorm"])
def test_per_channel_layers(norm, prunable):
    m = Norms(norm)
    with torch.no_grad():
        m.c.weight[:, 2] = 0.0
    prune(m, X)
    assert m.a.out_channels == (5 if prunable else 6)


class ChannelsLast(nn.Module):  # ConvNeXt block: dwconv, permute, LayerNorm, Linear, GELU, Linear, permute
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.ln = nn.LayerNorm(4)
        self.l1, self.l2 = nn.Linear(4, 8), nn.Linear(8, 4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.l2(F.gelu(self.l1(y))).permute(0, 3, 1, 2)
        return self.head(x + y)


def test_layernorm_freezes_but_the_linear_hidden_space_prunes():
    m = ChannelsLast()
    prune(m, torch.randn(3, 4, 6, 6), zero=[(m.l1, [3, 5])])
    assert m.l1.out_features == 6 and m.l2.in_features == 6 and m.ln.normalized_shape == (4,)


def test_flatten_into_linear_removes_a_block_per_channel():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5), nn.PReLU(), nn.Linear(5, 2))
    prune(m, X, zero=[(m[0], [1]), (m[3], [2])])
    assert m[0].out_channels == 3 and m[3].in_features == 3 * 36 and m[3].out_features == 4 and m[5].in_features == 4


class Decoder(nn.Module):  # U-Net style: ConvTranspose2d, Upsample, skip concat
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 5, 2, stride=2)
        self.ups = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(5 + 4 + 3, 2, 1)

    def forward(self, x):
        e = torch.relu(self.enc(x))
        return self.head(torch.cat([self.up(e), self.ups(e), x], 1))


def test_conv_transpose_and_upsample():
    m = Decoder()
    prune(m, X, zero=[(m.enc, [1])])  # channel 1 is read by up (weight not zero): it stays
    assert m.enc.out_channels == 4
    m = Decoder()
    with torch.no_grad():
        m.up.weight[2] = 0.0
        m.head.weight[:, [5 + 2]] = 0.0
    prune(m, X, zero=[(m.enc, [2])])
    assert (m.enc.out_channels, m.up.in_channels, m.head.in_channels) == (3, 3, 11)
    m = Decoder()
    with torch.no_grad():
        m.up.weight[:, 3] = 0.0
        m.up.bias[3] = 0.0
    prune(m, X)
    assert m.up.out_channels == 4 and m.head.in_channels == 11


def test_grouped_conv_transpose_keeps_groups_equal():
    class GroupedUp(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2)  # weight (8, 3, 2, 2)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.up(torch.relu(self.a(x)))))

    m = GroupedUp()
    prune(m, X, zero=[(m.a, [1])])  # position 1 of group 0 only: group 1's position 1 is alive, so it stays
    assert m.a.out_channels == 8 and m.up.in_channels == 8
    m = GroupedUp()
    with torch.no_grad():
        m.up.weight[:, 2] = 0.0  # output position 2 of both groups: outputs 2 and 5 are their (folded) bias
        m.up.weight[[1, 5]] = 0.0  # inputs 1 and 5 (position 1 of both groups) unread: nothing folds into a convT
    r = prune(m, X, zero=[(m.a, [1, 5])])
    assert (m.a.out_channels, m.up.in_channels, m.up.out_channels, m.up.groups, m.head.in_channels) == (6, 6, 4, 2, 4)
    assert r.edit["modules"]["up"]["out"] == [2, 5] and tuple(m.up.weight.shape) == (6, 2, 2, 2)


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x, z):
        h = torch.relu(self.a(x) + self.b(z))
        return {"logits": self.c(h).mean((2, 3)), "features": (h,)}


def test_several_inputs_and_outputs():
    m = TwoInTwoOut()
    x, z = torch.randn(2, 3, 5, 5), torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        m.a.weight[1] = 0.0
        m.b.weight[1] = 0.0
    r = prune_model(m.eval(), PruneOptions(pct=1, criterion="magnitude"), example=(x[:1], z[:1]), check_inputs=(x, z))
    assert r.check.passed and m.a.out_channels == 4  # h is an output: frozen


def test_unknown_op_and_untraceable_model_are_refused():
    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.cumsum(self.c(x), 1)

    with pytest.raises(UnsupportedOp, match="cumsum"):
        build_graph(Cum().eval(), X[:1])

    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedOp, match=r"data-dependent control flow.*test_graph.py:\d+"):
        build_graph(Dyn().eval(), X[:1])  # in the model's own forward: nothing to keep whole instead


def test_shape_dependent_control_flow_is_traced_and_value_dependent_module_kept_whole():
    from models_for_tests import Decoder

    with pytest.raises(Exception):  # the reason this test exists: plain torch.fx gives up on this model
        torch.fx.symbolic_trace(Decoder())
    m = Decoder().zero_some_rows()
    gate_before = copy.deepcopy(m.gate.state_dict())
    x = torch.randn(3, 3, 15, 15)  # odd size: the decoder's resize branch is taken
    r = prune(m, x, allow_inexact=True)  # its dead rows' BN shifts fold into zero-padded convs
    assert list(r.opaque) == ["gate"] and "data-dependent" in r.opaque["gate"]
    assert (m.c1.out_channels, m.c2.in_channels, m.up.conv.in_channels, m.up.conv.out_channels) == (13, 13, 13, 11)
    assert m.c3.in_channels == 11 and m.c3.out_channels == 32  # c3 feeds the opaque gate: frozen
    assert all(torch.equal(v, m.gate.state_dict()[k]) for k, v in gate_before.items())
    gm, _ = build_graph(Decoder(), x[:1])
    guards = gm.meta["explainfix_traced"].guards
    assert len(guards) == 1 and "models_for_tests.py" in guards[0][0]


def test_python_uses_of_shapes_are_decided_and_item_makes_its_module_opaque():
    class Scale(nn.Module):
        def forward(self, x):
            return x * (2.0 if x.abs().max().item() > 0 else 1.0)  # a value read in Python: kept whole

    class PyShapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)
            self.scale = Scale()

        def forward(self, x):
            assert len(x.shape) == 4
            y = torch.relu(self.a(x))
            for _ in range(int(y.shape[0]) // y.size(0)):  # once
                y = y + 0.0
            h, w = [int(d) for d in y.shape[2:]]
            return self.scale(self.b(y[:, :, :h, :w]))

    m = PyShapes()
    r = prune(m, X, zero=[(m.a, [1, 4])])
    assert m.a.out_channels == 4 and m.b.in_channels == 4 and list(r.opaque) == ["scale"]


def test_branch_on_a_channel_count_is_refused_after_surgery():
    from models_for_tests import Decoder

    from explainfix_cli.core.errors import CannotProcess

    m = Decoder(branch_on_channels=True).zero_some_rows().eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(CannotProcess, match="control flow depends on a channel count at Decoder .*models_for_tests"):
        prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=x[:1], check_inputs=x)


def test_unsupported_op_behind_frozen_channels_is_run_as_it_is():
    class Norm(nn.Module):  # MaxViT-like: a prunable conv block, then LayerNorm, then an op we cannot read
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)
            self.ln = nn.LayerNorm(4)

        def forward(self, x):
            y = self.ln(self.b(torch.relu(self.a(x))).permute(0, 2, 3, 1))
            return torch.cumsum(y, -1)  # every channel reaching it is frozen by the LayerNorm

    m = Norm()
    r = prune(m, X, zero=[(m.a, [0, 2])])
    assert m.a.out_channels == 4 and m.b.out_channels == 4
    assert any("cumsum" in why for why in r.opaque.values())


def test_layer_on_constants_is_frozen_not_refused():
    class PosBias(nn.Module):  # Swin V2: an MLP on a buffer, its output reshaped without a batch dim
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1)
            self.mlp = nn.Linear(2, 3)
            self.register_buffer("table", torch.randn(5, 2))

        def forward(self, x):
            bias = self.mlp(self.table).view(-1).mean()
            return torch.relu(self.a(x)).mean((2, 3)) + bias

    m = PosBias()
    prune(m, X, zero=[(m.a, [1])])
    assert m.mlp.out_features == 3 and m.a.out_channels == 6  # a feeds the output: frozen, but analysed


def test_shared_modules_merge_their_call_sites():
    class Siamese(nn.Module):  # one encoder applied to two inputs: one edit must fit both call sites
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))
            self.head = nn.Linear(8, 2)

        def forward(self, a, b):
            return self.head(torch.cat([self.enc(a), self.enc(b)], 1).mean((2, 3)))

    m = Siamese().eval()
    with torch.no_grad():
        m.enc[1].running_mean.uniform_(-0.5, 0.5)
        m.enc[1].bias.uniform_(-0.2, 0.5)
        m.enc[0].weight[[1, 4]] = 0.0  # constant channels, the same constant at both call sites: folded
        m.enc[3].weight[2] = 0.0  # a dead output row, read by the head at both sites
        m.head.weight[:, [2, 6]] = 0.0
    fresh = copy.deepcopy(m)
    x, y = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=(x[:1], y[:1]), check_inputs=(x, y))
    assert r.check.passed and r.check.pruned_vs_masked_rel <= 1e-4
    assert (m.enc[0].out_channels, m.enc[1].num_features, m.enc[3].in_channels) == (4, 4, 4)
    assert m.enc[3].out_channels == 3 and m.head.in_features == 6
    apply_edit(fresh, r.edit)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_shared_module_frozen_where_a_call_site_has_no_channels_and_refused_when_unsupported():
    conv = nn.Conv2d(3, 3, 1)  # call 1 reads the model input, call 2 its own output: position-wise, no atom
    m = nn.Sequential(conv, nn.ReLU(), conv).eval()
    gm, g = build_graph(m, X[:1])
    assert all(not s.prunable for s in g.spaces)

    class BufferFirst(nn.Module):  # the shared BN's first call sees no channels: no call site may slice it
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, padding=1)
            self.register_buffer("t", torch.randn(1, 6, 8, 8))

        def forward(self, x):
            z = self.bn(self.t)
            return self.b(self.bn(torch.relu(self.a(x)))) + z.mean()

    m = BufferFirst()
    prune(m, X, zero=[(m.a, [1, 3])])
    assert m.a.out_channels == 6 and m.bn.num_features == 6
    up = nn.ConvTranspose2d(3, 3, 1)
    with pytest.raises(UnsupportedOp, match="more than once"):
        build_graph(nn.Sequential(nn.Conv2d(3, 3, 1), up, nn.ReLU(), up).eval(), X[:1])


def test_optional_forward_arguments_keep_their_defaults():
    """Detection-style forwards (``targets=None``, ``*args``, ``augment=False``, ``**kwargs``): only the example
    is traced; the rest keep their Python defaults (before: a proxy of None, ``object of type 'NoneType' has no len()``)."""

    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x, targets=None, *args, augment=False, **kwargs):
            y = self.head(torch.relu(self.c2(torch.relu(self.c1(x)))))
            if targets is None and not augment and not kwargs:
                return y
            return y, len(targets)

    m = Det()
    x = torch.randn(3, 3, 12, 12)
    prune(m, x, zero=[(m.c1, [1, 4])])
    assert (m.c1.out_channels, m.c2.in_channels) == (6, 6)


def test_trace_failure_names_the_models_own_line():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.c(x)
            while y.sum() > 0:  # a value decides the loop: cannot be traced
                y = y - 1
            return y

    with pytest.raises(UnsupportedOp, match=r"tests/test_graph.py:\d+"):
        build_graph(Loop(), torch.randn(1, 3, 8, 8))


def test_report_says_why_removable_channels_stay():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            return self.c2(y), y.mean((2, 3))  # c1's channels are also an output: frozen

    m = Net().eval()
    with torch.no_grad():
        m.c1.weight[2], m.c1.bias[2] = 0, 0  # dead: c2 reads a constant 0 from it
    r = prune_model(m, PruneOptions(pct=1, criterion="magnitude"), example=torch.randn(1, 3, 8, 8), check_inputs=torch.randn(2, 3, 8, 8))
    assert r.channels_removed == 0 and m.c1.out_channels == 6
    assert list(r.kept.values()) == [1] and next(iter(r.kept)).startswith("frozen: ")
    assert r.to_json()["nothing_removed"].startswith("1 channels could go but stay (frozen: ")
