#!/usr/bin/env python
"""Fashion-MNIST: ExplainFix pruning vs Torch-Pruning at equal MACs, and fixed (GHaar) vs learned filters.

    .venv/bin/python benchmarks/fashion_mnist.py --quick              # minutes on 2 CPU cores
    .venv/bin/python benchmarks/fashion_mnist.py --epochs 3 --finetune-epochs 1 --out results.json

1. Train a ResNet-18 (torchvision, 1-channel 3×3 stride-1 stem, max-pool kept; 28×28 inputs) briefly.
2. For each pct: ExplainFix prune (saliency on ``--calib`` training images) → MACs M. Torch-Pruning
   (MetaPruner, one shot, uniform per-layer ratio, fc ignored) with L1-magnitude and Taylor importance, the
   ratio bisected to the largest MACs ≤ M. All three get the same fine-tune (explainfix.finetune defaults
   unless overridden) and are measured the same way: test accuracy, MACs and params (explainfix.measure),
   onnxruntime p50 latency (batch 1, ``--threads``).
3. The fixed-filter claim: the same network trained from the same init with GHaar fixed spatial filters
   (explainfix.kernels.fix_spatial_conv2d) vs learned ones, same schedule.

Data: the Debian package's IDX files (``--data-dir``, default /usr/share/datasets/fashion-mnist), parsed here.
Torch-Pruning (``pip install torch-pruning==1.6.1``) is needed for step 2 only; it is not an explainfix dependency.
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

from explainfix_cli.deploy.bench import BenchTarget, bench_interleaved, compare_bench  # noqa: E402
from explainfix_cli.deploy.onnx import export_onnx  # noqa: E402
from explainfix_cli.train.finetune import TrainOptions, accuracy, finetune, predict, tensor_batches  # noqa: E402
from explainfix_cli.explain.kernels import fix_spatial_conv2d  # noqa: E402
from explainfix_cli.core.model import count_macs, count_params  # noqa: E402
from explainfix_cli.prune.pipeline import prune_model  # noqa: E402

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
    return (xt - MEAN) / STD, torch.from_numpy(y[idx].astype(np.int64))


# ---------------------------------------------------------------------------------------------- model
def resnet18_fmnist() -> nn.Module:
    from torchvision.models import resnet18

    m = resnet18(num_classes=CLASSES)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
    return m


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 256) -> float:
    batches = ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs))
    return accuracy(*predict(model, batches))


def train(model: nn.Module, x, y, opts: TrainOptions, bs: int, seed: int, label: str) -> dict:
    batches, steps = tensor_batches(x, y, bs, seed=seed)
    t0 = time.perf_counter()

    def tick(s):
        if s.step % 20 == 0 or s.step == s.steps:
            print(f"\r  {label}: epoch {s.epoch}/{s.epochs} step {s.step}/{s.steps} loss {s.loss:.3f} "
                  f"acc {100 * s.accuracy:.1f}%   ", end="", file=sys.stderr, flush=True)

    res = finetune(model, batches, opts, steps_per_epoch=steps, on_step=tick, seed=seed)
    print(file=sys.stderr)
    return {"seconds": time.perf_counter() - t0, "train_loss": res.epochs[-1].loss,
            "train_accuracy": res.epochs[-1].accuracy, "trainable_params": res.trainable_params}


def latencies(models: list[nn.Module], threads: int, iters: int) -> list[dict]:
    """onnxruntime batch-1 latency of ``models`` timed interleaved (5 rounds): p50 ms and the median of the
    same-round ratios to the first model."""
    with tempfile.TemporaryDirectory() as d:
        targets = []
        for i, model in enumerate(models):
            path = Path(d) / f"m{i}.onnx"
            export_onnx(model.eval(), torch.randn(2, 1, 28, 28), path)
            targets.append(BenchTarget(path, (1, 28, 28)))
        rows = compare_bench(bench_interleaved(targets, threads=threads, iters=iters, warmup=5, rounds=5))
    return [{"latency_ms": r["p50_ms"], "latency_ratio": r["latency_ratio"]} for r in rows]


# -------------------------------------------------------------------------------------------- pruning
def explainfix_prune(model: nn.Module, pct: float, cx, cy, bs: int, seed: int) -> nn.Module:
    m = copy.deepcopy(model).eval()
    batches = lambda: ((cx[i:i + bs], cy[i:i + bs]) for i in range(0, len(cx), bs))  # noqa: E731
    prune_model(m, pct, example=cx[:1], batches=batches, criterion="saliency", check_inputs=cx[:8], seed=seed)
    return m


def tp_prune(model: nn.Module, target_macs: int, criterion: str, cx, cy, bs: int, steps: int = 14) -> tuple[nn.Module, float]:
    """Torch-Pruning one shot at the largest uniform ratio whose MACs ≤ target (bisection on the ratio)."""
    import torch_pruning as tp

    example = cx[:1]

    def prune_at(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        if criterion == "taylor":
            imp = tp.importance.GroupTaylorImportance()
            m.zero_grad()
            for i in range(0, len(cx), bs):  # gradients of the loss on the calibration set
                nn.functional.cross_entropy(m(cx[i:i + bs]), cy[i:i + bs]).backward()
        else:
            imp = tp.importance.GroupMagnitudeImportance(p=1)
        pruner = tp.pruner.MetaPruner(m, example, importance=imp, pruning_ratio=ratio, ignored_layers=[m.fc])
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m

    lo, hi, best = 0.0, 0.999, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = prune_at(mid)
        if count_macs(m, example) <= target_macs:
            best, hi = (m, mid), mid
        else:
            lo = mid
    if best is None:
        best = (prune_at(hi), hi)
    return best


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for a CPU: 2000 train, 1000 test, 2 epochs; "
                   "fine-tune 1 epoch on 1000; 128 calibration images; 20 latency runs")
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--train-samples", type=int, default=None, help="default 60000 (quick: 2000)")
    p.add_argument("--test-samples", type=int, default=None, help="default 10000 (quick: 1000)")
    p.add_argument("--epochs", type=int, default=None, help="base training epochs (default 3, quick 2)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-samples", type=int, default=None, help="fine-tune on the first N training samples (default all)")
    p.add_argument("--calib", type=int, default=None, help="training images for saliency / Taylor gradients (default 256, quick 128)")
    p.add_argument("--pcts", type=float, nargs="+", default=[50, 80, 90, 95, 99])
    p.add_argument("--criteria", nargs="+", default=["l1", "taylor"], choices=["l1", "taylor"])
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed-vs-learned filters experiment")
    p.add_argument("--no-prune", action="store_true", help="skip the pruning comparison")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="base training: AdamW lr (cosine)")
    p.add_argument("--ft-optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--ft-lr", type=float, default=None, help="fine-tune lr (default: explainfix's for the optimizer)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    p.add_argument("--bench-iters", type=int, default=None, help="timed onnxruntime runs (default 50, quick 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    a = p.parse_args(argv)
    n_train = a.train_samples or (2000 if a.quick else 60000)
    n_test = a.test_samples or (1000 if a.quick else 10000)
    epochs = a.epochs or (2 if a.quick else 3)
    a.calib = a.calib or (128 if a.quick else 256)
    a.bench_iters = a.bench_iters or (20 if a.quick else 50)
    if a.quick and a.finetune_samples is None:
        a.finetune_samples = 1000
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.perf_counter()

    x, y = load_split(a.data_dir, "train", n_train, a.seed)
    xt, yt = load_split(a.data_dir, "test", n_test, a.seed)
    cx, cy = x[:a.calib], y[:a.calib]
    fx, fy = (x[:a.finetune_samples], y[:a.finetune_samples]) if a.finetune_samples else (x, y)
    base_opts = TrainOptions(epochs=epochs, optimizer="adamw", lr=a.lr)
    ft_opts = TrainOptions(epochs=a.finetune_epochs, optimizer=a.ft_optimizer, lr=a.ft_lr)
    config = {"train_samples": len(x), "test_samples": len(xt), "epochs": epochs, "finetune_epochs": a.finetune_epochs,
              "finetune_samples": len(fx), "calib": len(cx), "batch_size": a.batch_size, "base": "AdamW lr %g cosine" % a.lr,
              "finetune": f"{ft_opts.resolved().optimizer} lr {ft_opts.resolved().lr:g} cosine", "threads": a.threads,
              "seed": a.seed, "torch": torch.__version__}
    print(f"config: {json.dumps(config)}", file=sys.stderr)
    results: dict = {"config": config}

    init = resnet18_fmnist()
    model = copy.deepcopy(init)
    results["train"] = train(model, x, y, base_opts, a.batch_size, a.seed, "train ResNet-18 (learned filters)")
    base_acc = evaluate(model, xt, yt)
    base = {"accuracy": base_acc, "macs": count_macs(model, xt[:1]), "params": count_params(model),
            **latencies([model], a.threads, a.bench_iters)[0]}
    results["base"] = base
    print(f"base: acc {100 * base_acc:.2f}%  MACs {base['macs'] / 1e6:.1f}M  params {base['params'] / 1e6:.2f}M  "
          f"p50 {base['latency_ms']:.3f} ms", file=sys.stderr)

    if not a.no_fixed:
        fixed = copy.deepcopy(init)
        fix_spatial_conv2d(fixed, "ghaar", seed=a.seed)
        tr = train(fixed, x, y, base_opts, a.batch_size, a.seed, "train ResNet-18 (GHaar fixed filters)")
        results["fixed_vs_learned"] = {
            "learned": {"accuracy": base_acc, "trainable_params": results["train"]["trainable_params"],
                        "seconds": results["train"]["seconds"]},
            "ghaar_fixed": {"accuracy": evaluate(fixed, xt, yt), "trainable_params": tr["trainable_params"],
                            "seconds": tr["seconds"]},
        }
        print(f"fixed vs learned: {json.dumps(results['fixed_vs_learned'])}", file=sys.stderr)

    rows = []
    if not a.no_prune:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print("torch-pruning is not installed: pip install torch-pruning==1.6.1 (comparison skipped)", file=sys.stderr)
            a.criteria = []
        for pct in a.pcts:
            t0 = time.perf_counter()
            ef = explainfix_prune(model, pct, cx, cy, a.batch_size, a.seed)
            target = count_macs(ef, xt[:1])
            candidates = [("explainfix", ef, None)]
            for crit in a.criteria:
                m, ratio = tp_prune(model, target, crit, cx, cy, a.batch_size)
                candidates.append((f"tp-{crit}", m, ratio))
            pct_rows = []
            for method, m, ratio in candidates:
                row = {"pct": pct, "method": method, "tp_ratio": ratio, "macs": count_macs(m, xt[:1]),
                       "params": count_params(m), "acc_pruned": evaluate(m, xt, yt)}
                train(m, fx, fy, ft_opts, a.batch_size, a.seed, f"fine-tune {method} @ {pct:g}%")
                row["acc_finetuned"] = evaluate(m, xt, yt)
                pct_rows.append(row)
            # the base and this pct's models timed interleaved: their ratios share the machine's state
            for row, lat in zip(pct_rows, latencies([model] + [c[1] for c in candidates], a.threads, a.bench_iters)[1:]):
                row.update(lat)
                rows.append(row)
                print(f"  {pct:>4g}% {row['method']:<11} MACs {row['macs'] / 1e6:7.2f}M params {row['params'] / 1e6:6.3f}M "
                      f"acc {100 * row['acc_pruned']:5.2f}% → {100 * row['acc_finetuned']:5.2f}%  "
                      f"p50 {row['latency_ms']:.3f} ms (×{row['latency_ratio']:.2f} of the base)", file=sys.stderr)
            print(f"  pct {pct:g}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    results["prune"] = rows
    results["seconds"] = time.perf_counter() - t_start

    print(markdown(results))
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _x(ratio: float | None) -> str:
    return "—" if ratio is None else f"×{ratio:.2f}"


def markdown(r: dict) -> str:
    b = r["base"]
    lines = [f"Base ResNet-18: test accuracy {100 * b['accuracy']:.2f}%, {b['macs'] / 1e6:.1f} M MACs, "
             f"{b['params'] / 1e6:.2f} M params, onnxruntime p50 {b['latency_ms']:.3f} ms.", ""]
    if r.get("prune"):
        lines += ["| pct | method | MACs | params | acc. pruned | acc. fine-tuned | p50 latency (× base, interleaved) |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for row in r["prune"]:
            name = row["method"] + (f" (ratio {row['tp_ratio']:.3g})" if row["tp_ratio"] is not None else "")
            lines.append(f"| {row['pct']:g} | {name} | {row['macs'] / 1e6:.2f} M ({row['macs'] / b['macs']:.1%}) | "
                         f"{row['params'] / 1e6:.3f} M | {100 * row['acc_pruned']:.2f}% | {100 * row['acc_finetuned']:.2f}% | "
                         f"{row['latency_ms']:.3f} ms ({_x(row.get('latency_ratio'))}) |")
        lines.append("")
    fv = r.get("fixed_vs_learned")
    if fv:
        lines += ["| spatial filters | test accuracy | trainable params | train time |", "|---|---:|---:|---:|"]
        for k, label in (("learned", "learned"), ("ghaar_fixed", "GHaar, fixed")):
            lines.append(f"| {label} | {100 * fv[k]['accuracy']:.2f}% | {fv[k]['trainable_params'] / 1e6:.3f} M | "
                         f"{fv[k]['seconds']:.0f} s |")
        lines.append("")
    lines.append(f"Total {r['seconds'] / 60:.1f} min; config {json.dumps(r['config'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
