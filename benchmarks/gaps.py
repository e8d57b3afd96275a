"""Issue #28's scoreboard: explainfix's default against the better Torch-Pruning criterion, from the JSON files of
benchmarks/fashion_mnist.py (no model is run here).

For every base file: per budget, the mean over the seeds both tools have of one-shot / 2-epoch fine-tune / 2-epoch
distillation / long fine-tune accuracy, for ``ef`` (or ``--method``) and for the better of ``tp-l1`` and
``tp-taylor`` *per column* (the peer's best case), their difference with its sign, and the count of cells where
explainfix is at or above. One-shot at 2× is also given against the base (the issue's goal: within 2 points).
Files of the same base and settings (a run split by seeds or budgets over several processes) are merged.

    .venv/bin/python benchmarks/gaps.py benchmarks/results/fmnist35_*.json
    .venv/bin/python benchmarks/gaps.py benchmarks/results/fmnist35_*.json --columns-from benchmarks/results/fmnist37_kd003_*.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import SAME_RUN  # noqa: E402  (what makes two result files one base's rows)

COLUMNS = (("acc_oneshot", "one-shot"), ("acc_ft", "ft 2"), ("acc_kd", "kd 2"), ("acc_ft_long", "ft long"))
PEERS = ("tp-l1", "tp-taylor")


def means(rows: list[dict], method: str, budget: float, key: str, seeds: set[int]) -> float | None:
    vals = [r[key] for r in rows if r["method"] == method and r["budget"] == budget and r["seed"] in seeds and key in r]
    return 100 * sum(vals) / len(vals) if vals and len(vals) == len(seeds) else None


def fmt(v: float | None, sign: bool = False) -> str:
    return "—" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def table(doc: dict, method: str) -> tuple[str, list[float], dict[float, float]]:
    """The markdown table of one base and the gaps (explainfix − better peer) of its cells: after recovery,
    and one-shot (by budget: files of one base at other recovery settings share their one-shot cells)."""
    rows, base = doc["rows"], 100 * doc["base"]["accuracy"]
    cfg = doc["config"]
    ft_lr = cfg.get("finetune_lr") or 0.01  # the package's fine-tune default in every session so far
    # files before session 18 record no distill_lr: the distillation ran at the fine-tune's rate then
    rates = f"fine-tune lr {ft_lr:g}, distillation lr {cfg.get('distill_lr') or ft_lr:g}"
    only = f"; only {', '.join(cfg['recoveries'])}" if cfg.get("recoveries") and len(cfg["recoveries"]) < 3 else ""
    only += f"; {', '.join(cfg['replaced'])} from a later run" if cfg.get("replaced") else ""
    lines = [f"**{cfg.get('arch', 'resnet18')}, {cfg['epochs']}-epoch base ({base:.2f} %)** ({rates}{only})", "",
             f"| budget | seeds | {method} (one-shot / ft / kd / ft long) | better TP | {method} − better TP |",
             "|---:|---|---|---|---|"]
    gaps: list[float] = []
    oneshot: dict[float, float] = {}
    for budget in sorted({r["budget"] for r in rows}):
        # only the seeds every method has at this budget: a half-finished run compares like with like
        have = [{r["seed"] for r in rows if r["method"] == m and r["budget"] == budget} for m in (method, *PEERS)]
        seeds = set.intersection(*have)
        if not seeds:
            continue
        ours, peer, diff = [], [], []
        for key, _ in COLUMNS:
            e = means(rows, method, budget, key, seeds)
            t = [v for v in (means(rows, p, budget, key, seeds) for p in PEERS) if v is not None]
            best = max(t) if t else None
            ours.append(fmt(e))
            peer.append(fmt(best))
            d = None if e is None or best is None else e - best
            diff.append(fmt(d, sign=True))
            if d is not None and key == "acc_oneshot":
                oneshot[budget] = d
            elif d is not None:
                gaps.append(d)
        lines.append(f"| {budget:g}× | {','.join(map(str, sorted(seeds)))} | {' / '.join(ours)} | "
                     f"{' / '.join(peer)} | {' / '.join(diff)} |")
    two = [r["acc_oneshot"] for r in rows if r["method"] == method and r["budget"] == 2]
    if two:
        lines += ["", f"One-shot at 2×: {100 * sum(two) / len(two):.2f} % over {len(two)} seed(s), "
                      f"{100 * sum(two) / len(two) - base:+.2f} from the base (goal: ≥ −2)."]
    return "\n".join(lines), gaps, oneshot


def load(files: list[Path]) -> dict[tuple, dict]:
    """Result documents by base and settings; files of one base and settings (a run split over processes) merged."""
    bases: dict[tuple, dict] = {}
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: {e}") from None
        if not isinstance(doc, dict) or not {"rows", "base", "config"} <= doc.keys():
            raise ValueError(f"{f}: not a result of benchmarks/fashion_mnist.py (no rows/base/config)")
        key = tuple(json.dumps(doc["config"].get(k)) for k in SAME_RUN) + (doc["base"]["accuracy"],)  # lists too
        if key in bases:
            seen = {(r["seed"], r["budget"], r["method"]) for r in bases[key]["rows"]}
            twice = [r for r in doc["rows"] if (r["seed"], r["budget"], r["method"]) in seen]
            if twice:
                r = twice[0]
                raise ValueError(f"{f}: seed {r['seed']}, {r['budget']:g}×, {r['method']} is in an earlier file too")
            bases[key]["rows"] = bases[key]["rows"] + doc["rows"]
        else:
            bases[key] = doc
    return bases


def replace_columns(bases: dict[tuple, dict], later: dict) -> None:
    """The recovery columns ``later`` ran replace those of the one loaded document of the same base, row by row
    (every row it has must be there, its one-shot accuracy the same: the same prune), and its header says so."""
    cfg = later["config"]
    same = [d for d in bases.values() if (d["config"].get("arch"), d["config"]["epochs"], d["base"]["accuracy"])
            == (cfg.get("arch"), cfg["epochs"], later["base"]["accuracy"])]
    if len(same) != 1:
        raise ValueError(f"--columns-from: {cfg.get('arch')} {cfg['epochs']}-epoch matches {len(same)} loaded runs, not 1")
    doc = same[0]
    differ = [k for k in SAME_RUN if k not in ("finetune_lr", "distill_lr", "recoveries", "long_epochs")
              and doc["config"].get(k) != cfg.get(k)]
    if differ:
        raise ValueError(f"--columns-from: {cfg.get('arch')} {cfg['epochs']}-epoch was run with other {', '.join(differ)}")
    later_keys = {(r["seed"], r["budget"], r["method"]) for r in later["rows"]}
    missing = [r for r in doc["rows"] if (r["seed"], r["budget"], r["method"]) not in later_keys]
    if missing:  # a partial rerun would leave cells at the old settings under the new header
        r = missing[0]
        raise ValueError(f"--columns-from: the later {cfg.get('arch')} run has no seed {r['seed']}, {r['budget']:g}×, "
                         f"{r['method']} ({len(missing)} rows missing)")
    keys = [k for k, _ in COLUMNS[1:] if any(k in r for r in later["rows"])]
    rows = {(r["seed"], r["budget"], r["method"]): r for r in doc["rows"]}
    for r in later["rows"]:
        old = rows.get((r["seed"], r["budget"], r["method"]))
        if old is None or old["acc_oneshot"] != r["acc_oneshot"]:
            raise ValueError(f"--columns-from: seed {r['seed']}, {r['budget']:g}×, {r['method']} is not the same prune "
                             "in the run it would replace")
        old.update({k: r[k] for k in keys if k in r})
    doc["config"] = {**doc["config"], "distill_lr": cfg.get("distill_lr") if "acc_kd" in keys else doc["config"].get("distill_lr"),
                     "replaced": [name for k, name in COLUMNS if k in keys]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", type=Path, nargs="+", help="JSON files written by benchmarks/fashion_mnist.py")
    p.add_argument("--method", default="ef", help="the explainfix method to score (default: ef, the default)")
    p.add_argument("--columns-from", type=Path, nargs="*", default=[],
                   help="later runs of some recoveries only (fashion_mnist.py --recoveries): their columns replace "
                        "those of the FILES of the same base, row by row")
    a = p.parse_args(argv)
    try:
        bases = load(a.files)
        for doc in load(a.columns_from).values():
            replace_columns(bases, doc)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total: list[float] = []
    oneshots: dict[tuple, float] = {}  # one cell per base and budget, however many recovery settings were run on it
    for doc in bases.values():
        text, gaps, oneshot = table(doc, a.method)
        total += gaps
        base_key = (doc["config"].get("arch"), doc["config"]["epochs"], doc["base"]["accuracy"])
        oneshots.update({(*base_key, b): d for b, d in oneshot.items()})
        print(text + "\n")
    total_oneshot = list(oneshots.values())
    ahead = sum(g >= 0 for g in total)
    print(f"One-shot, {a.method} is at or above the better Torch-Pruning criterion in "
          f"{sum(g >= 0 for g in total_oneshot)} of {len(total_oneshot)} cells.")
    print(f"After recovery, {a.method} is at or above the better Torch-Pruning criterion in {ahead} of {len(total)} cells"
          + (f"; behind: {', '.join(f'{g:+.2f}' for g in sorted(g for g in total if g < 0))}." if ahead < len(total) else "."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
