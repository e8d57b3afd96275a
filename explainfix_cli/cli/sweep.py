"""`explainfix sweep`: one model, several budgets, one scoring pass; a table and tradeoff.png."""
from __future__ import annotations

from typing import Any

from dataclasses import dataclass
from typing import Annotated

import typer

from .. import jobs
from .base import app, command
from .options import OUTPUT, BenchIters, Device, Json, ModelArg, Output, Ranking, Recovery, Seed, Source, Timing, Tuning
from .options import Compare, Quantize, WeightDtype, grouped


@dataclass
class SweepTiming(Timing):
    bench_iters: BenchIters = 30  # per model and round: every point is timed


@dataclass
class SweepOutput(Output):
    save_models: Annotated[bool, typer.Option("--save-models", rich_help_panel=OUTPUT,
                                              help="Also write each point's explainfix directory to OUT/points/<budget>/.")] = False
    dtype: WeightDtype = "keep"


@app.command()
@command
@grouped
def sweep(
    model: ModelArg,
    *,
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated budgets, each 4x (4× fewer) or 0.25 (kept).")] = "2x,3x,4x,10x",
    metric: Annotated[str, typer.Option("--metric", help="What the budgets count: macs | params.")] = "macs",
    ranking: Ranking, inputs: Tuning, recovery: Recovery, timing: SweepTiming, source: Source, output: SweepOutput,
    quantize: Quantize = None, compare: Compare = None, device: Device = "auto", seed: Seed = 0, json_out: Json = False,
) -> Any:
    """See the trade-off: prune to every budget of --targets from one scoring pass, measure each, draw tradeoff.png.

    Writes OUT/ with sweep.md (the table), sweep.json and tradeoff.png (accuracy against MACs kept and against
    measured latency, the original marked). Every point is exact (the self-check runs for each). --compare
    torch-pruning adds Torch-Pruning's point at each budget, recovered and timed the same way.

    Example: explainfix sweep model.pt --arch torchvision.models:resnet18 --data calib/ --eval-data val/ --targets 2x,3x,4x,10x -o sweep/
    """
    from ..deploy.quantize import QuantizeOptions
    from .render import console, work_progress

    with work_progress(inputs.batch_size) as bar:
        job = jobs.sweep_job(
            source.spec(model, output.dtype), inputs.spec(), targets, metric=metric, options=ranking.options(),
            eval_data=inputs.eval_data, finetune_epochs=recovery.finetune_epochs, train=recovery.train(),
            distill=recovery.options(), timing=timing.options(), save_models=output.save_models, out=output.out,
            force=output.force, run=jobs.Run(device, seed, bar, bar.step if bar else None),
            quantize=QuantizeOptions(type=quantize, batch_size=inputs.batch_size, seed=seed) if quantize else None,
            compare=compare,
        )
    render_sweep(job, console)
    return job


def render_sweep(job, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..core.fmt import pct
    from ..jobs.sweep import PEER_LABEL
    from .render import render_notes

    r = job.report
    render_notes(r)
    o = r["original"]
    how = f"{r['finetune_epochs']} epoch(s) {'distillation' if r['distill'] else 'fine-tune'}" if r["finetune_epochs"] else "one-shot"
    t = Table(title=f"explainfix sweep · {r['criterion']} criterion · {how} · {r['eval_samples']} eval images", title_justify="left")
    tuned = bool(r["finetune_epochs"])
    for col in ("budget", f"{'MACs' if r['metric'] == 'macs' else 'params'} kept",
                *(["accuracy (pruned)"] if tuned else []), "accuracy", "agreement", "latency p50", "speed-up", "check"):
        t.add_column(col, justify="right", no_wrap=col == "budget")  # "4x Torch-Pruning L1" on one line
    lat0 = f"{o['latency_ms']:.3f} ms" if o["latency_ms"] is not None else "—"
    t.add_row("original", "1.000", *([""] if tuned else []), pct(o["accuracy"]), "100.0%", lat0, "1.00×", "")
    for p in r["points"]:
        kept = p["macs_kept"] if r["metric"] == "macs" else p["params_kept"]
        t.add_row(p["target"], f"{kept:.3f}" + ("" if p["within_tolerance"] else " *"),
                  *([pct(p["accuracy_after_prune"])] if tuned else []), pct(p["accuracy"]), pct(p["agreement"]),
                  f"{p['latency_ms']:.3f} ms" if p.get("latency_ms") is not None else "—",
                  f"{1 / p['latency_ratio']:.2f}×" if p.get("latency_ratio") else "—", p["self_check"])
        c = p.get("compare")
        if c:  # the peer at the same budget, recovered the same way
            name = f"{p['target']} {PEER_LABEL.get(c['tool'], c['tool'])}"
            if c.get("error"):
                t.add_row(name, "failed", *([""] if tuned else []), "", "", "", "", "", style="dim")
            else:
                ckept = c["macs_kept"] if r["metric"] == "macs" else c["params_kept"]
                t.add_row(name, f"{ckept:.3f}", *([pct(c["accuracy_after_prune"])] if tuned else []), pct(c["accuracy"]),
                          pct(c["agreement"]), f"{c['latency_ms']:.3f} ms" if c.get("latency_ms") is not None else "—",
                          f"{1 / c['latency_ratio']:.2f}×" if c.get("latency_ratio") else "—", "", style="dim")
    console.print(t)
    for p in r["points"]:
        if (p.get("compare") or {}).get("error"):
            console.print(f"[yellow]{p['target']} {p['compare']['tool']}: {escape(p['compare']['error'])}[/]")
    for p in r["points"]:
        if p["note"]:
            console.print(f"[yellow]* {p['target']}: {p['note']}[/]")
    console.print(f"wrote {job.out}/ (sweep.md, sweep.json, tradeoff.png{', points/' if any(job.out.glob('points')) else ''})")
