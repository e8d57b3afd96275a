"""`explainfix fix` and `explainfix finetune`: fixed spatial filters and recovery training."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import jobs
from .base import app, command
from .options import (
    DATA,
    RECOVERY,
    REQUIRED,
    Device,
    Distillation,
    Epochs,
    EvalData,
    Images,
    Json,
    Lr,
    ModelArg,
    Optimizer,
    Scoring,
    Seed,
    Source,
    WeightDecay,
    Weights,
    grouped,
)


@dataclass
class LabeledImages(Images):
    data: Annotated[Optional[Path], typer.Option("--data", rich_help_panel=DATA, help="Labeled images to report accuracy before/after (optional).")] = None


@dataclass
class TrainingData(Scoring):
    data: Annotated[Path, typer.Option("--data", rich_help_panel=DATA, show_default=False, help="Training images: class subfolders "
                                       "(or an .npz with x and y); with --distill also a flat, unlabeled folder.")] = REQUIRED
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=DATA, help="Training batch size.")] = 32
    batches: Annotated[Optional[int], typer.Option("--batches", rich_help_panel=DATA, help="At most N batches per epoch (default: all).")] = None
    eval_data: EvalData = None

    def spec(self) -> Any:
        return replace(super().spec(), batches=None)  # --batches counts per epoch here (TrainOptions.max_batches)


@app.command()
@command
@grouped
def fix(
    model: ModelArg,
    *,
    init: Annotated[str, typer.Option("--init", help="ghaar | dct | keep (also haar, ghaar4, dct_steered): the fixed spatial filters. "
                                      "ghaar: random steering of horizontal/vertical/diagonal components, frequency U(0, 2(k-1)); "
                                      "dct: DCT-II basis filters; keep: the current values, only frozen.")] = "ghaar",
    inputs: LabeledImages, source: Source, output: Weights, device: Device = "auto", seed: Seed = 0, json_out: Json = False,
) -> Any:
    """Fixed spatial filters: replace every spatial kernel by GHaar or DCT filters (or keep it) and freeze it.

    The frozen tensors are listed in the recipe, so finetune (and every later command) leaves them alone.

    Example: explainfix fix model.pt --arch torchvision.models:resnet18 --init ghaar -o r18-fixed/
    """
    from .render import render_fix

    job = jobs.fix_job(source.spec(model, output.dtype), init, inputs.spec(), out=output.out, device=device, seed=seed,
                       force=output.force)
    render_fix(job)
    return job


@app.command()
@command
@grouped
def finetune(
    model: ModelArg,
    *,
    epochs: Epochs = 1,
    distillation: Distillation,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", rich_help_panel=RECOVERY, help="The teacher for --distill (default: the model the "
                                                    "recipe was pruned from, its sha256 checked). A weights file uses the recipe's architecture.")] = None,
    lr: Lr = None,
    optimizer: Optimizer = "sgd",
    weight_decay: WeightDecay = None,
    fixed_spatial: Annotated[Optional[bool], typer.Option("--fixed-spatial/--no-fixed-spatial", rich_help_panel=RECOVERY, show_default=False,
                             help="Keep spatial filters frozen. Default: on when the recipe has frozen filters (a fixed model), off otherwise.")] = None,
    inputs: TrainingData, source: Source, output: Weights, device: Device = "auto", seed: Seed = 0, json_out: Json = False,
) -> Any:
    """Short training to recover accuracy after pruning: cross-entropy, or --distill from the original model; frozen spatial filters stay frozen.

    Labels are the sorted class-subfolder index. No augmentation. Writes a new explainfix dir that keeps the recipe chain.

    Example: explainfix finetune model-pruned/ --data train/ --epochs 3 --eval-data val/ -o model-tuned/

    Example (no labels): explainfix finetune model-pruned/ --distill --data unlabeled/ --epochs 3 -o model-tuned/
    """
    from ..train.finetune import TrainOptions
    from .render import render_finetune, work_progress

    options = TrainOptions(epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay, max_batches=inputs.batches)
    with work_progress(inputs.batch_size) as bar:
        job = jobs.finetune_job(
            source.spec(model, output.dtype), inputs.spec(), options, fixed_spatial=fixed_spatial,
            eval_data=inputs.eval_data, out=output.out, device=device, seed=seed, force=output.force,
            on_step=bar.step if bar else None, distill=distillation.options(), teacher=teacher,
        )
    render_finetune(job)
    return job
