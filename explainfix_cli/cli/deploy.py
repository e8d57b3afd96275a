"""`explainfix export`, `verify` and `bench`: ONNX out, checked and timed."""
from __future__ import annotations

from typing import Any

from pathlib import Path
from typing import Annotated

import typer

from .base import app, command
from .options import (
    DATA,
    OUTPUT,
    CheckImages,
    InputSize,
    Json,
    ModelArg,
    Opset,
    Output,
    Seed,
    Source,
    Threads,
    Tolerance,
    WeightDtype,
    grouped,
)


@app.command()
@command
@grouped
def export(
    model: ModelArg,
    *,
    onnx: Annotated[bool, typer.Option("--onnx", rich_help_panel=OUTPUT, help="Write model.onnx (the default when neither format is named).")] = False,
    safetensors: Annotated[bool, typer.Option("--safetensors", rich_help_panel=OUTPUT, help="Write model.safetensors with its recipe beside it.")] = False,
    dtype: WeightDtype = "keep",
    opset: Opset = 18,
    tolerance: Tolerance,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime check.")] = False,
    inputs: CheckImages, source: Source, output: Output, seed: Seed = 0, json_out: Json = False,
) -> Any:
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
        source.spec(model, dtype), inputs.spec(), onnx=onnx, safetensors=safetensors, out=output.out, opset=opset,
        atol=tolerance.atol, rtol=tolerance.rtol, verify=not no_verify, force=output.force, seed=seed,
    )
    render_export(job)
    return job  # a mismatch: exit 1, nothing written (cli/base.py)


@app.command()
@command
@grouped
def verify(
    onnx_file: Annotated[Path, typer.Argument(metavar="ONNX", help="The .onnx file to check.", show_default=False)],
    *,
    reference: Annotated[Path, typer.Option("--reference", help="The torch MODEL it must match (any loadable model).", show_default=False)],
    tolerance: Tolerance, inputs: CheckImages, source: Source, seed: Seed = 0, json_out: Json = False,
) -> Any:
    """Run an ONNX file in onnxruntime and compare every output with a torch model.

    Per output: max/mean/median/p99 of abs and rel error, NaN/Inf check, top-1 agreement; then one
    PASSED | … or FAILED | … line. Exit 1 on mismatch.

    Example: explainfix verify out/model.onnx --reference out/ --data calib/
    """
    from ..jobs.verify import verify_job
    from .render import render_verify

    job = verify_job(onnx_file, source.spec(reference), inputs.spec(), atol=tolerance.atol, rtol=tolerance.rtol, seed=seed)
    render_verify(job.result)
    return job


@app.command()
@command
@grouped
def bench(
    models: Annotated[list[Path], typer.Argument(metavar="MODEL...", help="Models to compare (.onnx files or any loadable MODEL); ratios are to the first.", show_default=False)],
    *,
    source: Source,
    input_size: InputSize = None,
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=DATA, help="Batch size of the timed runs.")] = 1,
    threads: Threads = 2,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs first.")] = 10,
    iters: Annotated[int, typer.Option("--iters", help="Timed runs per model, spread over the rounds.")] = 50,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved rounds: each runs every model in turn; latency ratios are medians of same-round ratios, so machine drift cancels.")] = 5,
    seed: Seed = 0,
    json_out: Json = False,
) -> Any:
    """onnxruntime latency (p50/p90 after warm-up, fixed threads) and MACs/params side by side, with ratios.

    Models are timed interleaved (--rounds), so their ratios hold even on a busy machine.

    Example: explainfix bench resnet50.pt resnet50-pruned/ --arch torchvision.models:resnet50 --threads 2
    """
    from ..jobs.bench import bench_job
    from .render import render_bench

    job = bench_job(models, source.arch, source.arch_kwargs, source.trust_pickle, source.trust_code, input_size, batch_size,
                    threads, warmup, iters, seed, rounds=rounds)
    render_bench(job.report["rows"], batch_size, threads)
    return job
