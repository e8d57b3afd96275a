"""The `explainfix` command line: parse → one library call → render → exit code.

Exit codes (../shared/CLI.md): 0 done, 1 a check failed, 2 bad usage or input, 3 cannot process.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import jobs
from ..core.errors import ExplainFixError, first_line

app = typer.Typer(
    name="explainfix",
    help="ExplainFix for real checkpoints: prune spatial filters and dead channels, explain spectra, "
    "fix filters, export and verify ONNX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)

# ---------------------------------------------------------------------------- shared options
ModelArg = Annotated[Path, typer.Argument(help="Checkpoint (.pt/.pth/.bin/.safetensors) or an explainfix output directory.", show_default=False)]
Arch = Annotated[Optional[str], typer.Option("--arch", help="Architecture for a weights file: MODULE:CALLABLE (torchvision.models:resnet18) or path/to/file.py:ClassName.")]
ArchKwargs = Annotated[Optional[str], typer.Option("--arch-kwargs", help='JSON keyword arguments for --arch, e.g. \'{"num_classes": 10}\'.')]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled nn.Module (runs code from the file).")]
Data = Annotated[Optional[Path], typer.Option("--data", help="Calibration data: class subfolders of images, a flat image folder, or an .npz with x (and y).")]
InputSize = Annotated[Optional[str], typer.Option("--input-size", help="Resize images to H or HxW (default: the recipe's, else 224).")]
Mean = Annotated[Optional[list[float]], typer.Option("--mean", help="Per-channel mean for normalisation (repeat the flag per channel).")]
Std = Annotated[Optional[list[float]], typer.Option("--std", help="Per-channel std for normalisation (repeat the flag per channel).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Calibration batch size.")]
Batches = Annotated[Optional[int], typer.Option("--batches", help="Use at most N calibration batches (default: all).")]
Out = Annotated[Optional[Path], typer.Option("-o", "--out", help="Output directory.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output directory.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto = CUDA when available).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for everything random.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (human output goes to stderr).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also EXPLAINFIX_DEBUG=1).")]
Atol = Annotated[float, typer.Option("--atol", help="ONNX vs torch: an element fails where abs err > atol AND rel err > rtol.")]
Rtol = Annotated[float, typer.Option("--rtol", help="ONNX vs torch relative tolerance (see --atol).")]
Fill = Annotated[str, typer.Option("--fill", help="none | fillzero | reset: what to do with zeroed kernels that stay.")]
RoundTo = Annotated[Optional[int], typer.Option("--round-to", help="Keep every pruned layer's channel count a multiple of N (e.g. 8): fewer channels removed, faster kernels.")]


def _print_error(message: str, hint: str | None = None) -> None:
    from .render import console

    console.print(f"[bold red]error:[/] {' '.join(message.split())}", soft_wrap=True, markup=True, highlight=False)
    if hint:
        console.print(f"[dim]hint:[/] {hint}", soft_wrap=True)


def _fail(code: int, message: str, hint: str | None = None) -> None:
    _print_error(message, hint)
    raise typer.Exit(code)


def command(fn: Callable) -> Callable:
    """Map the domain exceptions to exit codes in one place. ``--debug`` (or EXPLAINFIX_DEBUG=1) prints
    the full traceback first; the exit code stays the documented one."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug") or os.environ.get("EXPLAINFIX_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ExplainFixError as e:
            if debug:
                traceback.print_exc()
            _fail(e.exit_code, e.message, e.hint)
        except KeyboardInterrupt:
            _fail(130, "interrupted; nothing was written")
        except Exception as e:  # a bug or an unexpected library error: one line, exit 3
            if debug:
                traceback.print_exc()
            _fail(3, f"unexpected {type(e).__name__}: {first_line(e)}", "rerun with --debug for the traceback, and report it")

    return wrapper


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------- commands
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


@app.command()
@command
def info(
    model: ModelArg,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    input_size: InputSize = None,
    json_out: Json = False,
    debug: Debug = False,
) -> None:
    """Params, MACs for one input, spatial conv layers and filter counts, prunable channel groups.

    Example: explainfix info model-pruned/
    """
    from .render import render_info

    doc = jobs.info_job(jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle), jobs.DataSpec(input_size=input_size))
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
    batches: Batches = None,
    batch_size: BatchSize = 32,
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
    from .render import progress_bar, render_explain

    with progress_bar() as bar:
        job = jobs.explain_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle),
            jobs.DataSpec(data, input_size, mean, std, batch_size, batches),
            out=out, device=device, force=force, loglog=loglog, progress=bar,
        )
    render_explain(job)
    if json_out:
        emit_json(job.doc)


