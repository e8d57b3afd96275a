"""`explainfix compress`: the CI step."""
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
    Atol,
    Batches,
    BatchSize,
    Debug,
    Device,
    Distill,
    DistillAlpha,
    Fill,
    Force,
    InputSize,
    Json,
    Lr,
    Mean,
    ModelArg,
    Optimizer,
    Out,
    Rtol,
    Seed,
    Std,
    Temperature,
    TrustCode,
    TrustPickle,
    WeightDtype,
    Workers,
)
from .prune import (
    AllowInexact,
    Criterion,
    Floor,
    Pct,
    Rank,
    RecalibrateBn,
    RoundToOpt,
    TargetMacs,
    TargetParams,
    prune_options,
)


@app.command()
@command
def compress(
    model: ModelArg,
    data: Annotated[Path, typer.Option("--data", help="Calibration images for saliency (class subfolders; also the fine-tuning set).")],
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labeled images for accuracy and agreement (default: --data).")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tune on --data after pruning, per step (0 = no fine-tuning).")] = 0,
    distill: Distill = False,
    temperature: Temperature = 4.0,
    distill_alpha: DistillAlpha = 0.9,
    steps: Annotated[int, typer.Option("--steps", help="Iterative compression: K rounds of re-score → prune toward the budget "
                                       "(geometric schedule) → fine-tune, ending at the budget. Needs a budget.")] = 1,
    lr: Lr = None,
    optimizer: Optimizer = "sgd",
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: accuracy may drop at most PTS percentage points.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="Gate: top-1 agreement with the original ≥ F (a fraction, e.g. 0.98).")] = None,
    atol: Atol = 1e-4,
    rtol: Rtol = 1e-3,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    target_macs: TargetMacs = None,
    target_params: TargetParams = None,
    pct: Pct = None,
    criterion: Criterion = None,
    rank: Rank = "per-cost",
    fill: Fill = "none",
    round_to: RoundToOpt = None,
    floor: Floor = 0.1,
    recalibrate_bn: RecalibrateBn = None,
    allow_inexact_folds: AllowInexact = False,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Measure onnxruntime latency of the original and the result.")] = True,
    threads: Annotated[int, typer.Option("--threads", help="onnxruntime threads for the latency measurement.")] = 2,
    bench_iters: Annotated[int, typer.Option("--bench-iters", help="Timed runs per model.")] = 50,
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
    """Prune → (fine-tune) → export ONNX → verify → quality gates, in one command for CI.

    Writes OUT/ with model.safetensors, explainfix.json, model.onnx, report.json and summary.md (also when a gate
    fails, so CI can publish it). Exit 1 when a gate fails; the last line names it with its numbers.

    Example: explainfix compress model.pt --arch m.py:Net --target-macs 4x --data calib/ --eval-data val/ --max-accuracy-drop 1 -o out/

    Example (unlabeled calibration images, 3 rounds): explainfix compress model.pt --arch m.py:Net --target-macs 4x --steps 3
    --finetune-epochs 1 --distill --data unlabeled/ --eval-data val/ -o out/
    """
    from ..core.errors import CheckFailed
    from ..jobs.compress import compress_job
    from ..train.finetune import TrainOptions
    from ..train.objectives import DistillOptions
    from .render import render_compress, work_progress

    with work_progress(batch_size) as bar:
        job = compress_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code, dtype), jobs.DataSpec(data, input_size, mean, std, batch_size, batches, workers=workers, amp=amp),
            eval_data=eval_data, finetune_epochs=finetune_epochs, train=TrainOptions(optimizer=optimizer, lr=lr),
            options=prune_options(pct, target_macs, target_params, criterion, rank, fill, round_to, allow_inexact_folds,
                                  floor, recalibrate_bn),
            max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, atol=atol, rtol=rtol,
            opset=opset, bench=bench, threads=threads, bench_iters=bench_iters, out=out, device=device, seed=seed,
            force=force, progress=bar, on_step=bar.step if bar else None, steps=steps,
            distill=DistillOptions(temperature, distill_alpha) if distill else None,
        )
    render_compress(job)
    if json_out:
        emit_json(job.report)
    if not job.passed:
        raise CheckFailed(job.failure_message())
