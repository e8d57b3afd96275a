"""Where the time of `explainfix prune` goes, as ratios to the bare calibration forward+backward.

    .venv/bin/python benchmarks/prune_speed.py                       # resnet50 @224, 64 calibration images
    .venv/bin/python benchmarks/prune_speed.py --arch resnet18 --images 32 --size 128

The *bare* baseline is what any saliency tool must do at least: load the checkpoint, run forward+backward
over the calibration batches (images decoded the same way), and save a safetensors file. After one warm-up
bare pass, ``--rounds`` rounds each time a bare pass and then the prune job end to end (same process, same
data); the reported ratio is the median over rounds (with its range), and the breakdown by the stage timings
the job reports is that of the median round. Sequential single runs drifted by ±0.3 on the shared machine.
Target (issue #2): the whole command ≤ 1.3× (load + fwd+bwd + save).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from explainfix_cli.core.model import iter_spatial_convs
from explainfix_cli.io.checkpoint import load_model
from explainfix_cli.io.codec import safetensors_bytes
from explainfix_cli.io.data import load_calibration, resolve_preprocessing
from explainfix_cli.jobs import DataSpec, ModelSpec, prune_job
from explainfix_cli.prune.options import PruneOptions

ROOT = Path(__file__).resolve().parents[1]


def make_calibration(n: int, root: Path) -> Path:
    """``n`` real images (the fixture's digits eval PNGs, class folders kept)."""
    src = ROOT / "fixtures" / "digits" / "eval"
    files = sorted(src.rglob("*.png"))[:: max(1, len(list(src.rglob("*.png"))) // n)][:n]
    for f in files:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    return root


def bare(ckpt: Path, arch: str, data: Path, size: int, batch_size: int, out: Path, every_weight: bool = False) -> dict[str, float]:
    """Load, fwd+bwd, save. The gradient of the spatial kernels only (what the pct path's saliency needs), or
    with ``every_weight`` of every parameter, like ``loss.backward()`` in a training step (what the channel
    criterion of the budget path needs: it scores 1×1 convs, BatchNorm and the classifier too)."""
    t = {}
    t0 = time.perf_counter()
    loaded = load_model(ckpt, f"torchvision.models:{arch}", {"num_classes": 10})
    t["load"] = time.perf_counter() - t0
    model = loaded.model
    pre = resolve_preprocessing(model, (size, size))
    calib = load_calibration(data, pre)
    weights = list(model.parameters()) if every_weight else [m.weight for _, m in iter_spatial_convs(model)]
    t0 = time.perf_counter()
    for x, y in calib.batches(batch_size):
        out_ = model(x)
        target = torch.nn.functional.one_hot(y, out_.shape[1]).float()
        torch.autograd.grad((out_ * target).sum(), weights)
    t["fwd+bwd"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    (out / "bare.safetensors").write_bytes(safetensors_bytes(model, {}))
    t["save"] = time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--pct", type=float, default=70)
    ap.add_argument("--target-macs", default=None, help="a budget (e.g. 2x) instead of --pct: the default path, "
                    "with BatchNorm re-estimation")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3, help="bare run then prune run, this many times; the median counts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = getattr(torchvision.models, args.arch)(num_classes=10)
        ckpt = tmp / f"{args.arch}.pt"
        torch.save(model.state_dict(), ckpt)
        data = make_calibration(args.images, tmp / "calib")
        bare(ckpt, args.arch, data, args.size, args.batch_size, tmp)  # warm-up: allocator, caches, imports
        rounds = []  # interleaved: a shared machine's drift hits the bare run and the prune run of a round alike
        for r in range(args.rounds):
            base = bare(ckpt, args.arch, data, args.size, args.batch_size, tmp)
            full = bare(ckpt, args.arch, data, args.size, args.batch_size, tmp, every_weight=True)
            t0 = time.perf_counter()
            job = prune_job(
                ModelSpec(ckpt, f"torchvision.models:{args.arch}", '{"num_classes": 10}'),
                DataSpec(data, input_size=str(args.size), batch_size=args.batch_size),
                PruneOptions(target_macs=args.target_macs) if args.target_macs else PruneOptions(pct=args.pct),
                out=tmp / f"pruned{r}", device="cpu",
            )
            total = time.perf_counter() - t0
            rounds.append((total / sum(base.values()), base, job, total, total / sum(full.values())))
    ratios = sorted(r[0] for r in rounds)
    _, base, job, total, _ = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]  # the median round's breakdown
    fb = base["fwd+bwd"]
    bare_total = sum(base.values())
    stages = dict(job.result.timings)
    stages["load+data (rest)"] = total - sum(stages.values())
    print(f"# prune speed: {args.arch} @{args.size}², {args.images} images, batch {args.batch_size}, "
          f"{'target-macs ' + args.target_macs if args.target_macs else f'pct {args.pct:g}'}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'stage':<22}{'seconds':>10}{'÷ bare fwd+bwd':>16}")
    for k, v in base.items():
        print(f"{'bare ' + k:<22}{v:>10.2f}{v / fb:>16.3f}")
    for k, v in stages.items():
        print(f"{'prune ' + k:<22}{v:>10.2f}{v / fb:>16.3f}")
    print(f"{'bare total':<22}{bare_total:>10.2f}{bare_total / fb:>16.3f}")
    print(f"{'prune total':<22}{total:>10.2f}{total / fb:>16.3f}")
    print(f"prune total ÷ (load + fwd+bwd + save) = {total / bare_total:.3f}  (median of {len(ratios)} interleaved "
          f"rounds; range {ratios[0]:.3f}–{ratios[-1]:.3f}; target ≤ 1.3)")
    full_ratios = sorted(r[4] for r in rounds)
    print(f"prune total ÷ (load + fwd+bwd of every weight + save) = {full_ratios[len(full_ratios) // 2]:.3f}  "
          f"(range {full_ratios[0]:.3f}–{full_ratios[-1]:.3f}; the baseline a training step's loss.backward() sets)")
    print(f"params {job.result.params_before:,} → {job.result.params_after:,}; "
          f"MACs ratio {job.result.macs_after / job.result.macs_before:.3f}; self-check {job.result.check.passed}")


if __name__ == "__main__":
    main()
