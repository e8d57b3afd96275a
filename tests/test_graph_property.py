"""Property: on random small CNNs built from the couplings the engine knows (add, cat, chunk, grouped conv,
squeeze-excitation, flatten→Linear, PReLU, grouped ConvTranspose2d, a conv+BN called twice), with random kernels and whole rows / columns zeroed, the
pruned model ≡ its masked equivalent always, and ≡ the zeroed model whenever no non-zero constant was
folded; the recipe edit replays on a freshly built model."""
import copy

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from explainfix_cli.prune.pruner import prune_model
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.io.edits import apply_edit

KINDS = ("conv", "add", "cat", "split", "group", "se", "prelu", "up", "shared")


def cbr(cin, cout, pad, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=pad, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class Block(nn.Module):
    def __init__(self, kind, c, w, pad):
        super().__init__()
        self.kind, self.pad = kind, pad
        if kind == "conv":
            self.f, self.out = cbr(c, w, pad), w
        elif kind == "add":
            self.f, self.g, self.out = cbr(c, w, 1), nn.Conv2d(w, c, 3, padding=1), c
        elif kind == "cat":
            self.f, self.g, self.out = cbr(c, w, 1), nn.Conv2d(c, w + 1, 1), 2 * w + 1
        elif kind == "split":
            self.pre, self.f, self.out = nn.Conv2d(c, 2 * w, 1), cbr(w, w, 1), 2 * w
        elif kind == "group":
            self.pre, self.f, self.out = nn.Conv2d(c, 2 * w, 1), cbr(2 * w, 4 * w, pad, groups=2), 4 * w
        elif kind == "se":
            self.fc1, self.fc2, self.out = nn.Conv2d(c, w, 1), nn.Conv2d(w, c, 1), c
        elif kind == "shared":  # one conv + BN applied twice (weight sharing, recurrent-style)
            self.f, self.bn, self.out = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), c
        elif kind == "up":  # decoder step: grouped transposed conv up, pooled back to the same size
            self.pre, self.f, self.out = nn.Conv2d(c, 2 * w, 1), nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2, groups=2), 2 * w
        else:  # prelu
            self.f, self.act, self.out = nn.Conv2d(c, w, 1), nn.PReLU(w), w

    def forward(self, x):
        k = self.kind
        if k == "conv":
            return self.f(x)
        if k == "add":
            return x + self.g(self.f(x))
        if k == "cat":
            return torch.cat([self.f(x), self.g(x)], 1)
        if k == "split":
            a, b = self.pre(x).chunk(2, dim=1)
            return torch.cat([a, self.f(b)], 1)
        if k == "group":
            return self.f(self.pre(x))
        if k == "shared":
            return x + self.bn(self.f(F.relu(self.bn(self.f(x)))))
        if k == "up":
            return F.avg_pool2d(F.relu(self.f(self.pre(x))), 2)
        if k == "se":
            return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.act(self.f(x))


class Net(nn.Module):
    def __init__(self, spec, size):
        super().__init__()
        blocks, c = [], 3
        for kind, w, pad in spec:
            blocks.append(Block(kind, c, w, pad))
            c = blocks[-1].out
            size -= 2 * (kind in ("conv", "group") and pad == 0)
        self.blocks = nn.Sequential(*blocks)
        self.fc1, self.act, self.fc2 = nn.Linear(c * size * size, 6), nn.PReLU(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(torch.flatten(self.blocks(x), 1))))


block = st.tuples(st.sampled_from(KINDS), st.integers(1, 4), st.sampled_from([0, 1]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(block, min_size=1, max_size=4), seed=st.integers(0, 2**16), pct=st.sampled_from([30, 60, 90]),
       dead=st.floats(0, 0.5))
def test_pruned_equals_masked_and_zeroed(spec, seed, pct, dead):
    torch.manual_seed(seed)
    net = Net(spec, 10).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.bias.uniform_(-0.2, 0.5, generator=g)
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # dead rows (constant outputs) and dead columns
                rows = torch.rand(m.weight.shape[0], generator=g) < dead
                m.weight[rows] = 0.0
                cols = torch.rand(m.weight.shape[1], generator=g) < dead
                m.weight[:, cols] = 0.0
                if torch.rand(1, generator=g).item() < 0.5:
                    m.bias[rows] = 0.0
            if isinstance(m, nn.ConvTranspose2d):  # weight (in, out/groups): unread inputs, dead output positions
                m.weight[torch.rand(m.weight.shape[0], generator=g) < dead] = 0.0
                m.weight[:, torch.rand(m.weight.shape[1], generator=g) < dead] = 0.0
    fresh = copy.deepcopy(net)
    x = torch.randn(3, 3, 10, 10, generator=g)  # 4 unpadded 3×3 convs leave 2×2
    r = prune_model(net, PruneOptions(pct=pct, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.check.passed and r.check.pruned_vs_masked_rel <= 1e-4
    if r.nonzero_folds == 0:
        assert r.check.masked_vs_zeroed_rel <= 1e-4
    apply_edit(fresh, r.edit)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
