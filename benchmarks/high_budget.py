#!/usr/bin/env python
"""Why Torch-Pruning's uniform ratio wins at 10× fewer MACs: the channel criterion's knobs, one at a time.

    .venv/bin/python benchmarks/high_budget.py --epochs 2 --base /tmp/fmnist_base2.pt \
        --variants ef ef:floor=0.05 ef:floor=0.2 ef:rank=saliency ef:alpha=0.75 ef:alpha=1.5 ef:norm=1 ef:steps=2 tp-l1

An exploration next to benchmarks/fashion_mnist.py (same model, data, calibration and fine-tune subsets,
BatchNorm re-estimation and ``ft`` recovery: 2 epochs cross-entropy on 2,000 labelled images; one seed; no
distillation or latency, so one variant takes about a minute on 2 cores). A variant is ``ef`` with options
after colons — ``floor=F`` and ``rank=per-cost|saliency`` are the real ``--floor`` / ``--rank``; ``alpha=A``
ranks groups by saliency ÷ MACs**A (A = 1 is ``per-cost``, A = 0 is ``saliency``), an experiment that is not
an explainfix option, ``steps=N`` prunes in N re-scored steps of (1/budget)**(1/N) each (floor**(1/N)
per step; ``scores=magnitude`` ranks the groups by Σ|w| instead of the saliency; with ``interleave=1`` the 2 fine-tune epochs are split over the steps, as ``compress --steps``
does), and ``norm=1`` orders the groups as ``--rank l1-per-layer`` does (by quantile inside their layer: the same
fraction from every layer) — or ``tp-l1`` (Torch-Pruning's MetaPruner, uniform ratio, L1). Prints one JSON line per
variant: MACs kept, one-shot and fine-tuned test accuracy, and the conv widths that result.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist as F  # noqa: E402

from explainfix_cli.core.model import count_macs  # noqa: E402
from explainfix_cli.prune import select  # noqa: E402
from explainfix_cli.prune.options import PruneOptions  # noqa: E402
from explainfix_cli.prune.pruner import prune_model  # noqa: E402
from explainfix_cli.train.finetune import TrainOptions  # noqa: E402


def uniform_order(graph, groups, cost, floor, shared):
    """Every layer (the groups with the same producers) loses the same fraction: groups are ranked by their
    quantile inside their layer (least important first by saliency per cost), ties by that key."""
    def per_cost(g):
        spend = g.macs if cost == "macs" else g.params
        return g.saliency / spend if spend > 0 else g.saliency
    layers = {}
    for g in groups.values():
        layers.setdefault(tuple(sorted(g.producers)), []).append(g)
    key = {}
    for gs in layers.values():
        gs.sort(key=lambda g: (per_cost(g), g.root))
        for i, g in enumerate(gs):
            key[g.root] = (i + 0.5) / len(gs) + 1e-9 * per_cost(g)
    rescored = {r: dataclasses.replace(g, saliency=key[r]) for r, g in groups.items()}
    return shared(graph, rescored, "saliency", cost, floor)


def ranking(alpha: float, norm: bool, shared, alloc: str = ""):
    """A removal order built on the shared one (prune/channel.removal_order, same floor rule): ``alpha`` ranks
    by saliency / cost**alpha; ``norm`` uses the per-layer order of ``--rank l1-per-layer`` (quantile; the median until session 10) on
    whatever scores the variant has (the saliency unless ``scores=magnitude``)."""
    def removal_order(graph, groups, rank, cost, floor, levels=None):  # levels: the sensitivity rank's, not used here
        if alloc == "uniform":
            return uniform_order(graph, groups, cost, floor, shared)
        if norm:
            return shared(graph, groups, "l1-per-layer", cost, floor)

        def key(g):
            spend = g.macs if cost == "macs" else g.params
            return g.saliency / spend ** alpha if spend > 0 else g.saliency
        rescored = {r: dataclasses.replace(g, saliency=key(g)) for r, g in groups.items()}
        return shared(graph, rescored, "saliency", cost, floor)
    return removal_order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--base", type=Path, default=None, help="cached base model (trained here if missing; default as "
                   "fashion_mnist.py: benchmarks/results/fmnist_ARCH_eEPOCHS.pt)")
    p.add_argument("--epochs", type=int, default=6, help="base training epochs when --base is missing")
    p.add_argument("--budget", type=float, nargs="+", default=[10])
    p.add_argument("--variants", nargs="+", default=["ef", "tp-l1"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kd", action="store_true", help="also 2 epochs of distillation without labels")
    p.add_argument("--arch", choices=sorted(F.ARCHES), default="resnet18")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    a.lr, a.batch_size = 2e-3, 128
    torch.set_num_threads(a.threads)
    x, y = F.load_split(a.data_dir, "train", None, 0)
    xt, yt = F.load_split(a.data_dir, "test", 10000, 0)
    base = F.get_base(a, x, y)
    print(json.dumps({"base_accuracy": F.evaluate(base, xt, yt)}), flush=True)
    base_macs = count_macs(base, xt[:1])
    perm = torch.from_numpy(np.random.default_rng(1000 + a.seed).permutation(len(x)))  # as fashion_mnist.py
    cx, cy = x[perm[:512]], y[perm[:512]]
    fx, fy = x[perm[512:2512]], y[perm[512:2512]]
    original_order = select.removal_order
    for budget, v in [(b, v) for b in a.budget for v in a.variants]:
        torch.manual_seed(a.seed)
        t0 = time.perf_counter()
        if v.startswith("tp-"):
            m, _ = F.tp_prune(base, int(base_macs / budget), v[3:], cx, cy, a.batch_size)
            kw, steps = {}, 1
        else:
            kw = dict(kv.split("=") for kv in v.split(":")[1:])
            custom = "alpha" in kw or "norm" in kw or "alloc" in kw
            select.removal_order = ranking(float(kw.get("alpha", 1)), kw.get("norm") == "1", original_order,
                                           kw.get("alloc", "")) if custom \
                else original_order
            m = copy.deepcopy(base).eval()
            steps = int(kw.get("steps", 1))
            for step in range(steps):  # steps > 1: re-score the pruned model each time, BatchNorm re-estimated between
                if step:
                    F.recalibrate(m, cx, cy, a.batch_size)
                    if "interleave" in kw:  # compress --steps: the 2 epochs split over the rounds
                        F.train(m, fx, fy, TrainOptions(epochs=2 // steps), a.batch_size, a.seed, f"ft {v} round {step}")
                scored_on = None if kw.get("scores") == "magnitude" else F.calib_batches(cx, cy, a.batch_size)
                r = prune_model(m, example=cx[:1], batches=scored_on, check_inputs=cx[:8],
                                seed=a.seed, options=PruneOptions(target_macs=(1 / budget) ** (1 / steps),
                                                                  floor=float(kw.get("floor", 0.1)) ** (1 / steps),
                                                                  rank=kw.get("rank", "per-cost"),
                                                                  round_to=kw.get("round_to")))
                assert r.check.passed
            select.removal_order = original_order
        F.recalibrate(m, cx, cy, a.batch_size)
        one = F.evaluate(m, xt, yt)
        last = 2 - (2 // steps) * (steps - 1) if not v.startswith("tp-") and "interleave" in kw else 2
        kd = copy.deepcopy(m) if a.kd else None
        F.train(m, fx, fy, TrainOptions(epochs=last), a.batch_size, a.seed, f"ft {v}")
        if kd is not None:
            F.train(kd, fx, None, TrainOptions(epochs=last), a.batch_size, a.seed, f"kd {v}",
                    objective=F.Distillation(copy.deepcopy(base)))
        widths = [mod.out_channels for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
        print(json.dumps({"variant": v, "budget": budget, "macs_kept": round(count_macs(m, xt[:1]) / base_macs, 4), "one_shot": one,
                          "ft": F.evaluate(m, xt, yt),
                          "kd": F.evaluate(kd, xt, yt) if kd is not None else None,
                          "lr_ft": TrainOptions().resolved().lr,
                          "lr_kd": TrainOptions().resolved(distill=True).lr if kd is not None else None, "seconds": round(time.perf_counter() - t0, 1), "widths": widths}),
              flush=True)


if __name__ == "__main__":
    main()
