"""One-shot at 2× fewer MACs on a depthwise base: what the refit and the ranking inside a layer can still give
(session 15, issue #28: "one-shot at 2× within 2 points of the base on all three").

Each variant prunes the cached Fashion-MNIST base of benchmarks/fashion_mnist.py (train it there first) with the
default (``PruneOptions(target_macs=1/BUDGET)``), changed in one place, and measures the one-shot accuracy after
the BatchNorm recalibration every prune makes (and the recovery asked for). The changes are made here, around
the library's functions, not in the package:

- ``refit=0``: no least-squares refit; ``ridge=R``: the refit's ridge (default ``RIDGE``:
  1.0 until session 15, 0.1 since; each row records it); ``rows=N``: sampled rows per
  batch (default 2,048);
- ``head=1``: the classifier (no BatchNorm reads it) refit too, after the prune, by the same ridge fit, all its
  rows scaled back by one factor (so its arg-max is the fit's);
- ``obs=1``: channels ranked inside each layer by how much their consumers' output error grows when each is
  removed alone and the rest refit (Optimal Brain Surgeon: ‖w_k‖² / (G⁻¹)_kk, G the Gram matrix of the
  consumer's input in the base, 1×1 convs and linear layers; summed over consumers, relative to ‖Y‖²);
  ``greedy=1``: the same, removed one by one with the OBS update (a layer whose channels only one consumer
  reads). G has no bias column and is damped by 10⁻³ × its mean diagonal; a group no 1×1 conv or linear layer
  reads keeps its saliency (another scale), so the OBS variants only make sense ranked inside a layer, on a
  network whose channels 1×1 layers read (MobileNets); ``rank=R``: ``--rank R``;
- ``stream=F``, ``expand=F`` (session 16): with a per-layer rank, a residual stream's (a layer of several
  producers) or an inverted residual's expansion layer's quantile divided by F (see ``scaled_removal_order``);
- ``ft=1``: also the 2-epoch fine-tune and distillation; ``ftlong=N``: also an N-epoch fine-tune; ``lr=X``: their
  SGD learning rate (default the package's: 0.01, a distillation 0.003 since session 18; session 17);
- ``probe=N`` (session 19): the sensitivity rank's probe reads N calibration images (the package: ``PROBE_IMAGES``);
- ``sens=B`` (session 19): with ``rank=sensitivity`` (or ``--rank auto`` where it picks it), each layer's measured
  loss divided by the layer's cost to the power B (the package: 1; 0: every layer cut to the same loss). The
  rows of results/fmnist39_prototype.json came from the first version of this key (commit 292ecf0: its own
  probe, before the package had the rank; ``sens=B`` alone then meant the per-layer rank with that allocation);
- ``steps=K`` (session 18): K prunes in a row, the i-th to (1/BUDGET)^(i/K) of the base's MACs, the BatchNorm
  re-estimated between them (each step's saliency and refit read the model the previous step left). ``--rank auto``
  decides on each step's own budget (``compress --steps`` decides on the whole one): the same rank only where both
  budgets fall on the same side of the rule's thresholds (at 2× they do). Not with ``obs=1``.

Rows record the accuracy, the MACs kept and, with a recovery, the rates it ran at (``lr_ft``, ``lr_kd``: the
package's defaults differ by session; rows from before session 18 have none: distillation ran at 0.01 then).

Usage (rows appended to --out)::

    .venv/bin/python benchmarks/oneshot_variants.py --arch mobilenet_v2 --epochs 4 --budget 2 --seed 0 \\
        --variants ridge=1 head=1,ridge=1 ridge=0.1 ridge=0.01,rows=8192 obs=1,ridge=1 refit=0
    .venv/bin/python benchmarks/oneshot_variants.py --arch resnet18 --epochs 2 --budget 4 --variants ridge=1,ft=1 ft=1
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist as fm  # noqa: E402  (the bases, data, recovery and evaluation of the main benchmark)

from explainfix_cli.prune import pipeline, reconstruct, sensitivity  # noqa: E402
from explainfix_cli.prune import select as select_mod  # noqa: E402

SCORE_GROUPS = select_mod.score_groups
REFIT = pipeline.refit_consumers


def consumer_grams(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Gram matrix XᵀX of the input of every 1×1 conv (groups=1) and linear layer of ``model``, all positions."""
    grams: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (1, 1)) or isinstance(m, nn.Linear):
            def hook(_m, args, name=name):
                x = args[0].detach().double()
                x = x.reshape(-1, x.shape[-1]) if x.dim() == 2 else x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
                grams[name] = grams.get(name, 0) + x.t() @ x
            hooks.append(m.register_forward_pre_hook(hook))
    model.eval()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    return grams


