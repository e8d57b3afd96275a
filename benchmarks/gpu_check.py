"""The CUDA path, checked and timed in one short run (< 5 minutes on one GPU). Run it whenever a GPU is lent:

    .venv/bin/python benchmarks/gpu_check.py                    # resnet50 @224, 256 images, batch 64
    .venv/bin/python benchmarks/gpu_check.py --arch resnet18 --images 128

What it does, on seeded random images (nothing is downloaded; a random-init torchvision model):
1. the channel-criterion saliency (prune/scoring.score_model) on CUDA and on the CPU over the same batches:
   the largest relative difference of the scores, and whether the same channels would be cut at 2x MACs;
2. throughput: saliency images/s ÷ plain forward+backward images/s on CUDA (the price of the scoring), and
   whether the channels-last probe accepts NHWC there and how much faster the saliency pass is with it;
3. the AMP speed-up (``--amp``: bf16 autocast) of saliency and of fine-tuning steps, and how far the AMP
   scores are from the float32 ones;
4. a real prune job on CUDA (--target-macs 2x) whose self-check must pass, and a 1-epoch fine-tune.
Prints one JSON document and writes benchmarks/results/gpu_check.json. Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from explainfix_cli.channels import graph as graph_mod
from explainfix_cli.core.gradients import autocast
from explainfix_cli.core.layout import channels_last
from explainfix_cli.jobs import DataSpec, ModelSpec, finetune_job, prune_job
from explainfix_cli.prune.scoring import score_model
from explainfix_cli.train.finetune import TrainOptions

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    ap.add_argument("--dry-run-on-cpu", action="store_true", help="run every step on the CPU (to test this script)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.dry_run_on_cpu:
        print("no CUDA device: the GPU check needs one (the CPU path is covered by `make test`)", file=sys.stderr)
        return 2
    cuda = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=10).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    bs = args.batch_size
    batches = lambda: ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs))  # noqa: E731
    gm = graph_mod.trace(model, x[:1])
    out: dict = {"gpu": torch.cuda.get_device_name(0) if cuda.type == "cuda" else "none (dry run on CPU)", "torch": torch.__version__, "python": platform.python_version(),
                 "arch": args.arch, "images": args.images, "batch_size": bs, "size": args.size}

    # 1. CUDA scores vs CPU scores on the same batches
    cpu_model = model
    t_cpu = time.perf_counter()
    cpu_scores = score_model(cpu_model, gm, "channel", batches, device="cpu").scores
    out["cpu_saliency_s"] = time.perf_counter() - t_cpu
    gpu_model = model.to(cuda)
    score_model(gpu_model, gm, "channel", lambda: iter([next(batches())]), device=cuda)  # warm-up (cuDNN autotune)
    gpu_scored = {}
    out["cuda_saliency_s"] = timed(lambda: gpu_scored.update(s=score_model(gpu_model, gm, "channel", batches, device=cuda).scores))
    worst = 0.0
    for name, params in cpu_scores.items():
        for pn, a in params.items():
            b = gpu_scored["s"][name][pn]
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)))
    out["cuda_vs_cpu_scores_max_rel"] = worst

    # 2. saliency throughput vs plain forward+backward
    def plain():
        for xb, yb in batches():
            gpu_model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(gpu_model(xb.to(cuda)), yb.to(cuda)).backward()
    plain()
    t_plain = timed(plain)
    out["plain_fwd_bwd_images_per_s"] = args.images / t_plain
    out["saliency_images_per_s"] = args.images / out["cuda_saliency_s"]
    out["saliency_over_plain_time"] = out["cuda_saliency_s"] / t_plain

    # 2b. channels-last (core/layout.py): does the probe accept NHWC under cuDNN's TF32 default, and what it saves
    with channels_last(gpu_model, x[:1].to(cuda)) as used:
        out["channels_last_used"] = used
        score_model(gpu_model, gm, "channel", lambda: iter([next(batches())]), device=cuda)  # warm-up
        out["cuda_saliency_channels_last_s"] = timed(lambda: score_model(gpu_model, gm, "channel", batches, device=cuda))
    out["channels_last_saliency_speedup"] = out["cuda_saliency_s"] / out["cuda_saliency_channels_last_s"]

    # 3. AMP: saliency and training steps
    amp_scored = {}

    def amp_scores():
        with autocast(cuda, True):
            amp_scored.update(s=score_model(gpu_model, gm, "channel", batches, device=cuda).scores)
    amp_scores()
    out["amp_saliency_s"] = timed(amp_scores)
    out["amp_saliency_speedup"] = out["cuda_saliency_s"] / out["amp_saliency_s"]
    worst = 0.0
    for name, params in gpu_scored["s"].items():
        for pn, a in params.items():
            worst = max(worst, float((a - amp_scored["s"][name][pn]).abs().max() / a.abs().max().clamp_min(1e-30)))
    out["amp_vs_fp32_scores_max_rel"] = worst
    opt = torch.optim.SGD(gpu_model.parameters(), lr=1e-3)

    def train(amp: bool):
        gpu_model.train()
        for xb, yb in batches():
            with autocast(cuda, amp):
                loss = torch.nn.functional.cross_entropy(gpu_model(xb.to(cuda)), yb.to(cuda))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        gpu_model.eval()
    train(False)
    t32 = timed(lambda: train(False))
    train(True)
    t16 = timed(lambda: train(True))
    out["train_images_per_s_fp32"], out["train_images_per_s_amp"] = args.images / t32, args.images / t16
    out["amp_train_speedup"] = t32 / t16

    # 4. the jobs end to end on CUDA: prune to 2x (self-check) and a 1-epoch fine-tune with --amp
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(original, tmp / "m.pt")  # the untrained weights (the AMP steps above changed the model)
        np.savez(tmp / "calib.npz", x=x.numpy(), y=y.numpy())
        spec = ModelSpec(tmp / "m.pt", arch=f"torchvision.models:{args.arch}", arch_kwargs='{"num_classes": 10}')
        data = DataSpec(tmp / "calib.npz", input_size=str(args.size), batch_size=bs, amp=True)
        t0 = time.perf_counter()
        from explainfix_cli.prune.options import PruneOptions

        job = prune_job(spec, data, out=tmp / "pruned", device=cuda.type, options=PruneOptions(target_macs="2x"))
        out["prune_job_s"] = time.perf_counter() - t0
        out["prune_self_check"] = job.result.check.status
        out["prune_macs_kept"] = job.result.macs_after / job.result.macs_before
        t0 = time.perf_counter()
        tuned = finetune_job(ModelSpec(tmp / "pruned"), data, TrainOptions(epochs=1), out=tmp / "tuned", device=cuda.type)
        out["finetune_job_s"] = time.perf_counter() - t0
        out["finetune_loss"] = tuned.result.epochs[-1].loss
    if cuda.type != "cuda":
        args.out = args.out.with_name("gpu_check_dry_run.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0 if out["prune_self_check"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
