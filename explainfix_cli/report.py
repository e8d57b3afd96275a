"""Rendering for people: rich tables on stderr, built from the library's result objects.

Nothing here computes; everything here may be swapped for ``--json`` output without losing information.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True, highlight=False)


def human(n: float | int | None, unit: str = "") -> str:
    if n is None:
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def ratio(after: float, before: float) -> str:
    return "—" if not before else f"{after / before:.3f}×"


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A callback ``(stage, completed, total)`` drawing one bar per stage on stderr."""
    if not enabled:
        yield None
        return
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
    tasks: dict[str, Any] = {}

    def update(stage: str, completed: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=completed, total=total)

    with bars:
        yield update


def _changed(before: int, after: int) -> str:
    return f"{before}" if before == after else f"{before} → [bold green]{after}[/]"


def render_prune(job: Any) -> None:
    r = job.result
    table = Table(title=f"explainfix prune · {r.pct:g}% of spatial filters zeroed by {r.criterion}", title_justify="left")
    for col in ("layer", "kind", "in", "out", "filters zeroed"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for row in r.layers:
        if row.in_before == row.in_after and row.out_before == row.out_after and not row.zeroed:
            continue
        zeroed = f"{row.zeroed}/{row.filters}" if row.filters else "—"
        table.add_row(row.name, row.kind, _changed(row.in_before, row.in_after), _changed(row.out_before, row.out_after), zeroed)
    hidden = sum(1 for row in r.layers if row.in_before == row.in_after and row.out_before == row.out_after and not row.zeroed)
    if hidden:
        table.caption = f"{hidden} unchanged layers not shown"
    console.print(table)

    totals = Table(show_header=True, title="totals", title_justify="left")
    for col in ("", "before", "after", "ratio"):
        totals.add_column(col, justify="left" if not col else "right")
    totals.add_row("params", human(r.params_before), human(r.params_after), ratio(r.params_after, r.params_before))
    totals.add_row("MACs", human(r.macs_before), human(r.macs_after), ratio(r.macs_after, r.macs_before))
    totals.add_row("spatial filters", str(r.filters_total), f"{r.filters_total - r.filters_zeroed} kept", "")
    totals.add_row("channels", str(r.channels_before), str(r.channels_before - r.channels_removed),
                   ratio(r.channels_before - r.channels_removed, r.channels_before))
    if r.agreement is not None:
        totals.add_row("top-1 agreement", "100.0%", pct(r.agreement), f"on {r.eval_samples} {r.eval_source}")
    if r.accuracy_before is not None:
        totals.add_row("accuracy", pct(r.accuracy_before), pct(r.accuracy_after), "")
    console.print(totals)
    c = r.check
    folds = (f"{r.nonzero_folds} constant channel·consumer pairs folded into biases"
             + (f", {r.inexact_folds} into zero-padded convs (differ at borders)" if r.inexact_folds else ""))
    console.print(
        f"self-check [bold green]passed[/]: pruned ≡ masked equivalent (max rel err {c.pruned_vs_masked_rel:.1e}); "
        f"distance to zeroed model {c.masked_vs_zeroed_rel:.1e} ({folds}) on {c.samples} inputs"
    )
    console.print(f"wrote {job.out}/ (model.safetensors, explainfix.json, report.json)")


def render_info(info: dict) -> None:
    console.print(f"[bold]{info['model']}[/] ({info['source_format']})")
    summary = Table(show_header=False)
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    summary.add_row("params", human(info["params"]))
    summary.add_row("MACs (1 input)", f"{human(info['macs'])} at {'×'.join(map(str, info['input_shape']))}")
    summary.add_row("spatial conv layers", str(info["spatial_layers"]))
    summary.add_row("spatial filters", f"{info['spatial_filters']} ({info['zero_spatial_filters']} all-zero)")
    g = info["channel_groups"]
    if g.get("traced"):
        summary.add_row("prunable channel groups", f"{g['prunable']} of {g['spaces']} ({g['prunable_channels']} channels)")
    else:
        summary.add_row("prunable channel groups", f"[yellow]none: {g['reason']}[/]")
    if info["edits"]:
        summary.add_row("structural edits in recipe", str(info["edits"]))
    if info.get("frozen_params"):
        summary.add_row("frozen (fixed) tensors", str(info["frozen_params"]))
    console.print(summary)
    layers = Table(title="spatial conv layers", title_justify="left")
    for col in ("layer", "kernel", "in", "out", "groups", "filters"):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for layer in info["layers"]:
        layers.add_row(layer["name"], "×".join(map(str, layer["kernel"])), str(layer["in"]), str(layer["out"]),
                       str(layer["groups"]), str(layer["filters"]))
    console.print(layers)


def _bands(shares: dict) -> str:
    return " · ".join(f"{100 * shares[b]:4.1f}" for b in ("low", "mid", "high"))


def render_explain(job: Any) -> None:
    doc = job.doc
    sal = doc["saliency"]
    table = Table(title="ExplainSteer · % of spectral energy per layer", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("kernel", justify="right")
    table.add_column("low · mid · high", justify="right")
    if sal:
        table.add_column("with saliency", justify="right")
    for layer in doc["layers"]:
        row = [layer["name"], "×".join(map(str, layer["kernel_shape"])), _bands(layer["without_saliency"]["shares"])]
        if sal and layer["with_saliency"]:
            row.append(_bands(layer["with_saliency"]["shares"]))
        table.add_row(*row)
    table.caption = "e^0 (e^d for non-square kernels) in thirds, low→high frequency" + (
        f"; saliency over {doc['num_batches']} batches" if sal else "; --data adds saliency-weighted spectra")
    console.print(table)
    for note in doc.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {job.out}/ (spectra.png, spectra.json)")
