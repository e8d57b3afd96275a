"""`explainfix quantize`: static INT8 with onnxruntime, verified against FP32, accuracy-controlled, timed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..jobs.quantize import MAX_FLOAT
from .base import app, command
from .options import (
    BENCH,
    GATES,
    REQUIRED,
    BatchSize,
    Data,
    HeldOutData,
    Images,
    MaxFloat,
    Output,
    Seed,
    Source,
    Timing,
    grouped,
)


@dataclass
class QuantizeImages(Images):
    """``--data`` required (calibration), ``--eval-data`` for the check; batches of 16."""

    data: Data = REQUIRED
    eval_data: HeldOutData = None
    batch_size: BatchSize = 16


@dataclass
class Int8Gates:
    """INT8 against its FP32 model, and how far accuracy control may go to meet that."""

    max_accuracy_drop: Annotated[Optional[float], typer.Option("--max-accuracy-drop", rich_help_panel=GATES,
                                 help="Gate: INT8 accuracy at most PTS percentage points below FP32 (labeled --eval-data).")] = None
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", rich_help_panel=GATES,
                             help="Gate: top-1 (dense models: per-pixel) agreement of INT8 with FP32 ≥ F.")] = None
    max_float: MaxFloat = MAX_FLOAT


@dataclass
class Int8Timing(Timing):
    """quantize times the FP32 and the INT8 model, at two batch sizes."""

    bench: Annotated[bool, typer.Option("--bench/--no-bench", rich_help_panel=BENCH,
                                        help="Time FP32 and INT8 interleaved at batch 1 and 8.")] = True


@app.command()
@command
@grouped
def quantize(
    model: Annotated[Path, typer.Argument(help="An explainfix directory, a checkpoint (with --arch) or an FP32 .onnx file.", show_default=False)],
    *,
    type_: Annotated[str, typer.Option("--type", help="Quantized type: int8 (the only one).")] = "int8",
    calibrate: Annotated[str, typer.Option("--calibrate", help="Activation ranges: minmax | entropy | percentile (onnxruntime's calibrators).")] = "minmax",
    calib_images: Annotated[int, typer.Option("--calib-images", help="Calibration samples (seeded random subset of --data; streamed).")] = 300,
    activations: Annotated[str, typer.Option("--activations", help="auto (what onnxruntime prescribes for this CPU) | uint8 (asymmetric) | int8 (symmetric).")] = "auto",
    per_tensor: Annotated[bool, typer.Option("--per-tensor", help="One weight scale per tensor instead of per output channel.")] = False,
    keep_float: Annotated[Optional[list[str]], typer.Option("--keep-float", help="Keep this node (ONNX node name or torch module name, e.g. layer1.0.conv1) in float; repeat the flag.")] = None,
    gates: Int8Gates, timing: Int8Timing, inputs: QuantizeImages, source: Source, output: Output, seed: Seed = 0,
) -> Any:
    """Static INT8 (onnxruntime QDQ: int8 per-channel weights, 8-bit activations), checked against FP32.

    Writes OUT/ (default <model-stem>-int8/) with model.int8.onnx, model.onnx (the FP32 model, when MODEL is
    not .onnx) and report.json, only when every gate passes. When a gate fails, the most sensitive nodes
    are kept in float, the fewest found (1..8, then doubling up to --max-float, then bisection); exit 1 when
    none meets it.

    Example: explainfix quantize model-pruned/ --data calib/ --eval-data val/ --max-accuracy-drop 1 -o model-int8
    """
    from ..deploy.quantize import QuantizeOptions
    from ..jobs.quantize import quantize_job
    from .render import work_progress

    options = QuantizeOptions(type=type_, calibrate=calibrate, calib_images=calib_images, per_channel=not per_tensor,
                              activations=activations, keep_float=tuple(keep_float or ()), batch_size=inputs.batch_size,
                              seed=seed)
    with work_progress() as bar:
        job = quantize_job(source.spec(model), inputs.spec(), eval_data=inputs.eval_data, options=options,
                           out=output.out, force=output.force, max_accuracy_drop=gates.max_accuracy_drop,
                           min_agreement=gates.min_agreement, max_float=gates.max_float, timing=timing.options(),
                           progress=bar)
    render_quantize(job)
    return job  # a failed gate: exit 1 with the numbers, nothing written (cli/base.py)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def render_quantize(job: Any) -> None:
    """The settings line, FP32 vs INT8 table, float layers, timing verdict, gates."""
    from rich.table import Table

    from .render import console, render_notes

    r = job.report
    render_notes({"load_notes": r["notes"]})
    s = r["settings"]
    console.print(f"INT8 ({s['format']}): weights {s['weights']}, activations {s['activations']}, reduce_range "
                  f"{s['reduce_range']}, {s['calibrate']} calibration on {r['calib_samples']} samples; CPU "
                  f"{s['isa']['name']} ({s['recommended']['why']}); onnxruntime {s['onnxruntime']}", soft_wrap=True)
    c = r["comparison"]
    t = Table(title=f"FP32 vs INT8 · {c['samples']} samples of {c['source']}", title_justify="left")
    for col in ("", "FP32", "INT8"):
        t.add_column(col, justify="left" if not col else "right")
    if c["accuracy_fp32"] is not None:
        ci = c["accuracy_int8_ci"]
        t.add_row("accuracy", _pct(c["accuracy_fp32"]), f"{_pct(c['accuracy_int8'])} (95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f})")
    if c["agreement"] is not None:
        t.add_row("top-1 agreement" if c["classifier"] else "per-pixel agreement", "", _pct(c["agreement"]))
    for o in c["outputs"][:4]:
        t.add_row(f"{o['name']}: SNR / cosine", "", f"{o['snr_db']:.1f} dB / {o['cosine']:.5f}" if o["cosine"] is not None else "—")
    bench = r.get("bench")
    for b in (bench or {}).get("batches", []):
        fp, q = b["rows"][0], b["rows"][1]
        t.add_row(f"latency p50, batch {b['batch_size']} ({bench['threads']} threads)", f"{fp['p50_ms']:.3f} ms",
                  f"{q['p50_ms']:.3f} ms ({b['speedup']:.2f}×, {b['speedup_range'][0]:.2f}–{b['speedup_range'][1]:.2f})")
    console.print(t)
    if r["float_layers"]:
        cost = (bench or {}).get("float_cost") or {}
        per = cost.get("per_layer_ms_estimate", {})
        f = Table(title="kept in float", title_justify="left")
        for col in ("layer", "op", "why", "latency (est.)"):
            f.add_column(col, overflow="fold")
        for n in r["float_layers"]:
            f.add_row(n.get("module") or n["name"], n["op_type"], n["why"], f"+{per[n['name']]:.3f} ms" if n["name"] in per else "")
        console.print(f)
    if bench:
        console.print(f"[bold]{bench['verdict']}[/]", soft_wrap=True)
    if r["gates"]:
        console.print(" · ".join(f"{g['name']} {g['value']} (needs {g['threshold']}): "
                                 + ("[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]") for g in r["gates"]))
    if job.written:
        console.print(f"wrote {job.out}/ ({', '.join(r['files'])})")
