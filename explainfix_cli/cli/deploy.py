"""`explainfix export`, `verify` and `bench`: ONNX out, checked and timed."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import jobs
from .base import app, command, emit_json
from .options import (
    Arch,
    ArchKwargs,
    Atol,
    BatchSize,
    Data,
    Debug,
    Force,
    InputSize,
    Json,
    Mean,
    ModelArg,
    Out,
    Rtol,
    Seed,
    Std,
    TrustCode,
    TrustPickle,
    WeightDtype,
)


@app.command()
@command
def export(
    model: ModelArg,
    onnx: Annotated[bool, typer.Option("--onnx", help="Write model.onnx (the default when neither format is named).")] = False,
    safetensors: Annotated[bool, typer.Option("--safetensors", help="Write model.safetensors with its recipe beside it.")] = False,
    data: Data = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    dtype: WeightDtype = "keep",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (≥ 18).")] = 18,
    atol: Atol = 1e-4,
    rtol: Rtol = 1e-3,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime check.")] = False,
    batch_size: BatchSize = 16,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    out: Out = None,
    force: Force = False,
    seed: Seed = 0,
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """Export to ONNX (dynamic batch, provenance in metadata) and/or safetensors, verified in onnxruntime.

    Default OUT: the MODEL directory when it is an explainfix directory, else <model-stem>-export/.
    Exit 1 when onnxruntime's outputs differ from torch's (nothing is written then).

    Example: explainfix export model-pruned/ --onnx --data calib/
    """
    from ..jobs.export import export_job
    from .render import render_export

    if not onnx and not safetensors:
        onnx = True
    job = export_job(
        jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle, trust_code, dtype), jobs.DataSpec(data, input_size, mean, std, batch_size),
        onnx=onnx, safetensors=safetensors, out=out, opset=opset, atol=atol, rtol=rtol, verify=not no_verify,
        force=force, seed=seed,
    )
    render_export(job)
    if json_out:
        emit_json(job.doc)


@app.command()
@command
def verify(
    onnx_file: Annotated[Path, typer.Argument(metavar="ONNX", help="The .onnx file to check.", show_default=False)],
    reference: Annotated[Path, typer.Option("--reference", help="The torch MODEL it must match (any loadable model).", show_default=False)],
    data: Data = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    atol: Atol = 1e-4,
    rtol: Rtol = 1e-3,
    batch_size: BatchSize = 16,
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    seed: Seed = 0,
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """Run an ONNX file in onnxruntime and compare every output with a torch model.

    Per output: max/mean/median/p99 of abs and rel error, NaN/Inf check, top-1 agreement; then one
    PASSED | … or FAILED | … line. Exit 1 on mismatch.

    Example: explainfix verify out/model.onnx --reference out/ --data calib/
    """
    from ..jobs.verify import verify_job
    from .render import render_verify

    result = verify_job(onnx_file, jobs.ModelSpec(reference, arch, arch_kwargs, trust_pickle, trust_code),
                        jobs.DataSpec(data, input_size, mean, std, batch_size), atol=atol, rtol=rtol, seed=seed)
    render_verify(result)
    if json_out:
        emit_json({"command": "verify", "onnx": str(onnx_file), "reference": str(reference), **result.to_json(),
                   "summary": result.summary_line()})
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@command
def bench(
    models: Annotated[list[Path], typer.Argument(metavar="MODEL...", help="Models to compare (.onnx files or any loadable MODEL); ratios are to the first.", show_default=False)],
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    trust_code: TrustCode = False,
    input_size: InputSize = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size of the timed runs.")] = 1,
    threads: Annotated[int, typer.Option("--threads", help="onnxruntime intra-op threads (fixed).")] = 2,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs first.")] = 10,
    iters: Annotated[int, typer.Option("--iters", help="Timed runs per model, spread over the rounds.")] = 50,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds: each runs every model in turn; latency ratios are medians of same-round ratios, so machine drift cancels.")] = 5,
    seed: Seed = 0,
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """onnxruntime latency (p50/p90 after warm-up, fixed threads) and MACs/params side by side, with ratios.

    Models are timed interleaved (--rounds), so their ratios hold even on a busy machine.

    Example: explainfix bench resnet50.pt resnet50-pruned/ --arch torchvision.models:resnet50 --threads 2
    """
    from ..jobs.bench import bench_job
    from .render import render_bench

    rows = bench_job(models, arch, arch_kwargs, trust_pickle, trust_code, input_size, batch_size, threads, warmup, iters, seed,
                     rounds=rounds)
    render_bench(rows, batch_size, threads)
    if json_out:
        emit_json({"command": "bench", "batch_size": batch_size, "threads": threads, "iters": iters, "rounds": rounds,
                   "rows": rows})
