"""``explainfix finetune``: short training (cross-entropy, or distillation from the original model); frozen
spatial filters stay frozen; the recipe chain is kept."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import BadInput
from ..core.model import count_params
from ..io.data import CalibrationSet, load_calibration
from ..io.model_dir import save_model_dir
from ..io.recipe import Recipe
from .result import JobResult
from .common import DataSpec, ModelSpec, Opened, now, open_inputs, output_dir, read_back_example


@dataclass
class FinetuneJob(JobResult):
    out: Path
    report: dict
    result: Any  # finetune.FinetuneResult
    model: nn.Module


def recovery_options(finetune_epochs: int, train: Any, distill: Any) -> Any:
    """The fine-tune a pruning job (compress, sweep) runs after each prune: TrainOptions with
    ``finetune_epochs`` epochs, or None for none; ``distill`` (a DistillOptions) needs epochs."""
    from ..train.finetune import TrainOptions

    if not (isinstance(finetune_epochs, int) and finetune_epochs >= 0):
        raise BadInput(f"--finetune-epochs must be ≥ 0, got {finetune_epochs}")
    if distill is not None:
        distill.resolved()
        if not finetune_epochs:
            raise BadInput("--distill trains the pruned model: give --finetune-epochs N too", hint="e.g. --distill --finetune-epochs 2")
    return replace((train or TrainOptions()).resolved(distill=distill is not None), epochs=finetune_epochs) \
        if finetune_epochs else None


def check_recovery_data(train: Any, distill: Any, calib: CalibrationSet) -> None:
    """Cross-entropy needs labels; distillation does not."""
    if train is not None and distill is None and not calib.labeled:
        raise BadInput(f"--finetune-epochs needs labeled --data; {calib.source} is unlabeled",
                       hint="or add --distill, which learns from the original model's outputs")


def finetune_opened(
    opened: Opened,
    data: DataSpec,
    options: Any,
    fixed_spatial: bool | None = None,
    eval_calib: CalibrationSet | None = None,
    seed: int = 0,
    on_step: Any = None,
    recipe: Recipe | None = None,
    teacher: nn.Module | None = None,
    distill: Any = None,
    evaluate_last: bool = True,
) -> tuple[Any, Recipe]:
    """Fine-tune ``opened.model`` in place on ``opened.calib``; return the FinetuneResult and the new recipe.

    ``distill`` (a DistillOptions) trains against ``teacher``'s outputs, from labeled or unlabeled data.

    ``fixed_spatial`` None: keep the recipe's frozen tensors frozen (a fixed model stays fixed); True on a
    model without frozen tensors: freeze its spatial filters as they are; False: train everything.
    ``recipe`` defaults to the loaded model's (pass the pruned one when chaining in memory)."""
    from ..train.batches import shuffled_batches
    from ..train.finetune import (
        accuracy,
        finetune,
        predict,
        set_spatial_frozen,
        spatial_param_names,
    )
    from ..train.objectives import Distillation

    if opened.calib is None:
        raise BadInput("fine-tuning needs data", hint="pass --data PATH (class subfolders; unlabeled with --distill)")
    objective = Distillation(teacher, distill) if distill is not None else None
    recipe = opened.loaded.recipe if recipe is None else recipe
    stored = list(recipe.frozen)
    fixed = bool(stored) if fixed_spatial is None else fixed_spatial
    names = (stored or spatial_param_names(opened.model)) if fixed else []
    frozen = set_spatial_frozen(opened.model, names, fixed)
    batches, steps = shuffled_batches(opened.calib, data.batch_size, seed=seed, need_labels=objective is None)
    evaluate = None
    if eval_calib is not None:
        if not eval_calib.labeled:
            raise BadInput(f"--eval-data {eval_calib.source} is unlabeled", hint="use class subfolders")
        evaluate = lambda m: accuracy(*predict(m, eval_calib.batches(data.batch_size), opened.device))  # noqa: E731
    result = finetune(opened.model, batches, replace(options, amp=options.amp or opened.amp), steps_per_epoch=steps, device=opened.device,
                      evaluate=evaluate, on_step=on_step, seed=seed, objective=objective,
                      example=opened.example(), evaluate_last=evaluate_last)
    opt = result.options
    provenance = {
        "command": "finetune", "time": now(), "objective": opt["objective"], "epochs": opt["epochs"], "optimizer": opt["optimizer"], "lr": opt["lr"],
        "weight_decay": opt["weight_decay"], "batch_size": data.batch_size, "fixed_spatial": fixed, "seed": seed,
        "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256,
        "data": opened.calib.describe(), "eval_data": eval_calib.describe() if eval_calib else None,
        "final_loss": result.epochs[-1].loss, "final_train_accuracy": result.epochs[-1].accuracy,
        "eval_accuracy": result.eval_accuracy_after,
    }
    return result, recipe.record(provenance, edits=[{"op": "finetune", "epochs": opt["epochs"], "seed": seed}],
                                 frozen=frozen, preprocessing=opened.pre.to_dict())


def finetune_job(
    model: ModelSpec,
    data: DataSpec,
    options: Any,
    fixed_spatial: bool | None = None,
    eval_data: Path | None = None,
    out: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
    on_step: Any = None,
    distill: Any = None,
    teacher: Path | None = None,
) -> FinetuneJob:
    """Short training on a folder; writes a new explainfix dir keeping the recipe chain. ``distill`` (a
    DistillOptions) learns from ``teacher`` (default: the model the recipe was made from), labels optional."""
    from ..io.checkpoint import load_original

    if data.path is None:
        raise BadInput("finetune needs --data PATH (labeled class subfolders, or any images with --distill)")
    options = options.resolved(distill=distill is not None)
    if distill is not None:
        distill.resolved()
    elif teacher is not None:
        raise BadInput("--teacher is only used with --distill")
    out = output_dir(out, "finetuned", model, force, data.path, eval_data, teacher)
    opened = open_inputs(model, data, device)
    eval_calib = load_calibration(eval_data, opened.pre) if eval_data is not None else None
    teacher_model = load_original(opened.loaded.recipe, teacher, model.trust_pickle) if distill is not None else None
    result, recipe = finetune_opened(opened, data, options, fixed_spatial, eval_calib, seed, on_step,
                                     teacher=teacher_model, distill=distill)
    m = opened.model.to("cpu")
    report = {"load_notes": opened.loaded.notes, "command": "finetune", "weights_dtype": opened.written_dtype, "model": str(model.path), "out": str(out),
              "data": opened.calib.describe(), "eval_data": eval_calib.describe() if eval_calib else None,
              "params": count_params(m), "fixed_spatial": bool(recipe.frozen), **result.to_json()}
    save_model_dir(m, recipe, out, extra={"report.json": report}, force=force, dtypes=opened.out_dtypes,
                   example=read_back_example(opened))
    return FinetuneJob(out, report, result, m)
