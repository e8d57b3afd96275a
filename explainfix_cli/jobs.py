"""One function per command: open the inputs, run the library, write the outputs; return a result.

These compose the library for the CLI (and for scripts that want the CLI's behaviour without a shell);
they never print. ``progress(stage, completed, total)`` reports long work.
"""
from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import graph as graph_mod
from . import saliency as sal
from .checkpoint import LoadedModel, load_model, parse_arch_kwargs, save_model_dir, check_output_dir
from .data import CalibrationSet, Preprocessing, load_calibration, parse_input_size, random_inputs, resolve_preprocessing
from .errors import BadInput, ExplainFixError
from .measure import count_macs, count_params
from .prune import Progress, PruneResult, prune_model


@dataclass
class ModelSpec:
    """How the user named a model on the command line."""

    path: Path
    arch: str | None = None
    arch_kwargs: str | None = None
    trust_pickle: bool = False


@dataclass
class DataSpec:
    path: Path | None = None
    input_size: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    batch_size: int = 32
    batches: int | None = None


@dataclass
class Opened:
    loaded: LoadedModel
    pre: Preprocessing
    calib: CalibrationSet | None
    device: torch.device

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def example(self, n: int = 1) -> torch.Tensor:
        """``n`` real calibration inputs when there is data, else seeded random ones."""
        if self.calib is not None:
            x, _ = next(iter(self.calib.batches(n)))
            return x
        return random_inputs(self.pre, n)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise BadInput(f"--device {device!r} is not a device", hint="use auto, cpu, cuda or cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: CUDA is not available on this machine", hint="use --device cpu or auto")
    if d.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {device!r} is not supported", hint="use auto, cpu, cuda or cuda:N")
    return d


def open_inputs(model: ModelSpec, data: DataSpec | None, device: str = "cpu", purpose: str = "restructure") -> Opened:
    """Load the model, resolve preprocessing (flags → recipe → defaults) and open the calibration data."""
    dev = resolve_device(device)
    if data is not None and data.batch_size < 1:
        raise BadInput(f"--batch-size must be ≥ 1, got {data.batch_size}")
    if data is not None and data.batches is not None and data.batches < 1:
        raise BadInput(f"--batches must be ≥ 1, got {data.batches}")
    loaded = load_model(model.path, model.arch, parse_arch_kwargs(model.arch_kwargs), model.trust_pickle, purpose)
    data = data or DataSpec()
    size = parse_input_size(data.input_size) if data.input_size else None
    pre = resolve_preprocessing(loaded.model, size, data.mean, data.std, loaded.preprocessing)
    calib = load_calibration(data.path, pre) if data.path is not None else None
    return Opened(loaded, pre, calib, dev)


def default_out(model_path: Path, suffix: str) -> Path:
    stem = model_path.name if model_path.is_dir() else model_path.stem
    if model_path.suffix == ".safetensors" and model_path.name == "model.safetensors":
        stem = model_path.parent.name
    return Path(f"{stem}-{suffix}")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------------------------- prune
@dataclass
class PruneJob:
    result: PruneResult
    out: Path
    report: dict
    model: nn.Module  # the pruned model, in memory (CPU)


def prune_job(
    model: ModelSpec,
    data: DataSpec,
    pct: float,
    out: Path | None = None,
    criterion: str | None = None,
    fill: str = "none",
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
    check_samples: int = 8,
    progress: Progress | None = None,
) -> PruneJob:
    if not 0 < pct < 100:
        raise BadInput(f"--pct must be in (0, 100), got {pct:g}", hint="e.g. --pct 50")
    opened = open_inputs(model, data, device)
    out = Path(out) if out is not None else default_out(model.path, "pruned")
    check_output_dir(out, force)
    criterion = criterion or ("saliency" if opened.calib is not None else "magnitude")
    if criterion == "saliency" and opened.calib is None:
        raise BadInput("--criterion saliency needs calibration data", hint="pass --data PATH, or use --criterion magnitude")
    torch.manual_seed(seed)
    calib = opened.calib
    batches = None
    if calib is not None:
        batches = lambda: calib.batches(data.batch_size, data.batches or float("inf"))  # noqa: E731
    check_x = opened.example(check_samples)
    if progress and calib is not None:
        progress("saliency", 0, calib.num_batches(data.batch_size, data.batches or float("inf")))
    result = prune_model(
        opened.model, pct, example=check_x[:1], batches=batches, num_batches=data.batches, criterion=criterion,
        fill=fill, device=opened.device, target_fn=sal.onehot_targets, check_inputs=check_x, seed=seed,
        progress=_with_total(progress, calib.num_batches(data.batch_size, data.batches or float("inf")) if calib else None),
    )
    recipe = dict(opened.loaded.recipe)
    recipe["preprocessing"] = opened.pre.to_dict()
    recipe["edits"] = list(recipe.get("edits", [])) + [result.edit]
    provenance = {
        "command": "prune", "time": now(), "pct": pct, "criterion": criterion, "fill": fill, "seed": seed,
        "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256,
        "data": calib.describe() if calib else None,
    }
    recipe["provenance"] = list(recipe.get("provenance", [])) + [provenance]
    report = {"command": "prune", "model": str(model.path), "out": str(out), "preprocessing": opened.pre.to_dict(),
              "data": calib.describe() if calib else None, **result.to_json()}
    opened.model.to("cpu")
    t0 = time.perf_counter()
    save_model_dir(opened.model, recipe, out, extra={"report.json": report}, force=force)
    result.timings["save"] = time.perf_counter() - t0
    report["timings"] = result.timings
    return PruneJob(result, out, report, opened.model)


