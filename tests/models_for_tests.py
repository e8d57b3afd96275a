"""Small architectures loaded by the CLI tests through ``--arch tests/models_for_tests.py:Name``."""
import torch
from torch import nn


class TwoHeads(nn.Module):
    """Several outputs: a dict with a classifier and a feature map."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.seg = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        f = self.body(x)
        return {"logits": self.fc(f.mean((2, 3))), "mask": self.seg(f)}


class Tied(nn.Module):
    """Two layers sharing one weight tensor."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2.weight = self.conv.weight
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv(x))).mean((2, 3)))


class WithSvd(nn.Module):
    """Uses an op no ONNX exporter supports."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        f = self.conv(x).flatten(2)
        return torch.linalg.svd(f, full_matrices=False)[1]


class _Up(nn.Module):
    """U-Net decoder step: upsample, and resize again only when the sizes differ (shape-dependent `if`)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x, skip):
        x = nn.functional.interpolate(x, scale_factor=2.0)
        if x.shape[-2:] != skip.shape[-2:]:
            x = nn.functional.interpolate(x, size=skip.shape[-2:])
        return torch.relu(self.bn(self.conv(x + skip)))


class _Gate(nn.Module):
    """Value-dependent control flow: no tracer can decide this branch ahead of time."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        if x.mean() > -1e9:
            return self.conv(x)
        return x


class Decoder(nn.Module):
    """Symbolic tracing fails on it twice: a shape-dependent `if` (decided on the example and guarded) and a
    value-dependent one (its module is kept whole). ``branch_on_channels`` adds an `if` on a channel count."""

    def __init__(self, num_classes: int = 4, branch_on_channels: bool = False):
        super().__init__()
        self.branch_on_channels = branch_on_channels
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.up = _Up(16)
        self.c3 = nn.Conv2d(16, 32, 3, padding=1)
        self.gate = _Gate(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x)))
        u = self.up(torch.relu(self.b2(self.c2(a))), a)
        if self.branch_on_channels and u.shape[1] == 16:
            u = u * 2
        g = self.gate(torch.relu(self.c3(u)))
        return self.fc(g.mean((2, 3)))

    def zero_some_rows(self) -> "Decoder":
        """Dead channels for the tests: 3 in the (c1 + c2) residual space, 5 out of the decoder conv."""
        with torch.no_grad():
            for conv, rows in ((self.c1, 3), (self.c2, 3), (self.up.conv, 5)):
                conv.weight[:rows] = 0.0
        return self


class TopGate(nn.Module):
    """Value-dependent control flow in the model's own forward: nothing smaller can be kept whole."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            y = -y
        return self.fc(y.mean((2, 3)))


class FailsOnBatches(nn.Module):
    """Runs on one or two inputs (the loader's probes, eval and train mode) but raises an exception no layer of
    explainfix expects on a real batch: what an internal error looks like from the CLI (exit 4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        if x.shape[0] > 2:
            raise ArithmeticError("a batch")
        return self.fc(self.conv(x).mean((2, 3)))


class StateHolder(dict):
    """A dict subclass around a state_dict: not an allowed global, so loading it needs --trust-pickle."""


class UpLinear(nn.Module):
    """A ConvTranspose2d and a Linear hidden layer between prunable convs: every kind the per-layer table lists."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x):
        f = torch.relu(self.up(torch.relu(self.bn1(self.c1(x)))))
        f = torch.relu(self.c2(f)).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(f)))


class TwoInputs(nn.Module):
    """forward(a, b): a model that takes two tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, a, b):
        return self.fc((self.conv(a) + self.conv(b)).mean((2, 3)))


class MlpOnly(nn.Module):
    """No k×k kernel at all: 1×1 convs and Linear layers (--pct zeroes nothing)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


class TrainOnlyAux(nn.Module):
    """Inception v3 in small: an auxiliary head that only training mode runs reads the trunk's channels, and
    it needs a map of ≥ 5×5 (inputs of ≥ 20 px) where eval mode takes any size."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.mid, self.bn2 = nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24)
        self.aux_conv, self.aux_bn, self.aux_fc = nn.Conv2d(24, 8, 1), nn.BatchNorm2d(8), nn.Linear(8, num_classes)
        self.head, self.bn3 = nn.Conv2d(24, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.drop, self.fc = nn.Dropout(0.3), nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn2(self.mid(torch.relu(self.bn1(self.stem(x))))))
        aux = None
        if self.training:
            a = torch.nn.functional.avg_pool2d(x, kernel_size=5, stride=3)
            aux = self.aux_fc(torch.relu(self.aux_bn(self.aux_conv(a))).mean((2, 3)))
        x = torch.relu(self.bn3(self.head(x))).mean((2, 3))
        out = self.fc(self.drop(x))
        return (out, aux) if self.training else out


class ScalarAffine(nn.Module):
    """Blocks that end in a learnable scalar affine ``x * s + b`` (1-element parameters, as NF-ResNet's
    skip-init gain): the scalars are broadcast over the channels, so each channel stays itself."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(16, 16, 1) for _ in range(2))  # unpadded: a constant folds exactly
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(1)) for _ in range(2))
        self.biases = nn.ParameterList(nn.Parameter(torch.full((1,), 0.1)) for _ in range(2))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for conv, s, b in zip(self.convs, self.scales, self.biases):
            x = x + torch.relu(conv(x)) * s + b
        return self.fc(x.mean((2, 3)))


class AutocastBlock(nn.Module):
    """A block that turns autocast off by the input's own device (timm EfficientViT's linear attention)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x))
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = torch.relu(self.b(x.float()))
        return self.fc(x.mean((2, 3)))
