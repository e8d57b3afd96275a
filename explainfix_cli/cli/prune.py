"""`explainfix prune`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import jobs
from .app import app, command, emit_json
from .options import (
    Arch,
    ArchKwargs,
    Batches,
    BatchSize,
    Data,
    Debug,
    Device,
    Fill,
    Force,
    InputSize,
    Json,
    Mean,
    ModelArg,
    Out,
    RoundTo,
    Seed,
    Std,
    TrustPickle,
)


@app.command()
@command
def prune(
    model: ModelArg,
    pct: Annotated[float, typer.Option("--pct", help="Percentage of spatial filters to zero, in (0, 100), ranked globally.")],
    data: Data = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    batches: Batches = None,
    batch_size: BatchSize = 32,
    criterion: Annotated[Optional[str], typer.Option("--criterion", help="saliency (needs --data) | magnitude. Default: saliency with --data, else magnitude.")] = None,
    fill: Fill = "none",
    round_to: RoundTo = None,
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
    """Zero the least salient spatial filters, remove every dead channel, check, and save.

    Example: explainfix prune model.pt --arch torchvision.models:resnet18 --pct 70 --data calib/
    """
    from .render import progress_bar, render_prune

    with progress_bar() as bar:
        job = jobs.prune_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle),
            jobs.DataSpec(data, input_size, mean, std, batch_size, batches),
            pct, out=out, criterion=criterion, fill=fill, device=device, seed=seed, force=force, round_to=round_to,
            progress=bar,
        )
    render_prune(job)
    if json_out:
        emit_json(job.report)
