"""`explainfix prune`."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import jobs
from ..prune.options import PruneOptions
from .base import app, command, emit_json
from .options import (
    Amp,
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
    Seed,
    Std,
    TrustCode,
    TrustPickle,
    WeightDtype,
    Workers,
)

TargetMacs = Annotated[Optional[str], typer.Option("--target-macs", help="MACs budget: 4x (4× fewer) or 0.25 (keep a quarter). Exclusive with --pct.")]
TargetParams = Annotated[Optional[str], typer.Option("--target-params", help="Parameter budget: 4x or 0.25, as --target-macs.")]
Pct = Annotated[Optional[float], typer.Option("--pct", help="Zero this percentage of spatial filters, in (0, 100), ranked globally (the ExplainFix reference's knob).")]
Criterion = Annotated[Optional[str], typer.Option("--criterion", help="channel | saliency | magnitude. Default: channel with a budget; else saliency with --data, magnitude without.")]
Rank = Annotated[str, typer.Option("--rank", help="Channel criterion: per-cost (saliency per MAC, or per parameter with --target-params, removed) | saliency | l1-per-layer (Σ|w| per cost within each layer: about the same fraction from every layer; better after fine-tuning at 10× and beyond).")]
RoundToOpt = Annotated[Optional[str], typer.Option("--round-to", help="Keep every pruned layer's channel count a multiple of N, or auto (the default with a budget: multiples of 8 for layers of ≥ 64 channels, any count below): faster kernels, still exact.")]
AllowInexact = Annotated[bool, typer.Option("--allow-inexact-folds", help="Also remove channels whose constant would fold into a zero-padded conv (differs at the borders; the report gives the distance and never says passed).")]
Floor = Annotated[float, typer.Option("--floor", help="Channel criterion: every layer keeps at least this fraction of its channels.")]
RecalibrateBn = Annotated[Optional[bool], typer.Option("--recalibrate-bn/--no-recalibrate-bn", help="Re-estimate BatchNorm statistics on --data after pruning (default: on with a budget and data).")]


def prune_options(pct: float | None, target_macs: str | None, target_params: str | None, criterion: str | None,
                  rank: str, fill: str, round_to: str | None, allow_inexact_folds: bool, floor: float,
                  recalibrate_bn: bool | None) -> PruneOptions:
    """The flags → the one options object the jobs and the Python API validate (prune and compress)."""
    return PruneOptions(pct=pct, target_macs=target_macs, target_params=target_params, criterion=criterion, rank=rank,
                        fill=fill, round_to=round_to, allow_inexact_folds=allow_inexact_folds, floor=floor,
                        recalibrate_bn=recalibrate_bn)


@app.command()
@command
def prune(
    model: ModelArg,
    target_macs: TargetMacs = None,
    target_params: TargetParams = None,
    pct: Pct = None,
    data: Data = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    dtype: WeightDtype = "keep",
    batches: Batches = None,
    batch_size: BatchSize = 32,
    workers: Workers = 0,
    amp: Amp = False,
    criterion: Criterion = None,
    rank: Rank = "per-cost",
    fill: Fill = "none",
    round_to: RoundToOpt = None,
    floor: Floor = 0.1,
    recalibrate_bn: RecalibrateBn = None,
    allow_inexact_folds: AllowInexact = False,
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
    """Prune to a budget (or zero a percentage of spatial filters), remove every dead channel, check, and save.

    Example: explainfix prune model.pt --arch torchvision.models:resnet18 --target-macs 4x --data calib/
    """
    from .render import work_progress, render_prune

    options = prune_options(pct, target_macs, target_params, criterion, rank, fill, round_to, allow_inexact_folds,
                            floor, recalibrate_bn)
    with work_progress(batch_size) as bar:
        job = jobs.prune_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code, dtype),
            jobs.DataSpec(data, input_size, mean, std, batch_size, batches, workers=workers, amp=amp),
            out=out, device=device, seed=seed, force=force, progress=bar, options=options,
        )
    render_prune(job)
    if json_out:
        emit_json(job.report)
