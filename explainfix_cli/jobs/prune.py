"""``explainfix prune``: open → prune (score, zero, plan, surgery, self-check) → write the directory."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import gradients as grad
from ..core.layout import channels_last
from ..core.progress import Progress, with_total
from ..io.model_dir import save_model_dir
from ..io.recipe import Recipe
from ..prune.options import PruneOptions
from ..prune.pipeline import PruneResult
from ..prune.pruner import Pruner
from ..train.finetune import recalibrate_batchnorm
from .result import JobResult
from .common import DataSpec, ModelSpec, Opened, now, open_inputs, output_dir, read_back_example


@dataclass
class PruneJob(JobResult):
    result: PruneResult
    out: Path
    report: dict
    model: nn.Module  # the pruned model, in memory (CPU)


def prune_job(
    model: ModelSpec,
    data: DataSpec,
    options: PruneOptions,
    *,
    out: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
    check_samples: int = 8,
    progress: Progress | None = None,
) -> PruneJob:
    """``explainfix prune``: ``options`` says how much (``PruneOptions(target_macs="4x")``, ``PruneOptions(pct=70)``)."""
    options = options.resolved(has_data=data.path is not None)  # bad values fail before anything is opened
    out = output_dir(out, "pruned", model, force, data.path)
    opened = open_inputs(model, data, device)
    result, recipe = prune_opened(opened, data, options, seed=seed, check_samples=check_samples, progress=progress)
    calib = opened.calib
    report = {"load_notes": opened.loaded.notes, "command": "prune", "weights_dtype": opened.written_dtype, "model": str(model.path), "out": str(out), "preprocessing": opened.pre.to_dict(),
              "data": calib.describe() if calib else None, **result.to_json()}
    opened.model.to("cpu")
    t0 = time.perf_counter()
    save_model_dir(opened.model, recipe, out, extra={"report.json": report}, force=force, dtypes=opened.out_dtypes,
                   example=read_back_example(opened))
    result.timings["save"] = time.perf_counter() - t0
    report["timings"] = result.timings
    return PruneJob(result, out, report, opened.model)


def prune_opened(
    opened: Opened,
    data: DataSpec,
    options: PruneOptions,
    *,
    seed: int = 0,
    check_samples: int = 8,
    progress: Progress | None = None,
    recipe: Recipe | None = None,
    pruner: Pruner | None = None,
) -> tuple[PruneResult, Recipe]:
    """Prune ``opened.model`` in place (then re-estimate BatchNorm statistics on the calibration data when
    the options say so); return the result and the updated recipe (nothing is written). ``recipe``
    defaults to the loaded model's (pass the current one when chaining in memory); ``opened.macs`` is
    updated to the pruned model's. ``pruner`` (:func:`pruner_for` of a model identical to ``opened.model``, as a
    sweep makes once) reuses its scores; by default the model gets its own."""
    opts = options.resolved(has_data=opened.calib is not None).with_model(opened.model)
    torch.manual_seed(seed)
    batches = calibration_batches(opened, data, seed)
    check_x = opened.example(check_samples)
    if pruner is None:
        pruner = pruner_for(opened, data, opts, seed, progress)
    result = pruner.to(budget_of(opts), model=opened.model, check_inputs=check_x, seed=seed,
                       measure_quality=not opts.recalibrate_bn)  # measured once, after the BatchNorm re-estimation below
    calib = opened.calib
    recipe = opened.loaded.recipe if recipe is None else recipe
    opened.macs = result.macs_after
    edits = [result.edit]
    if opts.recalibrate_bn:
        with channels_last(opened.model, check_x[:1]):  # both passes only read the layout-free values
            t0 = time.perf_counter()
            used = recalibrate_opened(opened, data, seed)
            if used:  # 0: the model has no BatchNorm (with running statistics): nothing to re-estimate or record
                edits.append({"op": "bn-recalibrate", "batches": used})
            result.recalibrated = {"batches": used, "skipped": None if used else "the model has no BatchNorm"}
            result.timings["bn-recalibrate"] = time.perf_counter() - t0
            if result.record is not None:  # quality after recalibration, on the same calibration batches
                t0 = time.perf_counter()
                for key, value in result.record.compare(opened.model, batches, opened.device).items():
                    setattr(result, key, value)
                result.timings["agreement"] = time.perf_counter() - t0
    provenance = {
        "command": "prune", "time": now(), **opts.to_json(), "seed": seed,
        "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256,
        "data": calib.describe() if calib else None, "budget": result.budget,
    }
    return result, recipe.record(provenance, edits=edits, preprocessing=opened.pre.to_dict())


def recalibrate_opened(opened: Opened, data: DataSpec, seed: int) -> int:
    """Re-estimate ``opened.model``'s BatchNorm statistics on the calibration batches, the pass a prune makes after
    its surgery (for any pruned model: a sweep's peer points get the same one). Returns the batches used (0: no
    BatchNorm). Run it under ``core.layout.channels_last`` for speed, as :func:`prune_opened` does."""
    return recalibrate_batchnorm(opened.model, calibration_batches(opened, data, seed)(), opened.device)


def calibration_batches(opened: Opened, data: DataSpec, seed: int):
    """``batches()`` of the calibration data in one seeded random order, so batches mix classes (io/data.py
    CalibrationSet.batches); under torchrun, this rank's share. None without data."""
    calib = opened.calib
    if calib is None:
        return None
    return lambda: calib.batches(data.batch_size, data.batches or float("inf"), shuffle_seed=seed, shard=True)


def pruner_for(opened: Opened, data: DataSpec, options: PruneOptions, seed: int = 0,
               progress: Progress | None = None, gradients: bool | None = None) -> Pruner:
    """The :class:`Pruner` of ``opened.model`` as it is now, on the job's calibration data. ``gradients``: whether
    the scoring pass computes the saliency; by default when ``options`` rank by it at their own budget."""
    calib = opened.calib
    total = calib.num_batches(data.batch_size, data.batches or float("inf")) if calib else None
    if progress and calib is not None:
        progress("saliency", 0, total)
    return Pruner(opened.model, options, opened.example(1), calibration_batches(opened, data, seed),
                  device=opened.device, num_batches=data.batches, target_fn=grad.onehot_targets,
                  progress=with_total(progress, total), stage_progress=progress, amp=opened.amp, macs_before=opened.macs,
                  gradients=options.needs_saliency if gradients is None else gradients)


def budget_of(options: PruneOptions) -> float:
    """What :meth:`Pruner.to` takes: the fraction kept of a budget, or the pct."""
    return options.budget[1] if options.budget is not None else options.pct
