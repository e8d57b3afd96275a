"""The tables and the figure of benchmarks/fashion_mnist.py, from its result document (no model is run here)."""
from __future__ import annotations

from pathlib import Path


def summarise(rows: list[dict]) -> dict:
    """(budget, method) → mean (and range) of each measure over the seeds."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["budget"], r["method"]), []).append(r)
    return out


def _cell(vals: list[float], scale: float = 100, fmt: str = "{:.2f}") -> str:
    if not vals:  # a recovery this run did not make (--recoveries)
        return "—"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return fmt.format(scale * mean)
    return fmt.format(scale * mean) + f" ({fmt.format(scale * min(vals))}–{fmt.format(scale * max(vals))})"


def markdown(r: dict) -> str:
    b = r["base"]
    seeds = sorted({row["seed"] for row in r["rows"]})
    lines = [f"Base {r['config'].get('arch', 'resnet18')}, {r['config']['epochs']} epochs (60k training images): test accuracy {100 * b['accuracy']:.2f}% on "
             f"{r['config']['test_samples']} test images, {b['macs'] / 1e6:.1f} M MACs. Mean over seeds {seeds} (range).", "",
             "| budget | method | MACs kept | one-shot % | ft 2 ep. % | kd 2 ep. (no labels) % | ft long % | speed-up | realized ÷ theory |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (budget, method), rows in sorted(summarise(r["rows"]).items()):
        longs = [x["acc_ft_long"] for x in rows if "acc_ft_long" in x]
        timed = [x for x in rows if "latency_ratio" in x]
        lines.append(f"| {budget:g}× | {method} | {_cell([x['macs'] / b['macs'] for x in rows], 1, '{:.3f}')} | "
                     f"{_cell([x['acc_oneshot'] for x in rows])} | {_cell([x['acc_ft'] for x in rows if 'acc_ft' in x])} | "
                     f"{_cell([x['acc_kd'] for x in rows if 'acc_kd' in x])} | "
                     + (f"{_cell(longs)} ({rows[0].get('long_epochs')} ep.)" if longs else "—") + " | "
                     + (f"{_cell([1 / x['latency_ratio'] for x in timed], 1)}× | "
                        f"{_cell([x['realized_over_theoretical'] for x in timed], 1)} |" if timed else "— | — |"))
    lines.append("")
    for u in r.get("unreachable", []):
        lines.append(f"- seed {u['seed']}, {u['budget']:g}×, {u['method']}: not reachable ({u['why']})")
    lines.append(f"Total {r['seconds'] / 60:.1f} min (this run).")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    b = r["base"]
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    groups = summarise(r["rows"])
    methods = sorted({m for _, m in groups})
    for ax, key, title in zip(axes, ("acc_oneshot", "acc_ft", "acc_kd"), ("one-shot", "fine-tune 2 epochs", "distillation 2 epochs, no labels")):
        for method in methods:
            pts = sorted((sum(x["macs"] for x in have) / len(have) / b["macs"], 100 * sum(x[key] for x in have) / len(have))
                         for (bud, m), rows in groups.items() if m == method
                         for have in [[x for x in rows if key in x]] if have)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        ax.plot([1.0], [100 * b["accuracy"]], "*", markersize=13, color="black", label="base")
        ax.set_xscale("log")
        ax.set_xlabel("MACs kept (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=100)
