"""`explainfix prune`."""
from __future__ import annotations

from typing import Any

from .. import jobs
from .base import app, command
from .options import Budget, Device, Json, ModelArg, Ranking, Scoring, Seed, Source, Weights, grouped

__all__ = ["prune"]


@app.command()
@command
@grouped
def prune(model: ModelArg, *, budget: Budget, ranking: Ranking, inputs: Scoring, source: Source, output: Weights,
          device: Device = "auto", seed: Seed = 0, json_out: Json = False) -> Any:
    """Prune to a budget (or zero a percentage of spatial filters), remove every dead channel, check, and save.

    Example: explainfix prune model.pt --arch torchvision.models:resnet18 --target-macs 4x --data calib/
    """
    from .render import work_progress, render_prune

    with work_progress(inputs.batch_size) as bar:
        job = jobs.prune_job(
            source.spec(model, output.dtype), inputs.spec(), out=output.out, device=device, seed=seed,
            force=output.force, progress=bar, options=ranking.options(budget),
        )
    render_prune(job)
    return job
