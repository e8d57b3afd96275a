"""`explainfix sweep`: one model, several budgets, one saliency pass; a table and tradeoff.png."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import jobs
from .base import app, command, emit_json
from .options import (
    Amp,
    Arch,
    ArchKwargs,
    Batches,
    BatchSize,
    Debug,
    Device,
    Distill,
    DistillAlpha,
    Force,
    InputSize,
    Json,
    Lr,
    Mean,
    ModelArg,
    Optimizer,
    Out,
    Seed,
    Std,
    Temperature,
    TrustCode,
    TrustPickle,
    WeightDtype,
    Workers,
)
from .prune import AllowInexact, Criterion, Floor, Rank, RecalibrateBn, RoundToOpt


@app.command()
@command
def sweep(
    model: ModelArg,
    data: Annotated[Path, typer.Option("--data", help="Calibration images for saliency (also the fine-tuning set).")],
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated budgets, each 4x (4× fewer) or 0.25 (kept).")] = "2x,3x,4x,10x",
    metric: Annotated[str, typer.Option("--metric", help="What the budgets count: macs | params.")] = "macs",
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labeled images for accuracy (default: --data).")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tune every point this many epochs on --data (0 = one-shot).")] = 0,
    distill: Distill = False,
    temperature: Temperature = 4.0,
    distill_alpha: DistillAlpha = 0.9,
    lr: Lr = None,
    optimizer: Optimizer = "sgd",
    criterion: Criterion = None,
    rank: Rank = "per-cost",
    round_to: RoundToOpt = None,
    floor: Floor = 0.1,
    recalibrate_bn: RecalibrateBn = None,
    allow_inexact_folds: AllowInexact = False,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Measure onnxruntime latency of every point (batch 1).")] = True,
    threads: Annotated[int, typer.Option("--threads", help="onnxruntime threads for the latency measurement.")] = 2,
    bench_iters: Annotated[int, typer.Option("--bench-iters", help="Timed runs per model and round.")] = 30,
    save_models: Annotated[bool, typer.Option("--save-models", help="Also write each point's explainfix directory to OUT/points/<budget>/.")] = False,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    dtype: WeightDtype = "keep",
    batches: Batches = None,
    batch_size: BatchSize = 32,
    workers: Workers = 0,
    amp: Amp = False,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    out: Out = None,
    force: Force = False,
    device: Device = "auto",
    seed: Seed = 0,
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """See the trade-off: prune to every budget of --targets from one saliency pass, measure each, draw tradeoff.png.

    Writes OUT/ with sweep.md (the table), sweep.json and tradeoff.png (accuracy against MACs kept and against
    measured latency, the original marked). Every point is exact (the self-check runs for each).

    Example: explainfix sweep model.pt --arch torchvision.models:resnet18 --data calib/ --eval-data val/ --targets 2x,3x,4x,10x -o sweep/
    """
    from ..prune.options import PruneOptions
    from ..train.finetune import TrainOptions
    from ..train.objectives import DistillOptions
    from .render import console, work_progress

    options = PruneOptions(criterion=criterion, rank=rank, round_to=round_to, floor=floor, recalibrate_bn=recalibrate_bn,
                           allow_inexact_folds=allow_inexact_folds)
    with work_progress(batch_size) as bar:
        job = jobs.sweep_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code, dtype), jobs.DataSpec(data, input_size, mean, std, batch_size, batches, workers=workers, amp=amp),
            targets, metric=metric, options=options, eval_data=eval_data, finetune_epochs=finetune_epochs,
            train=TrainOptions(optimizer=optimizer, lr=lr), distill=DistillOptions(temperature, distill_alpha) if distill else None,
            bench=bench, threads=threads, bench_iters=bench_iters, save_models=save_models, out=out, device=device,
            seed=seed, force=force, progress=bar, on_step=bar.step if bar else None,
        )
    render_sweep(job, console)
    if json_out:
        emit_json(job.report)


def render_sweep(job, console) -> None:
    from rich.table import Table

    from ..core.fmt import pct
    from .render import render_notes

    r = job.report
    render_notes(r)
    o = r["original"]
    how = f"{r['finetune_epochs']} epoch(s) {'distillation' if r['distill'] else 'fine-tune'}" if r["finetune_epochs"] else "one-shot"
    t = Table(title=f"explainfix sweep · {r['criterion']} criterion · {how} · {r['eval_samples']} eval images", title_justify="left")
    tuned = bool(r["finetune_epochs"])
    for col in ("budget", f"{r['metric'].upper() if r['metric'] == 'macs' else 'params'} kept",
                *(["accuracy (pruned)"] if tuned else []), "accuracy", "agreement", "latency p50", "speed-up", "check"):
        t.add_column(col, justify="right")
    lat0 = f"{o['latency_ms']:.3f} ms" if o["latency_ms"] is not None else "—"
    t.add_row("original", "1.000", *([""] if tuned else []), pct(o["accuracy"]), "100.0%", lat0, "1.00×", "")
    for p in r["points"]:
        kept = p["macs_kept"] if r["metric"] == "macs" else p["params_kept"]
        t.add_row(p["target"], f"{kept:.3f}" + ("" if p["within_tolerance"] else " *"),
                  *([pct(p["accuracy_after_prune"])] if tuned else []), pct(p["accuracy"]), pct(p["agreement"]),
                  f"{p['latency_ms']:.3f} ms" if p.get("latency_ms") is not None else "—",
                  f"{1 / p['latency_ratio']:.2f}×" if p.get("latency_ratio") else "—", p["self_check"])
    console.print(t)
    for p in r["points"]:
        if p["note"]:
            console.print(f"[yellow]* {p['target']}: {p['note']}[/]")
    console.print(f"wrote {job.out}/ (sweep.md, sweep.json, tradeoff.png{', points/' if any(job.out.glob('points')) else ''})")
