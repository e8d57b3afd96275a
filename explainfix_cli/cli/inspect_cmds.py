"""`explainfix info` and `explainfix explain`: look at a model without changing it."""
from __future__ import annotations

from typing import Any

from typing import Annotated

import typer

from .. import jobs
from .base import app, command
from .options import Calibration, Device, InputSize, Json, ModelArg, Output, Source, grouped


@app.command()
@command
@grouped
def info(model: ModelArg, *, source: Source, input_size: InputSize = None, json_out: Json = False) -> Any:
    """Params, MACs for one input, spatial conv layers and filter counts, prunable channel groups.

    Example: explainfix info model-pruned/
    """
    from .render import render_info

    job = jobs.info_job(source.spec(model), jobs.DataSpec(input_size=input_size))
    render_info(job.report)
    return job


@app.command()
@command
@grouped
def explain(
    model: ModelArg,
    *,
    loglog: Annotated[bool, typer.Option("--loglog", help="Log-scale the heatmap colours.")] = False,
    inputs: Calibration, source: Source, output: Output, device: Device = "auto", json_out: Json = False,
) -> Any:
    """ExplainSteer: which DCT-II frequencies each spatial conv layer uses (spectra e^d, e^1, e^0).

    Writes OUT/spectra.png (per-layer e^d heatmap with marginal bars; with and without saliency side by
    side when --data is given) and OUT/spectra.json.

    Example: explainfix explain model-pruned/ --data calib/ -o spectra/
    """
    from .render import work_progress, render_explain

    with work_progress(inputs.batch_size) as bar:
        job = jobs.explain_job(source.spec(model), inputs.spec(), out=output.out, device=device, force=output.force,
                               loglog=loglog, progress=bar)
    render_explain(job)
    return job
