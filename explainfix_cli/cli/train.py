"""`explainfix fix` and `explainfix finetune`: fixed spatial filters and recovery training."""
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
    BatchSize,
    Debug,
    Device,
    Distill,
    DistillAlpha,
    Epochs,
    EvalData,
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
    WeightDecay,
    WeightDtype,
    Workers,
)


@app.command()
@command
def fix(
    model: ModelArg,
    init: Annotated[str, typer.Option("--init", help="ghaar | dct | keep (also haar, ghaar4, dct_steered): the fixed spatial filters. "
                                      "ghaar: random steering of horizontal/vertical/diagonal components, frequency U(0, 2(k-1)); "
                                      "dct: DCT-II basis filters; keep: the current values, only frozen.")] = "ghaar",
    data: Annotated[Optional[Path], typer.Option("--data", help="Labeled images to report accuracy before/after (optional).")] = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    dtype: WeightDtype = "keep",
    batch_size: BatchSize = 32,
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
    """Fixed spatial filters: replace every spatial kernel by GHaar or DCT filters (or keep it) and freeze it.

    The frozen tensors are listed in the recipe, so finetune (and every later command) leaves them alone.

    Example: explainfix fix model.pt --arch torchvision.models:resnet18 --init ghaar -o r18-fixed/
    """
    from .render import render_fix

    job = jobs.fix_job(jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code, dtype), init,
                       jobs.DataSpec(data, input_size, mean, std, batch_size), out=out, device=device, seed=seed, force=force)
    render_fix(job)
    if json_out:
        emit_json(job.report)


@app.command()
@command
def finetune(
    model: ModelArg,
    data: Annotated[Path, typer.Option("--data", help="Training images: class subfolders (or an .npz with x and y); "
                                       "with --distill also a flat, unlabeled folder.")],
    epochs: Epochs = 1,
    distill: Distill = False,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="The teacher for --distill (default: the model the recipe was "
                                                    "pruned from, its sha256 checked). A weights file uses the recipe's architecture.")] = None,
    temperature: Temperature = 4.0,
    distill_alpha: DistillAlpha = 0.9,
    lr: Lr = None,
    optimizer: Optimizer = "sgd",
    weight_decay: WeightDecay = None,
    fixed_spatial: Annotated[Optional[bool], typer.Option("--fixed-spatial/--no-fixed-spatial", help="Keep spatial filters frozen. "
                             "Default: on when the recipe has frozen filters (a fixed model), off otherwise.", show_default=False)] = None,
    eval_data: EvalData = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    dtype: WeightDtype = "keep",
    batches: Annotated[Optional[int], typer.Option("--batches", help="At most N batches per epoch (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 32,
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
    """Short training to recover accuracy after pruning: cross-entropy, or --distill from the original model; frozen spatial filters stay frozen.

    Labels are the sorted class-subfolder index. No augmentation. Writes a new explainfix dir that keeps the recipe chain.

    Example: explainfix finetune model-pruned/ --data train/ --epochs 3 --eval-data val/ -o model-tuned/

    Example (no labels): explainfix finetune model-pruned/ --distill --data unlabeled/ --epochs 3 -o model-tuned/
    """
    from ..train.finetune import TrainOptions
    from ..train.objectives import DistillOptions
    from .render import render_finetune, work_progress

    options = TrainOptions(epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay, max_batches=batches)
    with work_progress(batch_size) as bar:
        job = jobs.finetune_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code, dtype), jobs.DataSpec(data, input_size, mean, std, batch_size, workers=workers, amp=amp),
            options, fixed_spatial=fixed_spatial, eval_data=eval_data, out=out, device=device, seed=seed, force=force,
            on_step=bar.step if bar else None,
            distill=DistillOptions(temperature, distill_alpha) if distill else None, teacher=teacher,
        )
    render_finetune(job)
    if json_out:
        emit_json(job.report)
