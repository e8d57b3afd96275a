"""Does a MACs reduction become a latency reduction? Original vs pruned, in onnxruntime.

    .venv/bin/python benchmarks/speedup.py                      # resnet50 + mobilenet_v2, pct 50/70/90
    .venv/bin/python benchmarks/speedup.py --archs resnet50 --pcts 90 --batches 1 --iters 20

For each architecture (random init, 10 classes) and pct, prune with saliency on 32 real images (the
fixture's digits, resized to 224² and made RGB), export original and pruned to ONNX, and time both in
onnxruntime (fixed intra-op threads, warm-up, then p50), interleaved: each round times the original and
every variant back to back; the latency ratio is the median over rounds of the same-round ratios (with
its min–max), so drift on a shared machine cancels. Prints MACs ratio, latency ratio and their
quotient *realized ÷ theoretical* = (1 - latency ratio) / (1 - MACs ratio): 1.0 means the latency fell
exactly as much as the MACs did. Issue #4's target: ≥ 0.9 at pct 90 on resnet50.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
import torchvision

from explainfix_cli.deploy.bench import BenchTarget, bench_interleaved, compare_bench
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.deploy.onnx import export_onnx
from explainfix_cli.jobs import DataSpec, ModelSpec, prune_job

ROOT = Path(__file__).resolve().parents[1]


def calibration(root: Path, n: int = 32) -> Path:
    files = sorted((ROOT / "fixtures" / "digits" / "calib").rglob("*.png"))[:: max(1, 100 // n)][:n]
    for f in files:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--pcts", nargs="+", type=float, default=[50, 70, 90])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes to time")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (original, then each variant)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--round-to", nargs="+", type=int, default=[1],
                    help="channel-count multiples to compare (1 = no rounding), e.g. --round-to 1 8 16")
    args = ap.parse_args()
    shape = (3, args.size, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = calibration(tmp / "calib")
        for arch in args.archs:
            torch.manual_seed(0)
            ckpt = tmp / f"{arch}.pt"
            torch.save(getattr(torchvision.models, arch)(num_classes=10).state_dict(), ckpt)
            spec = ModelSpec(ckpt, f"torchvision.models:{arch}", '{"num_classes": 10}')
            base_onnx = tmp / arch / "model.onnx"
            base_onnx.parent.mkdir()
            from explainfix_cli.io.checkpoint import load_model

            original = load_model(ckpt, spec.arch, {"num_classes": 10}).model
            export_onnx(original, torch.randn(2, *shape), base_onnx)
            variants = []
            for pct, rt in [(p, r) for p in args.pcts for r in args.round_to]:
                out = tmp / f"{arch}-{pct:g}-{rt}"
                job = prune_job(spec, DataSpec(data, input_size=str(args.size), batch_size=16), PruneOptions(pct=pct, round_to=rt if rt > 1 else None), out=out, device="cpu")
                export_onnx(job.model, torch.randn(2, *shape), out / "model.onnx")
                variants.append((pct, rt, job.result.macs_after / job.result.macs_before, out / "model.onnx"))
            for b in args.batches:
                # interleaved: every round times the original and each variant back to back, and the ratio
                # is the median over rounds of (variant p50 / original p50 of the same round) — drift of a
                # shared machine hits both sides of a ratio alike
                targets = [BenchTarget(base_onnx, shape)] + [BenchTarget(v[3], shape) for v in variants]
                runs = bench_interleaved(targets, batch_size=b, threads=args.threads, warmup=args.warmup,
                                         iters=args.iters * args.rounds, rounds=args.rounds)
                rel = compare_bench(runs)
                t0 = runs[0].p50_ms
                for i, (pct, rt, macs, _) in enumerate(variants):
                    row = rel[i + 1]
                    lat, spread = row["latency_ratio"], (row["latency_ratio_min"], row["latency_ratio_max"])
                    realized = (1 - lat) / (1 - macs) if macs < 1 else float("nan")
                    t1 = runs[i + 1].p50_ms
                    rows.append((arch, pct, rt, b, macs, t0, t1, lat, spread, realized))
                    print(f"{arch:<13} pct {pct:>4g} round-to {rt} batch {b}: MACs ×{macs:.3f}  latency {t0:.1f} → "
                          f"{t1:.1f} ms ×{lat:.3f} ({spread[0]:.3f}–{spread[1]:.3f})  realized/theoretical {realized:.2f}",
                          flush=True)
    print(f"\n# speedup: onnxruntime {args.threads} threads, {args.size}², {args.rounds} interleaved rounds of "
          f"p50 of {args.iters} after {args.warmup} warm-up")
    print("| model | pct | round-to | batch | MACs ratio | p50 original ms | p50 pruned ms | latency ratio (min–max) "
          "| realized ÷ theoretical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arch, pct, rt, b, macs, t0, t1, lat, (lo, hi), realized in rows:
        print(f"| {arch} | {pct:g} | {rt} | {b} | {macs:.3f} | {t0:.1f} | {t1:.1f} | {lat:.3f} ({lo:.3f}–{hi:.3f}) "
              f"| {realized:.2f} |")


if __name__ == "__main__":
    main()