def _inverse(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(g + 1e-3 * float(g.diagonal().mean()) * torch.eye(len(g), dtype=g.dtype))


def greedy_order(w: torch.Tensor, g: torch.Tensor) -> list[int]:
    """Columns of ``w`` (out, in) in the order OBS removes them one by one, the rest refit after each."""
    gi, w = _inverse(g), w.clone()
    alive = torch.ones(len(g), dtype=torch.bool)
    order = []
    for _ in range(len(g) - 1):
        cost = (w * w).sum(0) / gi.diagonal().clamp_min(1e-30)
        cost[~alive] = float("inf")
        k = int(cost.argmin())
        col, pivot = gi[:, k].clone(), float(gi[k, k])
        w -= w[:, k:k + 1] @ col[None, :] / pivot
        gi -= col[:, None] @ col[None, :] / pivot
        alive[k] = False
        w[:, k], gi[k, :], gi[:, k], gi[k, k] = 0, 0, 0, 1.0
        order.append(k)
    return order + [int(i) for i in torch.nonzero(alive).flatten()]


def obs_scores(grams: dict[str, torch.Tensor], greedy: bool):
    """A ``score_groups`` whose group scores are the OBS error of their consumers (see the module docstring)."""
    def score_groups(gm, graph, saliency, sizes):
        groups = SCORE_GROUPS(gm, graph, saliency, sizes)
        new, owners, fits = {}, {}, []
        for c in graph.consumers:
            w = gm.get_submodule(c.module).weight.detach().double().flatten(1)
            g = grams.get(c.module)
            if g is None or w.shape[1] != len(g) or len(c.labels) != w.shape[1]:
                continue
            fits.append((c, w, g))
            cost = (w * w).sum(0) / _inverse(g).diagonal()
            energy = float((w @ g * w).sum())
            for i, a in enumerate(c.labels.tolist()):
                if a >= 0 and graph.root(a) in groups:
                    r = graph.root(a)
                    new[r] = new.get(r, 0.0) + float(cost[i]) / energy
                    owners.setdefault(r, set()).add(c.module)
        for r, v in new.items():
            groups[r].saliency = v
        if greedy:  # a layer read by one consumer alone: its greedy removal order
            for c, w, g in fits:
                roots = [graph.root(a) if a >= 0 else None for a in c.labels.tolist()]
                if all(r in owners and owners[r] == {c.module} for r in roots) and len(set(roots)) == len(roots):
                    for step, k in enumerate(greedy_order(w, g)):
                        groups[roots[k]].saliency = (step + 1) / len(roots)
        return groups
    return score_groups


def refit_head(model: nn.Module, base: nn.Module, cx: torch.Tensor, ridge: float) -> None:
    """The last linear layer of ``model`` fitted to ``base``'s logits on ``cx`` (ridge toward its weights, as the
    refit does), then scaled back to its Frobenius norm by one factor."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    feats = []
    handle = head.register_forward_pre_hook(lambda _m, a: feats.append(a[0].detach()))
    with torch.no_grad():
        model.eval()(cx)
        y = base.eval()(cx).double()
    handle.remove()
    bias = head.bias is not None
    x = feats[0].double()
    cur = head.weight.detach().double()
    if bias:
        x = torch.cat([x, torch.ones(len(cx), 1, dtype=torch.float64)], 1)
        cur = torch.cat([cur, head.bias.detach().double()[:, None]], 1)
    cur = cur.t()
    gram = x.t() @ x
    lam = ridge * float(gram.diagonal().mean())
    fit = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), x.t() @ y + lam * cur)
    fit *= cur.norm() / fit.norm()
    with torch.no_grad():
        head.weight.copy_(fit[:len(fit) - int(bias)].t())
        if bias:
            head.bias.copy_(fit[-1])


KEYS = {"refit", "ridge", "rows", "head", "obs", "greedy", "rank", "ft", "ftlong", "stream", "expand", "lr", "steps",
        "sens", "probe"}
LEVELS = select_mod.sensitivity_levels
PROBE_IMAGES = sensitivity.PROBE_IMAGES
REMOVAL_ORDER = select_mod.removal_order


def scaled_removal_order(stream: float, expand: float):
    """The per-layer ranks' removal order, each layer's quantile divided by a factor: ``stream`` for a layer of
    several producers (a residual stream), ``expand`` for one whose producer is an inverted residual's expansion
    (a name ending ``conv.0.0`` or ``block.0.0``: torchvision's MobileNetV2 and V3); 1 for the rest. A factor below 1 cuts that class
    more slowly than the others (0: never), above 1 faster; the budget search then takes the rest elsewhere.
    (Commit 10cd58c tried the generic form in the library, a layer a depthwise conv reads, at 1.5: the rows of
    results/fmnist34_allocation.json with ``depthwise_fed_rate`` 1.5; reverted.)"""
    def removal_order(graph, groups, rank, cost, floor, levels=None):
        order = REMOVAL_ORDER(graph, groups, rank, cost, floor, levels)
        if rank not in ("l1-per-layer", "saliency-per-layer"):
            return order
        pos = {r: i for i, r in enumerate(order)}
        layers: dict = {}
        for r in order:
            layers.setdefault(tuple(sorted(groups[r].producers)), []).append(r)
        key = {}
        for producers, members in layers.items():
            f = stream if len(producers) > 1 else expand if all(p.endswith(("conv.0.0", "block.0.0")) for p in producers) else 1.0
            for i, r in enumerate(members):  # members in the default order: their quantile inside the layer
                key[r] = ((i + 0.5) / len(members) / f if f > 0 else float("inf"), pos[r])
        return sorted((r for r in order if key[r][0] != float("inf")), key=key.get)
    return removal_order


def parse_variant(spec: str) -> dict[str, str]:
    """``key=value,...`` (``default``: nothing changed); an unknown key or a part without ``=`` is an error."""
    if spec == "default":
        return {}
    kw = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if not eq or key not in KEYS:
            raise SystemExit(f"variant {spec!r}: {part!r} is not KEY=VALUE with KEY one of {', '.join(sorted(KEYS))}")
        kw[key] = value
    if "lr" in kw:  # checked here, not after the prune it would follow
        try:
            ok = float(kw["lr"]) > 0 and math.isfinite(float(kw["lr"]))
        except ValueError:
            ok = False
        if not ok:
            raise SystemExit(f"variant {spec!r}: lr={kw['lr']} is not a positive number")
    if "steps" in kw and not (kw["steps"].isdigit() and int(kw["steps"]) >= 1):
        raise SystemExit(f"variant {spec!r}: steps={kw['steps']} is not an integer ≥ 1")
    if int(kw.get("steps", 1)) > 1 and "obs" in kw:  # its Gram matrices are the base's: a later step's layers are smaller
        raise SystemExit(f"variant {spec!r}: obs=1 works on the base only, not with steps > 1")
    if "greedy" in kw and kw.get("obs") != "1":
        raise SystemExit(f"variant {spec!r}: greedy=1 needs obs=1")
    return kw


def run_variant(spec: str, base: nn.Module, data: dict, budget: float, seed: int) -> dict:
    kw = parse_variant(spec)
    refit_kw = {"rows_per_batch": int(kw["rows"])} if "rows" in kw else {}
    cx, cy = data["calib"]
    method = "ef" + "".join(f":{k}={kw[k]}" for k in ("refit", "rank", "ridge") if k in kw)  # fashion_mnist.py's keys
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        pipeline.refit_consumers = lambda *a, **k: REFIT(*a, **{**k, **refit_kw})
        if kw.get("obs") == "1":
            grams = consumer_grams(copy.deepcopy(base), fm.calib_batches(cx, cy, 128)())
            select_mod.score_groups = obs_scores(grams, kw.get("greedy") == "1")
        if "probe" in kw:  # the sensitivity rank's probe images (per process)
            sensitivity.PROBE_IMAGES = int(kw["probe"])
        if "sens" in kw:  # the sensitivity rank's levels divided by the layer's cost to this power (library: 1)
            select_mod.sensitivity_levels = lambda *a, **k: LEVELS(*a, **{**k, "power": float(kw["sens"])})
        if "stream" in kw or "expand" in kw:
            select_mod.removal_order = scaled_removal_order(float(kw.get("stream", 1)), float(kw.get("expand", 1)))
        steps = int(kw.get("steps", 1))
        m, base_macs = base, fm.count_macs(base, cx[:1])
        for i in range(1, steps + 1):  # steps=K: K prunes in a row, each to (1/budget)^(i/K) of the base's MACs
            if i > 1:
                fm.recalibrate(m, cx, cy, 128)  # the next step's saliency and refit read the pruned model as it will run
            m = fm.explainfix_prune(m, base_macs * budget ** (-i / steps) / fm.count_macs(m, cx[:1]), method, cx, cy, 128, seed)
    finally:
        pipeline.refit_consumers, select_mod.score_groups = REFIT, SCORE_GROUPS
        select_mod.removal_order, select_mod.sensitivity_levels = REMOVAL_ORDER, LEVELS
        sensitivity.PROBE_IMAGES = PROBE_IMAGES
    ridge = None if kw.get("refit") in ("0", "false") else float(kw.get("ridge", reconstruct.RIDGE))
    if kw.get("head") == "1":
        refit_head(m, base, cx, float(kw.get("ridge", reconstruct.RIDGE)))
    fm.recalibrate(m, cx, cy, 128)
    xt, yt = data["test"]
    row = {"variant": spec, "ridge": ridge, "budget": budget, "seed": seed,
           "prune_seconds": time.perf_counter() - t0,
           "acc_oneshot": fm.evaluate(m, xt, yt), "macs_kept": fm.count_macs(m, cx[:1]) / base_macs}
    lr = float(kw["lr"]) if "lr" in kw else None
    if kw.get("ft") == "1" or "ftlong" in kw:  # the rates the recoveries ran at (the package's defaults change)
        row.update(lr_ft=fm.TrainOptions(lr=lr).resolved().lr, lr_kd=fm.TrainOptions(lr=lr).resolved(distill=True).lr)
    if kw.get("ft") == "1":
        fx, fy = data["finetune"]
        ft = copy.deepcopy(m)
        fm.train(ft, fx, fy, fm.TrainOptions(epochs=2, lr=lr), 128, seed, f"ft {spec}")
        kd = copy.deepcopy(m)
        fm.train(kd, fx, None, fm.TrainOptions(epochs=2, lr=lr), 128, seed, f"kd {spec}",
                 objective=fm.Distillation(copy.deepcopy(base)))
        row.update(acc_ft=fm.evaluate(ft, xt, yt), acc_kd=fm.evaluate(kd, xt, yt))
    if "ftlong" in kw:  # the benchmark's longer fine-tune (--long-epochs)
        fx, fy = data["finetune"]
        long = copy.deepcopy(m)
        fm.train(long, fx, fy, fm.TrainOptions(epochs=int(kw["ftlong"]), lr=lr), 128, seed, f"ft{kw['ftlong']} {spec}")
        row.update(acc_ft_long=fm.evaluate(long, xt, yt), long_epochs=int(kw["ftlong"]))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--arch", choices=sorted(fm.ARCHES), default="mobilenet_v2")
    p.add_argument("--epochs", type=int, default=4, help="which cached base: benchmarks/results/fmnist_ARCH_eEPOCHS.pt")
    p.add_argument("--budget", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0, help="the calibration/fine-tune draw of fashion_mnist.py")
    p.add_argument("--variants", nargs="+", default=["default"])
    p.add_argument("--test-samples", type=int, default=5000)
    p.add_argument("--calib", type=int, default=512,
                   help="calibration images (saliency, refit, BatchNorm): the first N of the draw; the fine-tune "
                        "set stays images 512-2511 of it, so N > 512 overlaps it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=fm.REPO / "benchmarks" / "results" / "fmnist33_oneshot_variants.json")
    a = p.parse_args(argv)
    if a.calib < 1:
        p.error(f"--calib {a.calib}: needs at least 1 image")
    for spec in a.variants:  # every variant checked before the base is loaded and anything runs (exit 2)
        try:
            parse_variant(spec)
        except SystemExit as e:
            p.error(str(e))
    torch.set_num_threads(a.threads)
    path = fm.REPO / "benchmarks" / "results" / f"fmnist_{a.arch}_e{a.epochs}.pt"
    if not path.is_file():
        print(f"no cached base {path}: run benchmarks/fashion_mnist.py --arch {a.arch} --epochs {a.epochs} first",
              file=sys.stderr)
        return 2
    base = fm.ARCHES[a.arch]()
    base.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    base.eval()
    x, y = fm.load_split(a.data_dir, "train", None, 0)
    xt, yt = fm.load_split(a.data_dir, "test", a.test_samples, 0)
    perm = torch.from_numpy(np.random.default_rng(1000 + a.seed).permutation(len(x)))  # as fashion_mnist.py draws
    data = {"calib": (x[perm[:a.calib]], y[perm[:a.calib]]), "finetune": (x[perm[512:2512]], y[perm[512:2512]]),
            "test": (xt, yt)}
    results = json.loads(a.out.read_text()) if a.out.is_file() else {"rows": []}
    base_acc = fm.evaluate(base, xt, yt)
    print(f"base {a.arch} e{a.epochs}: {100 * base_acc:.2f}%", file=sys.stderr)
    for spec in a.variants:
        row = {"arch": a.arch, "epochs": a.epochs, "base_accuracy": base_acc, "threads": a.threads, "calib": a.calib,
               **run_variant(spec, base, data, a.budget, a.seed)}
        results["rows"].append(row)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
        extra = "".join(f" {k[4:]} {100 * row[k]:.2f}%" for k in ("acc_ft", "acc_kd", "acc_ft_long") if k in row)
        print(f"{a.arch} {a.budget:g}x seed {a.seed} {spec:<24} one-shot {100 * row['acc_oneshot']:.2f}%{extra}",
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
