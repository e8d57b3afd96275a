"""The CUDA path, checked and timed in one short run (< 5 minutes on one GPU). Run it whenever a GPU is lent:

    .venv/bin/python benchmarks/gpu_check.py                    # resnet50 @224, 256 images, batch 64
    .venv/bin/python benchmarks/gpu_check.py --arch resnet18 --images 128

What it does, on seeded random images (nothing is downloaded; a random-init torchvision model):
1. the channel-criterion saliency (prune/scoring.score_model) on CUDA and on the CPU over the same batches:
   the largest relative difference of the scores and, of the channels in every layer's lower half (by the
   CPU scores; pooled over the layers), the fraction the CUDA scores put there too (``half_cut_overlap``),
   with cuDNN's default TF32 and in IEEE float32 (core/model.full_float32);
2. medians of ``--rounds`` interleaved timings: a plain forward+backward (contiguous, float32), and the
   saliency pass and fine-tuning steps each contiguous or channels-last (core/layout.py; whether its probe
   accepts NHWC here) and float32 or AMP (``--amp``: bf16 autocast). "float32" is torch's default here:
   cuDNN convolutions in TF32;
3. how far the AMP scores are from the float32 (TF32) ones;
4. a real prune job on CUDA (--target-macs 2x, with --amp) whose self-check must pass, and a 1-epoch
   fine-tune with --amp.
Prints one JSON document and writes benchmarks/results/gpu_check.json. Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
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
from explainfix_cli.core.model import full_float32
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


def max_rel(a: dict, b: dict) -> float:
    """The largest difference of two score dicts (layer -> parameter -> tensor), relative to each tensor's max."""
    return max(float((a[n][p] - b[n][p]).abs().max() / a[n][p].abs().max().clamp_min(1e-30)) for n in a for p in a[n])


def half_cut_overlap(a: dict, b: dict) -> float:
    """Of the output channels that ``a`` ranks in each layer's lower half (by the channel's summed weight
    saliency), the fraction ``b`` ranks there too: 1.0 means the same channels would go at a per-layer 2x."""
    same = total = 0
    for n in a:
        wa, wb = a[n].get("weight"), b[n].get("weight")
        if wa is None or wa.dim() < 2 or wa.shape[0] < 2:
            continue
        ca, cb = wa.flatten(1).sum(1), wb.flatten(1).sum(1)
        k = ca.numel() // 2
        low_a, low_b = set(ca.argsort()[:k].tolist()), set(cb.argsort()[:k].tolist())
        same, total = same + len(low_a & low_b), total + k
    return same / total if total else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of each variant (medians reported)")
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
    t_cpu = time.perf_counter()
    cpu_scores = score_model(model, gm, "channel", batches, device="cpu").scores
    out["cpu_saliency_s"] = time.perf_counter() - t_cpu
    gpu_model = model.to(cuda)
    # the trace keeps its example: the CUDA scoring needs one traced on the CUDA model (a CPU example fails there)
    gm = graph_mod.trace(gpu_model, x[:1].to(cuda))

    def scores(amp: bool = False, layout: bool = False, ieee: bool = False) -> dict:
        with channels_last(gpu_model, x[:1].to(cuda), enabled=layout), autocast(cuda, amp), \
                (full_float32() if ieee else contextlib.nullcontext()):
            return score_model(gpu_model, gm, "channel", batches, device=cuda).scores

    scores()  # warm-up (cuDNN autotune)
    gpu_scores = scores()
    out["cuda_vs_cpu_scores_max_rel"] = max_rel(cpu_scores, gpu_scores)
    out["cuda_vs_cpu_half_cut_overlap"] = half_cut_overlap(cpu_scores, gpu_scores)
    ieee_scores = scores(ieee=True)  # cuDNN's default TF32 off: how much of the distance is TF32's
    out["cuda_ieee_vs_cpu_scores_max_rel"] = max_rel(cpu_scores, ieee_scores)
    out["cuda_ieee_vs_cpu_half_cut_overlap"] = half_cut_overlap(cpu_scores, ieee_scores)

    # 2. saliency vs plain forward+backward, channels-last and AMP: medians of interleaved rounds
    def plain():
        for xb, yb in batches():
            gpu_model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(gpu_model(xb.to(cuda)), yb.to(cuda)).backward()

    opt = torch.optim.SGD(gpu_model.parameters(), lr=1e-3)

    def train(amp: bool, layout: bool):
        with channels_last(gpu_model, x[:1].to(cuda), enabled=layout):
            gpu_model.train()
            for xb, yb in batches():
                with autocast(cuda, amp):
                    loss = torch.nn.functional.cross_entropy(gpu_model(xb.to(cuda)), yb.to(cuda))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            gpu_model.eval()

    with channels_last(gpu_model, x[:1].to(cuda)) as used:
        out["channels_last_used"] = used  # does the probe accept NHWC under cuDNN's TF32 default
    variants = {"plain": plain,
                "saliency": lambda: scores(), "saliency_channels_last": lambda: scores(layout=True),
                "saliency_amp": lambda: scores(amp=True), "saliency_amp_channels_last": lambda: scores(amp=True, layout=True),
                "train": lambda: train(False, False), "train_channels_last": lambda: train(False, True),
                "train_amp": lambda: train(True, False), "train_amp_channels_last": lambda: train(True, True)}
    for fn in variants.values():  # warm-up: cuDNN picks its kernels for each layout and dtype once
        fn()
    seconds = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):  # interleaved, the order reversed every other round
        for k in names if r % 2 == 0 else names[::-1]:
            seconds[k].append(timed(variants[k]))
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out["rounds"] = args.rounds
    out["median_s"] = med
    out["spread_s"] = {k: [min(v), max(v)] for k, v in seconds.items()}
    out["plain_fwd_bwd_images_per_s"] = args.images / med["plain"]
    out["saliency_images_per_s"] = args.images / med["saliency"]
    out["saliency_over_plain_time"] = med["saliency"] / med["plain"]
    out["channels_last_saliency_speedup"] = med["saliency"] / med["saliency_channels_last"]
    out["channels_last_train_speedup"] = med["train"] / med["train_channels_last"]
    out["amp_saliency_speedup"] = med["saliency"] / med["saliency_amp"]
    out["amp_train_speedup"] = med["train"] / med["train_amp"]
    out["amp_channels_last_saliency_speedup"] = med["saliency"] / med["saliency_amp_channels_last"]
    out["amp_channels_last_train_speedup"] = med["train"] / med["train_amp_channels_last"]
    out["train_images_per_s_fp32"], out["train_images_per_s_amp"] = args.images / med["train"], args.images / med["train_amp"]

    # 3. how far the AMP scores are from the float32 ones
    gpu_model.load_state_dict(original)  # the training steps above changed the weights
    amp_scores, fp32_scores = scores(amp=True), scores()
    out["amp_vs_fp32_scores_max_rel"] = max_rel(fp32_scores, amp_scores)
    out["amp_vs_fp32_half_cut_overlap"] = half_cut_overlap(fp32_scores, amp_scores)

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
