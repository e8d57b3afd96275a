#!/usr/bin/env python
"""Fashion-MNIST: explainfix at a MACs budget vs Torch-Pruning at the same MACs, with the same recovery.

    .venv/bin/python benchmarks/fashion_mnist.py                          # ResNet-18, 6-epoch base (trained once, cached)
    .venv/bin/python benchmarks/fashion_mnist.py --epochs 2               # the 2-epoch base the --rank auto rule was chosen on
    .venv/bin/python benchmarks/fashion_mnist.py --arch mobilenet_v2 --epochs 4
    .venv/bin/python benchmarks/fashion_mnist.py --arch mobilenet_v3_small --epochs 4
    .venv/bin/python benchmarks/fashion_mnist.py --arch mnasnet0_5 --epochs 4     # a depthwise base no rule was chosen on
    .venv/bin/python benchmarks/fashion_mnist.py --quick                  # a few minutes: small sizes, one seed

1. A base trained on the 60k training images (AdamW, cosine; cached as
   benchmarks/results/fmnist_ARCH_eEPOCHS.pt, not committed, so later runs skip it): ``--arch resnet18``
   (torchvision, its own 7×7 stem with 1 input channel; images padded to 32×32, 35 M MACs) or
   ``--arch mobilenet_v2`` (depthwise, inverted residuals; a 1-channel stride-1 stem, 24 M MACs) or
   ``--arch mobilenet_v3_small`` (depthwise, squeeze-excitation, hard-swish; the same stem, 5.2 M MACs) or
   ``--arch mnasnet0_5`` (depthwise, 5×5 kernels, no squeeze-excitation; the same stem, BatchNorm momentum 0.1).
2. For every budget (2×, 3×, 4×, 6×, 10× fewer MACs) and seed: explainfix's default (``ef``: the channel
   criterion with ``--rank auto``; ``ef:rank=R`` pins a rank; ``ef-filter-restore`` is the filter criterion
   with ``--fill restore``); Torch-Pruning 1.6.1 (explainfix_cli/prune/peers.py, what ``sweep --compare``
   runs: MetaPruner, one shot, uniform per-layer ratio, the classifier ignored) with L1-magnitude and Taylor
   importance, the ratio bisected to the largest MACs ≤ the budget. Every pruned model gets the same
   BatchNorm re-estimation on the calibration images (what ``explainfix prune`` does after a budget prune),
   then each recovery from a copy: none (one-shot); ``ft``: 2 epochs cross-entropy on 2,000 labelled
   training images; ``kd``: 2 epochs of distillation from the base model on the same 2,000 images with their
   labels removed (SGD at the package's default rates, 0.01 for a fine-tune and 0.003 for a distillation since
   session 18, 0.01 before; ``--finetune-lr``, ``--distill-lr``); at ``--long-budgets`` (4×, 10×) also ``--long-epochs`` (10) of ``ft``. Test accuracy on
   ``--test-samples`` test images (``--recoveries`` runs a subset: the other columns stay empty); onnxruntime
   batch-1 latency timed interleaved with the base (realized
   speed-up ÷ MACs speed-up) unless ``--no-bench``.

Seeds change the calibration and fine-tune subsets and the shuffling. Data: the Debian package's IDX files
(``--data-dir``, default /usr/share/datasets/fashion-mnist). Torch-Pruning is a benchmark extra
(``pip install -e '.[bench]'``), not an explainfix dependency.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from explainfix_cli.core.errors import BadInput  # noqa: E402
from explainfix_cli.core.model import count_macs, count_params  # noqa: E402
from explainfix_cli.deploy.bench import BenchTarget, bench_interleaved, compare_bench  # noqa: E402
from explainfix_cli.deploy.onnx import export_onnx  # noqa: E402
from explainfix_cli.prune import pipeline  # noqa: E402  (ef:ridge=R wraps its refit_consumers)
from explainfix_cli.prune.options import PruneOptions  # noqa: E402
from explainfix_cli.prune.pruner import prune_model  # noqa: E402
from explainfix_cli.train.batches import tensor_batches  # noqa: E402
from explainfix_cli.train.finetune import (  # noqa: E402
    DISTILL_LR, OPTIMIZERS, TrainOptions, accuracy, finetune, predict, recalibrate_batchnorm)
from explainfix_cli.train.objectives import Distillation  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fmnist_report import markdown, plot  # noqa: E402

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics
CLASSES = 10


# ----------------------------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or raw) → numpy array: magic (0, 0, dtype code, ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for dims {dims}")
    return data.reshape(dims)


def load_split(data_dir: Path, split: str, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    idx = np.arange(len(x))
    if n is not None and n < len(x):  # a class-balanced-in-expectation random subset
        idx = np.random.default_rng(seed).permutation(len(x))[:n]
    xt = torch.from_numpy(x[idx].astype(np.float32) / 255.0).unsqueeze(1)
    xt = nn.functional.pad((xt - MEAN) / STD, (2, 2, 2, 2), value=-MEAN / STD)  # 28×28 → 32×32 (black border)
    return xt, torch.from_numpy(y[idx].astype(np.int64))


# ---------------------------------------------------------------------------------------------- model
def resnet18_fmnist() -> nn.Module:
    from torchvision.models import resnet18

    m = resnet18(num_classes=CLASSES)  # the torchvision stem (7×7 stride 2, max-pool): 37 M MACs at 32×32
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    return m


def mobilenet_v2_fmnist() -> nn.Module:
    """torchvision MobileNetV2 (depthwise, inverted residuals) with a 1-channel stride-1 stem (the 32×32 input
    ends at 2×2), as benchmarks/int8.py builds it."""
    from torchvision.models import mobilenet_v2

    m = mobilenet_v2(num_classes=CLASSES)
    m.features[0][0] = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.features[0][0].weight, mode="fan_out")
    return m


def mobilenet_v3_small_fmnist() -> nn.Module:
    """torchvision MobileNetV3-Small (depthwise, squeeze-excitation, hard-swish) with a 1-channel stride-1 stem:
    a second depthwise network, to check a rule chosen on the MobileNetV2 off the model it was chosen on."""
    from torchvision.models import mobilenet_v3_small

    m = mobilenet_v3_small(num_classes=CLASSES)
    m.features[0][0] = nn.Conv2d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.features[0][0].weight, mode="fan_out")
    return m


def mnasnet0_5_fmnist() -> nn.Module:
    """torchvision MNASNet-0.5 (depthwise, inverted residuals, 5×5 kernels, no squeeze-excitation) with a 1-channel
    stride-1 stem: a depthwise base that no ranking rule was chosen on (session 12)."""
    from torchvision.models import mnasnet0_5

    m = mnasnet0_5(num_classes=CLASSES)
    m.layers[0] = nn.Conv2d(1, 16, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.layers[0].weight, mode="fan_out")
    for bn in m.modules():  # torchvision's TF-style momentum (3e-4) is for 100s of epochs; 4 would leave stale statistics
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 0.1
    return m


# runs whose config agrees on these (and on the base) measure the same thing: --resume continues only such a
# file, and benchmarks/gaps.py merges only such files
SAME_RUN = ("arch", "epochs", "calib", "finetune_samples", "finetune_epochs", "finetune_lr", "distill_lr", "test_samples",
            "long_epochs", "recoveries")
RECOVERIES = ("ft", "kd", "long")

ARCHES = {"resnet18": resnet18_fmnist, "mobilenet_v2": mobilenet_v2_fmnist, "mobilenet_v3_small": mobilenet_v3_small_fmnist,
          "mnasnet0_5": mnasnet0_5_fmnist}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    batches = ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs))
    return accuracy(*predict(model, batches))


def train(model: nn.Module, x, y, opts: TrainOptions, bs: int, seed: int, label: str, objective=None) -> dict:
    batches, steps = tensor_batches(x, y, bs, seed=seed)
    t0 = time.perf_counter()

    def tick(s):
        if s.step % 20 == 0 or s.step == s.steps:
            acc = "" if s.accuracy is None else f" acc {100 * s.accuracy:.1f}%"
            print(f"\r  {label}: epoch {s.epoch}/{s.epochs} step {s.step}/{s.steps} loss {s.loss:.3f}{acc}   ",
                  end="", file=sys.stderr, flush=True)

    res = finetune(model, batches, opts, steps_per_epoch=steps, on_step=tick, seed=seed, objective=objective,
                   example=x[:1])  # channels-last where it computes the same: MobileNetV2 trains ~25x faster on CPU
    print(file=sys.stderr)
    return {"seconds": time.perf_counter() - t0, "train_loss": res.epochs[-1].loss}


def latencies(models: list[nn.Module], threads: int, iters: int) -> list[dict]:
    """onnxruntime batch-1 latency of ``models`` timed interleaved (5 rounds): p50 ms and the median of the
    same-round ratios to the first model."""
    with tempfile.TemporaryDirectory() as d:
        targets = []
        for i, model in enumerate(models):
            path = Path(d) / f"m{i}.onnx"
            export_onnx(model.eval(), torch.randn(2, 1, 32, 32), path)
            targets.append(BenchTarget(path, (1, 32, 32)))
        rows = compare_bench(bench_interleaved(targets, threads=threads, iters=iters, warmup=5, rounds=5))
    return [{"latency_ms": r["p50_ms"], "latency_ratio": r["latency_ratio"]} for r in rows]


# -------------------------------------------------------------------------------------------- pruning
def calib_batches(cx, cy, bs):
    return lambda: ((cx[i:i + bs], cy[i:i + bs]) for i in range(0, len(cx), bs))


def explainfix_prune(model: nn.Module, frac: float, method: str, cx, cy, bs: int, seed: int) -> nn.Module:
    """``method``: ``ef`` (the default of ``--target-macs``), ``ef:rank=R`` (the same with ``--rank R``; also
    ``refit=0`` and ``ridge=R``, joined by ``:``), or ``ef-filter-restore`` (``--criterion saliency --fill restore``)."""
    m = copy.deepcopy(model).eval()
    if method == "ef-filter-restore":
        opts = PruneOptions(target_macs=frac, criterion="saliency", fill="restore")
    else:
        kw = dict(kv.split("=", 1) for kv in method.split(":")[1:])
        if "refit" in kw:  # ef:refit=0 is the default without the least-squares refit
            kw["refit"] = kw["refit"] not in ("0", "false")
        ridge = kw.pop("ridge", None)  # ef:ridge=1: the refit's ridge before session 15 (no option of the package)
        opts = PruneOptions(target_macs=frac, **kw)
    refit = pipeline.refit_consumers
    if method.startswith("ef:") and ridge is not None:
        pipeline.refit_consumers = lambda *args, **k: refit(*args, **{**k, "ridge": float(ridge)})
    try:
        r = prune_model(m, example=cx[:1], batches=calib_batches(cx, cy, bs), check_inputs=cx[:8], seed=seed,
                        options=opts)
    finally:
        pipeline.refit_consumers = refit
    assert r.check.passed, r.check
    return m


def tp_prune(model: nn.Module, target_macs: int, criterion: str, cx, cy, bs: int, steps: int = 14) -> tuple[nn.Module, float]:
    """Torch-Pruning one shot at the smallest uniform ratio whose MACs ≤ target (bisection on the ratio): the
    package's adapter (explainfix_cli/prune/peers.py, what ``sweep --compare torch-pruning`` runs)."""
    from explainfix_cli.prune.peers import torch_pruning_to

    example = cx[:1]
    batches = [(cx[i:i + bs], cy[i:i + bs]) for i in range(0, len(cx), bs)]  # Taylor: the loss on the calibration set
    return torch_pruning_to(model, example, target_macs / count_macs(model, example), "macs", criterion,
                            batches if criterion == "taylor" else None, steps)


