"""Session 19 (issue #28): the ``sensitivity`` rank's rows of ``oneshot_variants.py`` (variant
``rank=sensitivity,ft=1``) next to the grid's default (``ef``) and Torch-Pruning rows of ``fashion_mnist.py``
at the same base, budget and seeds: one-shot, 2-epoch fine-tune (session 17's files, fmnist35_*) and
distillation (at 0.003, session 18's files, fmnist37_kd003_*). Both scripts draw the same calibration and
fine-tune images per seed and test on the same 5,000 images. Prints a markdown table, means over the seeds the
sensitivity rows have.

    .venv/bin/python benchmarks/sensitivity_rows.py benchmarks/results/fmnist39_sensitivity_*.json
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VARIANT = "rank=sensitivity,ft=1"


def grid_rows() -> dict:
    """(arch, budget, method) → seed → {os, ft, kd} from the grid files of sessions 17 and 18."""
    rows: dict = collections.defaultdict(dict)
    for path in glob.glob(str(RESULTS / "fmnist35_*_e4*.json")) + glob.glob(str(RESULTS / "fmnist35_resnet18_*.json")):
        arch = Path(path).stem.split("_e")[0].removeprefix("fmnist35_")
        for r in json.loads(Path(path).read_text())["rows"]:
            rows[(arch, float(r["budget"]), r["method"])].setdefault(r["seed"], {}).update(os=r["acc_oneshot"], ft=r["acc_ft"])
    for path in glob.glob(str(RESULTS / "fmnist37_kd003_*.json")):
        arch = Path(path).stem.split("_e")[0].removeprefix("fmnist37_kd003_")
        for r in json.loads(Path(path).read_text())["rows"]:
            rows[(arch, float(r["budget"]), r["method"])].setdefault(r["seed"], {})["kd"] = r["acc_kd"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="oneshot_variants.py --out files")
    a = p.parse_args(argv)
    new: dict = collections.defaultdict(dict)
    bases = {}
    for path in a.files:
        for r in json.loads(path.read_text())["rows"]:
            if r["variant"] == VARIANT:
                new[(r["arch"], float(r["budget"]))][r["seed"]] = {"os": r["acc_oneshot"], "ft": r["acc_ft"], "kd": r["acc_kd"]}
                bases[r["arch"]] = 100 * r["base_accuracy"]
    grid = grid_rows()

    def mean(cells: dict, key: str, seeds: list) -> float:
        return 100 * sum(cells[s][key] for s in seeds) / len(seeds)

    print("| base | budget | seeds | one-shot: default → sensitivity | 2-epoch fine-tune | 2-epoch distillation | better TP: ft / kd |")
    print("|---|---:|---|---|---|---|---|")
    for (arch, budget), cells in sorted(new.items()):
        seeds = sorted(cells)
        default = grid[(arch, budget, "ef")]
        row = []
        for key in ("os", "ft", "kd"):
            before, after = mean(default, key, seeds), mean(cells, key, seeds)
            row.append(f"{before:.2f} → {after:.2f} ({after - before:+.2f})")
        tp = [max(mean(grid[(arch, budget, m)], key, seeds) for m in ("tp-l1", "tp-taylor")) for key in ("ft", "kd")]
        print(f"| {arch} ({bases[arch]:.2f}) | {budget:g}× | {', '.join(map(str, seeds))} | " + " | ".join(row)
              + f" | {tp[0]:.2f} / {tp[1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
