"""How close --target-macs gets and how long the search takes, on random-init torchvision models (no data:
the channel criterion falls back to |w|). Prints one row per model and rounding.

    .venv/bin/python benchmarks/budget.py [--target 2x] [--size 64]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model

MODELS = ["squeezenet1_1", "mobilenet_v3_small", "densenet121", "mobilenet_v2", "resnet18"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="2x")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    print(f"# --target-macs {args.target}, random init, {args.size}x{args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("model                round_to  achieved  re-plans  seconds  check")
    for name in MODELS:
        torch.manual_seed(0)
        base = getattr(torchvision.models, name)(num_classes=10).eval()
        x = torch.randn(4, 3, args.size, args.size)
        for rt in (1, "auto"):
            m = copy.deepcopy(base)
            t = time.perf_counter()
            r = prune_model(m, example=x[:1], check_inputs=x, options=PruneOptions(target_macs=args.target, round_to=rt))
            print(f"{name:20s} {rt!s:>8}  {r.budget['achieved']:.4f}  {r.budget['evaluations']:8d}  "
                  f"{time.perf_counter() - t:7.1f}  {r.check.status}")


if __name__ == "__main__":
    main()