def recalibrate(m: nn.Module, cx, cy, bs: int) -> None:
    recalibrate_batchnorm(m, calib_batches(cx, cy, bs)())


# ----------------------------------------------------------------------------------------------- main
def get_base(a, x, y) -> nn.Module:
    build = ARCHES[getattr(a, "arch", "resnet18")]
    if a.base is None:  # one cached file per architecture and training length
        a.base = REPO / "benchmarks" / "results" / f"fmnist_{getattr(a, 'arch', 'resnet18')}_e{a.epochs}.pt"
    model = build()
    if a.base.is_file():
        model.load_state_dict(torch.load(a.base, map_location="cpu", weights_only=True))
        print(f"base: loaded {a.base}", file=sys.stderr)
        return model.eval()
    torch.manual_seed(0)
    model = build()
    info = train(model, x, y, TrainOptions(epochs=a.epochs, optimizer="adamw", lr=a.lr), a.batch_size, 0, f"train {build.__name__}")
    a.base.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), a.base)
    print(f"base: trained in {info['seconds']:.0f}s, saved {a.base}", file=sys.stderr)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 budgets, one seed, 2,000 test images, 500 fine-tune images")
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--arch", choices=sorted(ARCHES), default="resnet18")
    p.add_argument("--base", type=Path, default=None,
                   help="the trained base model (trained and saved here when missing; not committed); default "
                        "benchmarks/results/fmnist_ARCH_eEPOCHS.pt")
    p.add_argument("--train-samples", type=int, default=None, help="base training images (default all 60k; for smoke runs)")
    p.add_argument("--epochs", type=int, default=6, help="base training epochs on the 60k images")
    p.add_argument("--lr", type=float, default=2e-3, help="base training: AdamW lr (cosine)")
    p.add_argument("--budgets", type=float, nargs="+", default=[2, 3, 4, 6, 10], help="MACs reduction factors")
    p.add_argument("--methods", nargs="+", default=["ef", "tp-l1", "tp-taylor"],
                   help="ef (explainfix's default), ef:rank=R (with --rank R; also refit=0, ridge=R), ef-filter-restore, "
                        "tp-l1, tp-taylor")
    p.add_argument("--long-epochs", type=int, default=10, help="the longer fine-tune of --long-budgets (both tools)")
    p.add_argument("--long-budgets", type=float, nargs="*", default=[4, 10], help="budgets that also get --long-epochs")
    p.add_argument("--no-bench", action="store_true", help="skip the onnxruntime latency (accuracy only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--calib", type=int, default=512, help="calibration images (saliency, Taylor, BatchNorm)")
    p.add_argument("--finetune-samples", type=int, default=2000)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="SGD learning rate of the fine-tunes (and of the distillation unless --distill-lr), both "
                        f"tools; default the package's ({OPTIMIZERS['sgd'][0]:g})")
    p.add_argument("--distill-lr", type=float, default=None,
                   help="SGD learning rate of the distillation only, both tools; default --finetune-lr, else the "
                        f"package's for a distillation ({DISTILL_LR['sgd']:g}; recorded resolved in the JSON)")
    p.add_argument("--recoveries", nargs="+", choices=RECOVERIES, default=list(RECOVERIES),
                   help="which recoveries to run (the others' columns stay empty): ft (2-epoch fine-tune), kd "
                        "(2-epoch distillation), long (the --long-epochs fine-tune)")
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    p.add_argument("--bench-iters", type=int, default=30)
    p.add_argument("--resume", action="store_true", help="keep the points already in --out and measure the rest")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fashion_mnist.json")
    a = p.parse_args(argv)
    for flag, v in (("--finetune-lr", a.finetune_lr), ("--distill-lr", a.distill_lr)):
        if v is not None and not (v > 0 and math.isfinite(v)):
            p.error(f"{flag} {v:g}: needs a positive number")
    if a.finetune_epochs < 1:
        p.error(f"--finetune-epochs {a.finetune_epochs}: needs at least 1")
    ft_opts = TrainOptions(epochs=a.finetune_epochs, lr=a.finetune_lr)
    kd_opts = TrainOptions(epochs=a.finetune_epochs, lr=a.distill_lr if a.distill_lr is not None else a.finetune_lr)
    # the rate the distillation ran at, resolved (files at other rates never merge, whatever the default was then);
    # None without one
    a.distill_lr = kd_opts.resolved(distill=True).lr if "kd" in a.recoveries else None
    a.recoveries = [r for r in RECOVERIES if r in a.recoveries]  # one spelling per set: --resume and gaps.py compare it
    if a.quick:
        a.budgets, a.seeds, a.test_samples, a.finetune_samples = [2, 4], [0], 2000, 500
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    x, y = load_split(a.data_dir, "train", a.train_samples, 0)
    xt, yt = load_split(a.data_dir, "test", a.test_samples, 0)
    base = get_base(a, x, y)
    base_acc = evaluate(base, xt, yt)
    base_macs = count_macs(base, xt[:1])
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "base": {"accuracy": base_acc, "macs": base_macs, "params": count_params(base)}, "rows": [], "unreachable": []}
    if a.resume and a.out.is_file():  # keep the (seed, budget) points an interrupted run already measured
        old = json.loads(a.out.read_text())
        differ = [k for k in SAME_RUN if old["config"].get(k) != results["config"].get(k)]
        if differ:  # rows measured under other settings would be mixed into one table
            print(f"error: --resume: {a.out} was measured with other {', '.join(differ)}; give another --out", file=sys.stderr)
            return 2
        results["rows"], results["unreachable"] = old["rows"], old.get("unreachable", [])
    done = {(r["seed"], r["budget"]) for r in results["rows"]}
    print(f"base: test accuracy {100 * base_acc:.2f}%, {base_macs / 1e6:.1f}M MACs", file=sys.stderr)
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("torch-pruning is not installed: pip install torch-pruning==1.6.1 (its rows are skipped)", file=sys.stderr)
        a.methods = [m for m in a.methods if not m.startswith("tp-")]
    for seed in a.seeds:
        rng = np.random.default_rng(1000 + seed)
        perm = torch.from_numpy(rng.permutation(len(x)))
        cx, cy = x[perm[:a.calib]], y[perm[:a.calib]]
        fx, fy = x[perm[a.calib:a.calib + a.finetune_samples]], y[perm[a.calib:a.calib + a.finetune_samples]]
        for budget in a.budgets:
            if (seed, budget) in done:
                continue
            t0 = time.perf_counter()
            pruned = []
            for method in a.methods:
                torch.manual_seed(seed)
                tp = time.perf_counter()
                if method.startswith("ef"):
                    try:
                        m, ratio = explainfix_prune(base, 1 / budget, method, cx, cy, a.batch_size, seed), None
                    except BadInput as e:  # e.g. the filter criterion cannot free enough channels for 4x
                        results["unreachable"].append({"seed": seed, "budget": budget, "method": method, "why": e.message})
                        print(f"  seed {seed} {budget:>3g}x {method:<18} unreachable: {e.message}", file=sys.stderr)
                        continue
                else:
                    m, ratio = tp_prune(base, int(base_macs / budget), method[3:], cx, cy, a.batch_size)
                recalibrate(m, cx, cy, a.batch_size)
                row = {"seed": seed, "budget": budget, "method": method, "tp_ratio": ratio, "macs": count_macs(m, xt[:1]),
                       "params": count_params(m), "prune_seconds": time.perf_counter() - tp, "acc_oneshot": evaluate(m, xt, yt)}
                if "ft" in a.recoveries:
                    ft = copy.deepcopy(m)
                    train(ft, fx, fy, ft_opts, a.batch_size, seed, f"ft {method} {budget:g}x")
                    row["acc_ft"] = evaluate(ft, xt, yt)
                if "kd" in a.recoveries:
                    kd = copy.deepcopy(m)
                    train(kd, fx, None, kd_opts, a.batch_size, seed, f"kd {method} {budget:g}x",
                          objective=Distillation(copy.deepcopy(base)))
                    row["acc_kd"] = evaluate(kd, xt, yt)
                if "long" in a.recoveries and budget in a.long_budgets and a.long_epochs:
                    long = copy.deepcopy(m)
                    train(long, fx, fy, TrainOptions(epochs=a.long_epochs, lr=a.finetune_lr), a.batch_size, seed,
                          f"ft{a.long_epochs} {method} {budget:g}x")
                    row["acc_ft_long"], row["long_epochs"] = evaluate(long, xt, yt), a.long_epochs
                pruned.append((row, m))
            lats = [{}] * len(pruned) if a.no_bench else \
                latencies([base] + [m for _, m in pruned], a.threads, a.bench_iters)[1:]
            for (row, _), lat in zip(pruned, lats):
                row.update(lat)
                speed = ""
                if lat:
                    row["realized_over_theoretical"] = (1 / lat["latency_ratio"]) / (base_macs / row["macs"])
                    speed = f" speed-up {1 / lat['latency_ratio']:.2f}x (÷ theory {row['realized_over_theoretical']:.2f})"
                accs = " ".join(f"{name} {100 * row[key]:5.2f}%" for key, name in
                                (("acc_oneshot", "one-shot"), ("acc_ft", "ft"), ("acc_kd", "kd"),
                                 ("acc_ft_long", f"ft{row.get('long_epochs')}")) if key in row)
                results["rows"].append(row)
                print(f"  seed {seed} {budget:>3g}x {row['method']:<18} MACs {row['macs'] / base_macs:.3f} acc {accs}{speed}",
                      file=sys.stderr, flush=True)
            print(f"  seed {seed} budget {budget:g}x: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            results["seconds"] = time.perf_counter() - t_start
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(results, indent=2) + "\n")  # after every budget: partial results survive
    print(markdown(results))
    plot(results, a.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
