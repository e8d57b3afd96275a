"""`explainfix info` and `explainfix explain`: look at a model without changing it."""
from __future__ import annotations

from typing import Annotated

import typer

from .. import jobs
from .base import app, command, emit_json
from .options import (
    Arch,
    ArchKwargs,
    Batches,
    BatchSize,
    Data,
    Debug,
    Device,
    Force,
    InputSize,
    Json,
    Mean,
    ModelArg,
    Out,
    Std,
    TrustCode,
    TrustPickle,
    Workers,
)


@app.command()
@command
def info(
    model: ModelArg,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    input_size: InputSize = None,
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """Params, MACs for one input, spatial conv layers and filter counts, prunable channel groups.

    Example: explainfix info model-pruned/
    """
    from .render import render_info

    doc = jobs.info_job(jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code), jobs.DataSpec(input_size=input_size))
    render_info(doc)
    if json_out:
        emit_json(doc)


@app.command()
@command
def explain(
    model: ModelArg,
    data: Data = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    batches: Batches = None,
    batch_size: BatchSize = 32,
    workers: Workers = 0,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    loglog: Annotated[bool, typer.Option("--loglog", help="Log-scale the heatmap colours.")] = False,
    out: Out = None,
    force: Force = False,
    device: Device = "auto",
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """ExplainSteer: which DCT-II frequencies each spatial conv layer uses (spectra e^d, e^1, e^0).

    Writes OUT/spectra.png (per-layer e^d heatmap with marginal bars; with and without saliency side by
    side when --data is given) and OUT/spectra.json.

    Example: explainfix explain model-pruned/ --data calib/ -o spectra/
    """
    from .render import work_progress, render_explain

    with work_progress(batch_size) as bar:
        job = jobs.explain_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code),
            jobs.DataSpec(data, input_size, mean, std, batch_size, batches, workers=workers),
            out=out, device=device, force=force, loglog=loglog, progress=bar,
        )
    render_explain(job)
    if json_out:
        emit_json(job.doc)
