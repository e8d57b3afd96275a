"""Many processes and big folders (#12): saliency throughput on 1 vs N torchrun processes, and peak memory
as the calibration folder grows 10×, on real Fashion-MNIST images written as PNG files.

    .venv/bin/python benchmarks/scaling.py                    # 2 processes, 1 000 / 10 000 images
    .venv/bin/python benchmarks/scaling.py --procs 4 --images 2000

Each measurement is its own `explainfix prune` process (ResNet-18, random init, 32×32, channel criterion,
--target-macs 2x): the saliency images/s come from the report's stage timings, peak RSS from the kernel's
rusage of that process (torchrun: the largest rank). One process gets every core (torch's default threads);
under torchrun each of N ranks gets cores/N threads, so the comparison is the same machine used two ways.
Needs the Debian package dataset-fashion-mnist. Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_pngs(n: int, root: Path) -> Path:
    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for i in range(n):
        d = root / str(int(labels[i]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i:05d}.png")
    return root


def run(cmd: list[str], env: dict) -> tuple[dict, float, int]:
    """(report, wall seconds, peak RSS MiB of that process tree: wait4's rusage covers the reaped ranks)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err.read()[-2000:]}")
        return json.loads(out.read()), wall, usage.ru_maxrss // 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args()
    if not FMNIST.is_dir():
        print(f"{FMNIST} is missing: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    results: dict = {"cores": os.cpu_count(), "procs": args.procs, "batch_size": args.batch_size, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp / "m.pt")
        small = write_pngs(args.images, tmp / "small")
        big = write_pngs(10 * args.images, tmp / "big")
        base = ["prune", str(tmp / "m.pt"), "--arch", "torchvision:resnet18", "--arch-kwargs", '{"num_classes": 10}',
                "--input-size", "32", "--target-macs", "2x", "--batch-size", str(args.batch_size), "--json", "--force"]
        py = [sys.executable, "-m", "explainfix_cli"]
        rows = []

        def measure(label: str, cmd: list[str], images: int, extra_env: dict | None = None) -> None:
            report, wall, rss = run(cmd, {**env, **(extra_env or {})})
            sal = report["timings"]["saliency"]
            rows.append({"run": label, "images": images, "wall_s": wall, "saliency_s": sal,
                         "saliency_images_per_s": images / sal, "peak_rss_mib": rss})
            print(f"{label:<28} {images:>6} images  saliency {images / sal:7.1f} img/s  wall {wall:6.1f} s  "
                  f"peak RSS {rss} MiB", flush=True)

        measure("1 process", py + base + ["--data", str(small), "-o", str(tmp / "o1")], args.images)
        measure("1 process, --workers 2", py + base + ["--data", str(small), "--workers", "2", "-o", str(tmp / "o2")],
                args.images)
        measure(f"torchrun {args.procs} processes",
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.procs),
                 "-m", "explainfix_cli"] + base + ["--data", str(small), "-o", str(tmp / "o3")], args.images,
                {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.procs))})
        measure("1 process, 10x images", py + base + ["--data", str(big), "-o", str(tmp / "o4")], 10 * args.images)
    one, dist = rows[0], rows[2]
    results.update(rows=rows, scaling=dist["saliency_images_per_s"] / one["saliency_images_per_s"],
                   rss_10x_over_1x=rows[3]["peak_rss_mib"] / one["peak_rss_mib"])
    print(f"saliency scaling {args.procs} processes / 1: {results['scaling']:.2f}x; "
          f"peak RSS 10x images / 1x: {results['rss_10x_over_1x']:.2f}")
    out = ROOT / "benchmarks" / "results" / "scaling.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