def _with_total(progress: Progress | None, total: int | None) -> Progress | None:
    if progress is None:
        return None
    return lambda stage, done, _t: progress(stage, done, total)


# ---------------------------------------------------------------------------------------------- info
def info_job(model: ModelSpec, data: DataSpec | None = None) -> dict:
    opened = open_inputs(model, data, "cpu", purpose="analyse")
    m = opened.model
    x = opened.example(1)
    convs = sal.iter_spatial_convs(m)
    layers = [
        {"name": n, "kernel": list(c.kernel_size), "in": c.in_channels, "out": c.out_channels, "groups": c.groups,
         "filters": int(c.weight.shape[0] * c.weight.shape[1]),
         "zero_filters": int((c.weight.detach().flatten(2).abs().sum(2) == 0).sum())}
        for n, c in convs
    ]
    groups: dict[str, Any]
    try:
        _, g = graph_mod.build_graph(m, x)
        prunable = [s for s in g.spaces if s.prunable and s.producers]
        groups = {
            "traced": True, "spaces": len(g.spaces), "prunable": len(prunable),
            "prunable_channels": sum(s.size for s in prunable),
            "frozen": sorted({r for s in g.spaces for r in s.frozen})[:10],
        }
    except ExplainFixError as e:
        groups = {"traced": False, "reason": e.message}
    return {
        "model": str(model.path),
        "source_format": opened.loaded.source_format,
        "arch": opened.loaded.recipe.get("arch"),
        "params": count_params(m),
        "macs": count_macs(m, x),
        "input_shape": list(x.shape[1:]),
        "preprocessing": opened.pre.to_dict(),
        "spatial_layers": len(layers),
        "spatial_filters": sum(layer["filters"] for layer in layers),
        "zero_spatial_filters": sum(layer["zero_filters"] for layer in layers),
        "layers": layers,
        "channel_groups": groups,
        "edits": len(opened.loaded.recipe.get("edits", [])),
        "frozen_params": len(opened.loaded.recipe.get("frozen", [])),
    }


# ------------------------------------------------------------------------------------------- explain
@dataclass
class ExplainJob:
    report: Any  # explain.ExplainReport
    out: Path
    doc: dict


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
    from .checkpoint import write_output_dir
    from .explain import explain_model
    from .figures import save_spectra_png

    opened = open_inputs(model, data, device, purpose="explain")
    out = Path(out) if out is not None else default_out(model.path, "explain")
    check_output_dir(out, force)
    calib, batches, limit = opened.calib, None, float("inf")
    if calib is not None:
        limit = data.batches or float("inf")
        batches = calib.batches(data.batch_size, limit)
        total = calib.num_batches(data.batch_size, limit)
        if progress:
            progress("saliency", 0, total)
        progress = _counting(_with_total(progress, total))
    report = explain_model(opened.model, batches, opened.device, limit, target_fn=sal.onehot_targets, progress=progress)
    doc = {"command": "explain", "model": str(model.path), "out": str(out), "data": calib.describe() if calib else None,
           "preprocessing": opened.pre.to_dict(), **report.to_json()}
    with tempfile.TemporaryDirectory() as tmp:
        png = save_spectra_png(report, Path(tmp) / "spectra.png", loglog=loglog)
        write_output_dir(out, {"spectra.json": doc, "spectra.png": png.read_bytes()}, force=force)
    return ExplainJob(report, out, doc)


def _counting(progress: Progress | None) -> Callable[[int], None] | None:
    """Adapt a (stage, done, total) callback to the per-batch ``advance(n)`` of the gradient loop."""
    if progress is None:
        return None
    done = [0]

    def advance(n: int = 1, *_: Any) -> None:
        done[0] += n
        progress("saliency", done[0], None)

    return advance
