"""Channels-last on or off (EXPLAINFIX_CHANNELS_LAST): the saliency + agreement time of prune_model on timm models.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/channels_last.py --size 64 dla34 hrnet_w18_small mobilevit_xxs

Random init, two seeded batches of 32 random images at SIZE², the channel criterion at pct 50; each model
``--rounds`` rounds alternating which layout goes first; prints the medians and their ratio (< 1: channels-last
faster). timm is a test extra.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from explainfix_cli.core.layout import ENV
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="timm model names")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 3, a.size, a.size, generator=g), torch.full((32,), -1)) for _ in range(2)]
    for name in a.models:
        seconds: dict[str, list[float]] = {"1": [], "0": []}
        for r in range(a.rounds):
            for flag in ("1", "0") if r % 2 == 0 else ("0", "1"):
                os.environ[ENV] = flag
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False, num_classes=10).eval()
                res = prune_model(model, example=data[0][0][:1], batches=lambda: iter(data),
                                  options=PruneOptions(pct=50, criterion="channel"))
                seconds[flag].append(res.timings["saliency"] + res.timings.get("agreement", 0.0))
        cl, nchw = statistics.median(seconds["1"]), statistics.median(seconds["0"])
        print(f"{name} @{a.size}: saliency+agreement channels-last {cl:.2f}s NCHW {nchw:.2f}s ratio {cl / nchw:.2f}", flush=True)


if __name__ == "__main__":
    main()
