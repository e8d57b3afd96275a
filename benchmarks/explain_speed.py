"""Cost of `explain --data` against prune's saliency pass on the same model and data.

    .venv/bin/python benchmarks/explain_speed.py                    # resnet50 @224, 64 images
    .venv/bin/python benchmarks/explain_speed.py --arch resnet18 --size 128

Both walk the calibration batches with one forward+backward each; explain also projects every layer's
kernels on the DCT basis per batch (the reference's per-batch e^1/e^0). Each pass runs twice and the
faster time counts. Issue #5's target: explain ≤ ~1.2× the saliency pass.
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision

from explainfix_cli.core.gradients import onehot_targets
from explainfix_cli.prune.saliency import get_spatial_filter_saliency
from explainfix_cli.io.data import load_calibration, resolve_preprocessing
from explainfix_cli.explain.spectra import explain_model

from prune_speed import ROOT


def timed(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=10).eval()
    pre = resolve_preprocessing(model, (args.size, args.size))
    calib = load_calibration(ROOT / "fixtures" / "digits" / "eval", pre)
    calib.files, calib.labels = calib.files[: args.images], calib.labels[: args.images]
    batches = [b for b in calib.batches(args.batch_size)]  # decode once: time the passes, not PNG decoding
    t_sal = timed(lambda: get_spatial_filter_saliency(model, batches, "cpu", target_fn=onehot_targets))
    t_exp = timed(lambda: explain_model(model, batches, "cpu", target_fn=onehot_targets))
    print(f"# explain speed: {args.arch} @{args.size}², {args.images} images, batch {args.batch_size}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"prune saliency pass      {t_sal:8.2f} s")
    print(f"explain (both spectra)   {t_exp:8.2f} s")
    print(f"explain ÷ saliency       {t_exp / t_sal:8.3f}  (target ≤ ~1.2)")


if __name__ == "__main__":
    main()
