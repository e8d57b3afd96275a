"""``explainfix explain``: ExplainSteer spectra (with saliency when there is data) → spectra.json + spectra.png."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import gradients as grad
from ..core.progress import Progress, with_total
from ..io.outdir import staging
from .result import JobResult
from .common import DataSpec, ModelSpec, open_inputs, output_dir


@dataclass
class ExplainJob(JobResult):
    spectra: Any  # explain.ExplainReport
    out: Path
    report: dict


def explain_job(
    model: ModelSpec,
    data: DataSpec | None = None,
    out: Path | None = None,
    device: str = "auto",
    force: bool = False,
    loglog: bool = False,
    progress: Progress | None = None,
) -> ExplainJob:
    """ExplainSteer spectra (with saliency when there is data) → ``spectra.json`` + ``spectra.png``."""
    from ..explain.figures import save_spectra_png
    from ..explain.spectra import explain_model
    from ..io.outdir import write_output_dir

    out = output_dir(out, "explain", model, force, data.path if data else None)
    opened = open_inputs(model, data, device, purpose="explain")
    calib, batches, limit = opened.calib, None, float("inf")
    if calib is not None:
        limit = data.batches or float("inf")
        batches = calib.batches(data.batch_size, limit, shard=True)  # under torchrun: this rank's share
        total = calib.num_batches(data.batch_size, limit)
        if progress:
            progress("saliency", 0, total)
        progress = with_total(progress, total)
    report = explain_model(opened.model, batches, opened.device, limit, target_fn=grad.onehot_targets, progress=progress)
    doc = {"command": "explain", "model": str(model.path), "out": str(out), "data": calib.describe() if calib else None,
           "preprocessing": opened.pre.to_dict(), **report.to_json()}
    with staging(out) as tmp:  # the figure is drawn to a file first
        png = save_spectra_png(report, tmp / "spectra.png", loglog=loglog)
        write_output_dir(out, {"spectra.json": doc, "spectra.png": png.read_bytes()}, force=force)
    return ExplainJob(report, out, doc)
