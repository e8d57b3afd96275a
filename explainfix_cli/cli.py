"""The `explainfix` command line: parse → one library call → render → exit code.

Exit codes (../shared/CLI.md): 0 done, 1 a check failed, 2 bad usage or input, 3 cannot process.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import jobs
from .errors import ExplainFixError

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


def _fail(code: int, message: str, hint: str | None = None) -> None:
    from .report import console

    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if hint:
        console.print(f"[dim]hint:[/] {hint}", soft_wrap=True)
    raise typer.Exit(code)


def command(fn: Callable) -> Callable:
    """Map the domain exceptions to exit codes in one place; ``--debug`` re-raises with the traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug") or os.environ.get("EXPLAINFIX_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ExplainFixError as e:
            if debug:
                raise
            _fail(e.exit_code, e.message, e.hint)
        except KeyboardInterrupt:
            _fail(130, "interrupted; nothing was written")
        except Exception as e:  # a bug or an unexpected library error: one line, exit 3
            if debug:
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            _fail(3, f"unexpected {type(e).__name__}: {first}", "rerun with --debug for the traceback, and report it")

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
    fill: Annotated[str, typer.Option("--fill", help="none | fillzero | reset: what to do with zeroed kernels that stay.")] = "none",
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
    from .report import progress_bar, render_prune

    with progress_bar() as bar:
        job = jobs.prune_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle),
            jobs.DataSpec(data, input_size, mean, std, batch_size, batches),
            pct, out=out, criterion=criterion, fill=fill, device=device, seed=seed, force=force, progress=bar,
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
    from .report import render_info

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
    from .report import progress_bar, render_explain

    with progress_bar() as bar:
        job = jobs.explain_job(
            jobs.ModelSpec(model, arch, arch_kwargs, trust_pickle),
            jobs.DataSpec(data, input_size, mean, std, batch_size, batches),
            out=out, device=device, force=force, loglog=loglog, progress=bar,
        )
    render_explain(job)
    if json_out:
        emit_json(job.doc)


def main() -> None:
    app()
