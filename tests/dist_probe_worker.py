"""Run by tests/test_distributed.py under torchrun (real processes, gloo), and once without it: the sensitivity
probe (prune/sensitivity.py) on a seeded torchvision MobileNetV2 with a global list of calibration batches of
which each process takes its share (core/dist.shard, as the jobs do) and a probe limit that ends inside the
list; each process saves its curves."""
import sys
from pathlib import Path

import torch
import torchvision

from explainfix_cli.channels import graph as graph_mod
from explainfix_cli.core import dist
from explainfix_cli.prune import sensitivity
from explainfix_cli.prune.channel import layers_of, magnitudes, output_sizes, score_groups, scored_modules

out = Path(sys.argv[1])
dist.init_from_env(torch.device("cpu"))
torch.manual_seed(0)
model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).eval()
with torch.no_grad():
    torch.nn.init.normal_(model.classifier[1].weight, std=1.0)  # outputs that depend on the input
g = torch.Generator().manual_seed(7)
data = [(torch.randn(5, 3, 32, 32, generator=g), torch.zeros(5, dtype=torch.long)) for _ in range(9)]
x = data[0][0][:1]
gm = graph_mod.trace(model, x)
graph = graph_mod.analyse(gm)
groups = score_groups(gm, graph, magnitudes(model, graph), output_sizes(model, x, scored_modules(graph)))
layers = layers_of(groups, "sensitivity", "macs")
mine = dist.shard(data)
curves = sensitivity.measure(model, graph, layers, lambda: iter(mine), "cpu", grid=(0.5,), images=27)  # 6 of 9 batches
torch.save({"curves": curves, "world": dist.world()}, out / f"probe{dist.rank()}_{dist.world()}.pt")
