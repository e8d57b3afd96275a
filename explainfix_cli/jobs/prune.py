"""``explainfix prune``: open → prune (score, zero, plan, surgery, self-check) → write the directory."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core import gradients as grad
from ..core.errors import BadInput
from ..io.model_dir import save_model_dir
from ..io.outdir import check_output_dir, default_out
from ..prune.pipeline import Progress, PruneResult, prune_model
from .common import DataSpec, ModelSpec, Opened, now, open_inputs, with_total


@dataclass
class PruneJob:
    result: PruneResult
    out: Path
    report: dict
    model: nn.Module  # the pruned model, in memory (CPU)


def prune_job(
    model: ModelSpec,
    data: DataSpec,
    pct: float,
    out: Path | None = None,
    criterion: str | None = None,
    fill: str = "none",
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
    check_samples: int = 8,
    round_to: int | None = None,
    progress: Progress | None = None,
) -> PruneJob:
    if not 0 < pct < 100:
        raise BadInput(f"--pct must be in (0, 100), got {pct:g}", hint="e.g. --pct 50")
    opened = open_inputs(model, data, device)
    out = Path(out) if out is not None else default_out(model.path, "pruned")
    check_output_dir(out, force)
    result, recipe = prune_opened(opened, data, pct, criterion, fill, seed, check_samples, progress, round_to)
    calib = opened.calib
    report = {"command": "prune", "model": str(model.path), "out": str(out), "preprocessing": opened.pre.to_dict(),
              "data": calib.describe() if calib else None, **result.to_json()}
    opened.model.to("cpu")
    t0 = time.perf_counter()
    save_model_dir(opened.model, recipe, out, extra={"report.json": report}, force=force)
    result.timings["save"] = time.perf_counter() - t0
    report["timings"] = result.timings
    return PruneJob(result, out, report, opened.model)


def prune_opened(
    opened: Opened,
    data: DataSpec,
    pct: float,
    criterion: str | None = None,
    fill: str = "none",
    seed: int = 0,
    check_samples: int = 8,
    progress: Progress | None = None,
    round_to: int | None = None,
) -> tuple[PruneResult, dict]:
    """Prune ``opened.model`` in place; return the result and the updated recipe (nothing is written)."""
    if not 0 < pct < 100:
        raise BadInput(f"--pct must be in (0, 100), got {pct:g}", hint="e.g. --pct 50")
    criterion = criterion or ("saliency" if opened.calib is not None else "magnitude")
    if criterion == "saliency" and opened.calib is None:
        raise BadInput("--criterion saliency needs calibration data", hint="pass --data PATH, or use --criterion magnitude")
    torch.manual_seed(seed)
    calib = opened.calib
    batches = None
    if calib is not None:
        batches = lambda: calib.batches(data.batch_size, data.batches or float("inf"))  # noqa: E731
    check_x = opened.example(check_samples)
    if progress and calib is not None:
        progress("saliency", 0, calib.num_batches(data.batch_size, data.batches or float("inf")))
    result = prune_model(
        opened.model, pct, example=check_x[:1], batches=batches, num_batches=data.batches, criterion=criterion,
        fill=fill, device=opened.device, target_fn=grad.onehot_targets, check_inputs=check_x, seed=seed,
        round_to=round_to, macs_before=opened.macs, progress=with_total(progress, calib.num_batches(data.batch_size, data.batches or float("inf")) if calib else None),
    )
    recipe = dict(opened.loaded.recipe)
    recipe["preprocessing"] = opened.pre.to_dict()
    recipe["edits"] = list(recipe.get("edits", [])) + [result.edit]
    provenance = {
        "command": "prune", "time": now(), "pct": pct, "criterion": criterion, "fill": fill, "seed": seed,
        "round_to": round_to,
        "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256,
        "data": calib.describe() if calib else None,
    }
    recipe["provenance"] = list(recipe.get("provenance", [])) + [provenance]
    return result, recipe