@app.command()
@command
def fix(
    model: ModelArg,
    init: Annotated[str, typer.Option("--init", help="ghaar | dct | keep (also haar, ghaar4, dct_steered): the fixed spatial filters. "
                                      "ghaar: random steering of horizontal/vertical/diagonal components, frequency U(0, 2(k-1)); "
                                      "dct: DCT-II basis filters; keep: the current values, only frozen.")] = "ghaar",
    data: Annotated[Optional[Path], typer.Option("--data", help="Labeled images to report accuracy before/after (optional).")] = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    batch_size: BatchSize = 32,
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
    """Fixed spatial filters: replace every spatial kernel by GHaar or DCT filters (or keep it) and freeze it.

    The frozen tensors are listed in the recipe, so finetune (and every later command) leaves them alone.

    Example: explainfix fix model.pt --arch torchvision.models:resnet18 --init ghaar -o r18-fixed/
    """
    from .render import render_fix

    job = jobs.fix_job(jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle), init,
                       jobs.DataSpec(data, input_size, mean, std, batch_size), out=out, device=device, seed=seed, force=force)
    render_fix(job)
    if json_out:
        emit_json(job.report)


Epochs = Annotated[int, typer.Option("--epochs", help="Passes over --data.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: 0.01 for sgd, 1e-3 for adamw), cosine-decayed to 0.")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="sgd (momentum 0.9 Nesterov, weight decay 5e-4) | adamw (weight decay 1e-4).")]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", help="Override the optimizer's default weight decay.")]
EvalData = Annotated[Optional[Path], typer.Option("--eval-data", help="Labeled held-out images (class subfolders) for accuracy.")]


