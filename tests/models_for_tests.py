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
