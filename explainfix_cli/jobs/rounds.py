"""One round of compression — prune → recover (fine-tune or distil) → measure — the step ``compress`` repeats
(``--steps``) and ``sweep`` runs once per budget. Both call :func:`run_round`; neither copies it.

    rnd = run_round(opened, data, options, Recovery(train, distill, teacher), eval_calib, seed=0)
    rnd.result.macs_after, rnd.pruned["accuracy"], rnd.final["accuracy"]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..core.progress import Progress
from ..io.data import CalibrationSet
from ..io.recipe import Recipe
from ..prune.options import PruneOptions
from ..prune.pipeline import PruneResult
from ..prune.pruner import Pruner
from .common import DataSpec, Opened, evaluate_on
from .finetune import finetune_opened
from .prune import prune_opened


@dataclass
class Recovery:
    """What a round does after pruning: nothing (``train`` None), fine-tuning, or distillation from ``teacher``."""

    train: Any = None  # train.finetune.TrainOptions
    distill: Any = None  # train.objectives.DistillOptions
    teacher: nn.Module | None = None  # the original model (distillation only)
    on_step: Any = None  # the fine-tune progress callback


@dataclass
class Round:
    result: PruneResult
    recipe: Recipe  # the model's recipe after this round
    pruned: dict | None  # jobs.common.evaluate_on after pruning (None without evaluation data)
    tuned: Any = None  # the fine-tune result (None without recovery)
    final: dict | None = None  # evaluate_on after recovery (the pruned one's when there was none)


def run_round(opened: Opened, data: DataSpec, options: PruneOptions, recovery: Recovery,
              eval_calib: CalibrationSet | None, *, seed: int = 0, train_seed: int | None = None,
              recipe: Recipe | None = None, progress: Progress | None = None, pruner: Pruner | None = None) -> Round:
    """Prune ``opened.model`` in place (with ``pruner``'s scores when given), recover it, and measure both."""
    result, recipe = prune_opened(opened, data, options, seed=seed, progress=progress, recipe=recipe, pruner=pruner)
    rnd = Round(result, recipe, None)
    rnd.pruned, rnd.tuned, rnd.final, rnd.recipe = recover_and_measure(
        opened, data, recovery, eval_calib, seed=seed if train_seed is None else train_seed, recipe=recipe)
    return rnd


def recover_and_measure(opened: Opened, data: DataSpec, recovery: Recovery, eval_calib: CalibrationSet | None, *,
                        seed: int = 0, recipe: Recipe | None = None) -> tuple[dict | None, Any, dict | None, Recipe]:
    """The second half of a round, for any pruned ``opened.model`` (explainfix's, or a peer's in ``sweep
    --compare``): measure it, recover it in place as ``recovery`` says, measure again. Returns (pruned, tuned,
    final, recipe): the evaluations before and after recovery (the same one without recovery), the fine-tune
    result (None without) and the recipe after it."""
    pruned = evaluate_on(opened.model, eval_calib, data.batch_size, opened.device)
    recipe = opened.loaded.recipe if recipe is None else recipe
    if recovery.train is None:
        return pruned, None, pruned, recipe
    per_epoch = eval_calib if eval_calib is not None and eval_calib.labeled else None  # eval acc per epoch
    tuned, recipe = finetune_opened(opened, data, recovery.train, None, per_epoch, seed, recovery.on_step,
                                    recipe=recipe, teacher=recovery.teacher, distill=recovery.distill, evaluate_last=False)
    if recovery.teacher is not None:
        recovery.teacher.to("cpu")
    final = evaluate_on(opened.model, eval_calib, data.batch_size, opened.device)
    if per_epoch is not None:  # the last epoch's eval accuracy is the round's final measurement
        tuned.epochs[-1].eval_accuracy = tuned.eval_accuracy_after = final["accuracy"]
    return pruned, tuned, final, recipe