@app.command()
@command
def finetune(
    model: ModelArg,
    data: Annotated[Path, typer.Option("--data", help="Labeled training images: class subfolders (or an .npz with x and y).")],
    epochs: Epochs = 1,
    lr: Lr = None,
    optimizer: Optimizer = "sgd",
    weight_decay: WeightDecay = None,
    fixed_spatial: Annotated[Optional[bool], typer.Option("--fixed-spatial/--no-fixed-spatial", help="Keep spatial filters frozen. "
                             "Default: on when the recipe has frozen filters (a fixed model), off otherwise.", show_default=False)] = None,
    eval_data: EvalData = None,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    batches: Annotated[Optional[int], typer.Option("--batches", help="At most N batches per epoch (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 32,
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
    """Short supervised training (cross-entropy) to recover accuracy after pruning; frozen spatial filters stay frozen.

    Labels are the sorted class-subfolder index. No augmentation. Writes a new explainfix dir that keeps the recipe chain.

    Example: explainfix finetune model-pruned/ --data train/ --epochs 3 --eval-data val/ -o model-tuned/
    """
    from ..train.finetune import TrainOptions
    from .render import render_finetune, work_progress

    options = TrainOptions(epochs=epochs, optimizer=optimizer, lr=lr, weight_decay=weight_decay, max_batches=batches)
    with work_progress() as bar:
        job = jobs.finetune_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle), jobs.DataSpec(data, input_size, mean, std, batch_size),
            options, fixed_spatial=fixed_spatial, eval_data=eval_data, out=out, device=device, seed=seed, force=force,
            on_step=bar.step if bar else None,
        )
    render_finetune(job)
    if json_out:
        emit_json(job.report)


@app.command()
@command
def compress(
    model: ModelArg,
    pct: Annotated[float, typer.Option("--pct", help="Percentage of spatial filters to zero, in (0, 100).")],
    data: Annotated[Path, typer.Option("--data", help="Calibration images for saliency (class subfolders; also the fine-tuning set).")],
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Labeled images for accuracy and agreement (default: --data).")] = None,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tune on --data after pruning (0 = no fine-tuning).")] = 0,
    lr: Lr = None,
    optimizer: Optimizer = "sgd",
    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", help="Gate: accuracy may drop at most PTS percentage points.")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="Gate: top-1 agreement with the original ≥ F (a fraction, e.g. 0.98).")] = None,
    atol: Atol = 1e-4,
    rtol: Rtol = 1e-3,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 18,
    criterion: Annotated[Optional[str], typer.Option("--criterion", help="saliency | magnitude (default saliency).")] = None,
    fill: Fill = "none",
    round_to: RoundTo = None,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Measure onnxruntime latency of the original and the result.")] = True,
    threads: Annotated[int, typer.Option("--threads", help="onnxruntime threads for the latency measurement.")] = 2,
    bench_iters: Annotated[int, typer.Option("--bench-iters", help="Timed runs per model.")] = 50,
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    trust_pickle: TrustPickle = False,
    batches: Batches = None,
    batch_size: BatchSize = 32,
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
    """Prune → (fine-tune) → export ONNX → verify → quality gates, in one command for CI.

    Writes OUT/ with model.safetensors, explainfix.json, model.onnx, report.json and summary.md (also when a gate
    fails, so CI can publish it). Exit 1 when a gate fails; the last line names it with its numbers.

    Example: explainfix compress model.pt --arch m.py:Net --pct 70 --data calib/ --eval-data val/ --max-accuracy-drop 1 -o out/
    """
    from ..core.errors import CheckFailed
    from ..jobs.compress import compress_job
    from ..train.finetune import TrainOptions
    from .render import render_compress, work_progress

    with work_progress() as bar:
        job = compress_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle), jobs.DataSpec(data, input_size, mean, std, batch_size, batches),
            pct, eval_data=eval_data, finetune_epochs=finetune_epochs, train=TrainOptions(optimizer=optimizer, lr=lr),
            criterion=criterion, fill=fill, round_to=round_to, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, atol=atol, rtol=rtol,
            opset=opset, bench=bench, threads=threads, bench_iters=bench_iters, out=out, device=device, seed=seed,
            force=force, progress=bar, on_step=bar.step if bar else None,
        )
    render_compress(job)
    if json_out:
        emit_json(job.report)
    if not job.passed:
        raise CheckFailed(job.failure_message())


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
        jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle), jobs.DataSpec(data, input_size, mean, std, batch_size),
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

    result = verify_job(onnx_file, jobs.ModelSpec(reference, arch, arch_kwargs, trust_pickle),
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

    rows = bench_job(models, arch, arch_kwargs, trust_pickle, input_size, batch_size, threads, warmup, iters, seed,
                     rounds=rounds)
    render_bench(rows, batch_size, threads)
    if json_out:
        emit_json({"command": "bench", "batch_size": batch_size, "threads": threads, "iters": iters, "rounds": rounds,
                   "rows": rows})


def _usage_error_types() -> tuple[type, ...]:
    """Typer ≥ 0.2x vendors click (its errors derive from TyperException); older Typer uses click."""
    types: list[type] = []
    try:
        from typer.exceptions import TyperException

        types.append(TyperException)
    except ImportError:
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    """Console entry point: usage errors become one ``error:`` line (exit 2) like every other error."""
    try:
        code = app(standalone_mode=False)  # returns the exit code of a typer.Exit raised in a command
        sys.exit(code if isinstance(code, int) else 0)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Abort:
        _print_error("interrupted; nothing was written")
        sys.exit(130)
    except _usage_error_types() as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # the help was printed
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "explainfix"
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        _print_error(message, f"see `{cmd} --help`")
        sys.exit(getattr(e, "exit_code", 2) or 2)
