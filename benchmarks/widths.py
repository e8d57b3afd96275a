#!/usr/bin/env python
"""Which widths each method keeps at one budget: explainfix (any ``ef`` / ``ef:rank=R`` method of
fashion_mnist.py) next to Torch-Pruning L1 / Taylor, layer by layer, on a cached fashion_mnist.py base.

    .venv/bin/python benchmarks/widths.py --arch mobilenet_v3_small --budget 6 ef tp-l1 tp-taylor

Same calibration images (512, seed 0) and pruning calls as benchmarks/fashion_mnist.py; no recovery, no
accuracy: it answers "do the two tools keep different layers?" before asking which channels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist as fm  # noqa: E402

from explainfix_cli.core.model import count_macs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("methods", nargs="+")
    p.add_argument("--arch", choices=sorted(fm.ARCHES), default="mobilenet_v3_small")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--budget", type=float, default=6)
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    base_file = fm.REPO / "benchmarks" / "results" / f"fmnist_{a.arch}_e{a.epochs}.pt"
    if not base_file.is_file():
        print(f"no cached base {base_file}: run fashion_mnist.py --arch {a.arch} --epochs {a.epochs} first", file=sys.stderr)
        return 2
    x, y = fm.load_split(a.data_dir, "train", 512, 0)
    base = fm.ARCHES[a.arch]()
    base.load_state_dict(torch.load(base_file, map_location="cpu", weights_only=True))
    base.eval()
    macs = count_macs(base, x[:1])
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    widths = {}
    for method in a.methods:
        if method.startswith("tp-"):
            m, _ = fm.tp_prune(base, int(macs / a.budget), method.split("-", 1)[1], x, y, 64)
        else:
            m = fm.explainfix_prune(base, 1 / a.budget, method, x, y, 64, 0)
        widths[method] = {n: getattr(mod, "out_channels", getattr(mod, "out_features", 0)) for n, mod in m.named_modules() if isinstance(mod, kinds)}
        print(f"{method}: MACs kept {count_macs(m, x[:1]) / macs:.4f}", file=sys.stderr)
    print("| layer | base | " + " | ".join(a.methods) + " |")
    print("|---|---:|" + "---:|" * len(a.methods))
    for n, mod in base.named_modules():
        if isinstance(mod, kinds):
            full = getattr(mod, "out_channels", getattr(mod, "out_features", 0))
            print(f"| {n} | {full} | " + " | ".join(str(widths[k].get(n, "—")) for k in a.methods) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
