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
from .errors import BadInput, ExplainFixError, first_line
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
    macs: int = 0  # of one input, counted by the probe forward in open_inputs

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
    if calib is not None and calib.array is not None and calib.array.ndim == 4 and calib.array.shape[1] != pre.channels:
        raise BadInput(f"{calib.source}: x has {calib.array.shape[1]} channels but the model's first conv takes {pre.channels}",
                       hint="x must be (N, C, H, W) as the model expects it (already normalised)")
    opened = Opened(loaded, pre, calib, dev)
    opened.macs = _probe(opened)
    return opened


def _probe(opened: Opened) -> int:
    """Run the model once on one input — counting its MACs, which every command reports — so that a wrong
    input size is a clear bad-input error, not a crash deep inside the pipeline."""
    x = opened.example(1)
    try:
        return count_macs(opened.model, x)
    except Exception as e:  # noqa: BLE001 - whatever the model's forward raises
        shape = "×".join(map(str, x.shape)) if isinstance(x, torch.Tensor) else "the example"
        raise BadInput(f"the model does not run on a {shape} input: {type(e).__name__}: {first_line(e, 200)}",
                       hint="check --input-size (and --arch / --arch-kwargs) against what the model expects") from None


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
    round_to: int | None = None,
    progress: Progress | None = None,
) -> PruneJob:
    if not 0 < pct < 100:
        raise BadInput(f"--pct must be in (0, 100), got {pct:g}", hint="e.g. --pct 50")
    opened = open_inputs(model, data, device)
    out = Path(out) if out is not None else default_out(model.path, "pruned")
    check_output_dir(out, force)
    result, recipe = prune_opened(opened, data, pct, criterion, fill, seed, check_samples, progress, round_to)
    calib = opened.calib
    report = {"command": "prune", "model": str(model.path), "out": str(out), "preprocessing": opened.pre.to_dict(),
              "data": calib.describe() if calib else None, **result.to_json()}
    opened.model.to("cpu")
    t0 = time.perf_counter()
    save_model_dir(opened.model, recipe, out, extra={"report.json": report}, force=force)
    result.timings["save"] = time.perf_counter() - t0
    report["timings"] = result.timings
    return PruneJob(result, out, report, opened.model)


def prune_opened(
    opened: Opened,
    data: DataSpec,
    pct: float,
    criterion: str | None = None,
    fill: str = "none",
    seed: int = 0,
    check_samples: int = 8,
    progress: Progress | None = None,
    round_to: int | None = None,
) -> tuple[PruneResult, dict]:
    """Prune ``opened.model`` in place; return the result and the updated recipe (nothing is written)."""
    if not 0 < pct < 100:
        raise BadInput(f"--pct must be in (0, 100), got {pct:g}", hint="e.g. --pct 50")
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
        round_to=round_to, macs_before=opened.macs, progress=_with_total(progress, calib.num_batches(data.batch_size, data.batches or float("inf")) if calib else None),
    )
    recipe = dict(opened.loaded.recipe)
    recipe["preprocessing"] = opened.pre.to_dict()
    recipe["edits"] = list(recipe.get("edits", [])) + [result.edit]
    provenance = {
        "command": "prune", "time": now(), "pct": pct, "criterion": criterion, "fill": fill, "seed": seed,
        "round_to": round_to,
        "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256,
        "data": calib.describe() if calib else None,
    }
    recipe["provenance"] = list(recipe.get("provenance", [])) + [provenance]
    return result, recipe


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
        gm, g = graph_mod.build_graph(m, x)
        prunable = [s for s in g.spaces if s.prunable and s.producers]
        groups = {
            "traced": True, "spaces": len(g.spaces), "prunable": len(prunable),
            "prunable_channels": sum(s.size for s in prunable),
            "frozen": sorted({r for s in g.spaces for r in s.frozen})[:10],
            "opaque": {**graph_mod.opaque_modules(gm), **g.passed},
        }
    except ExplainFixError as e:
        groups = {"traced": False, "reason": e.message}
    return {
        "model": str(model.path),
        "source_format": opened.loaded.source_format,
        "arch": opened.loaded.recipe.get("arch"),
        "params": count_params(m),
        "macs": opened.macs,
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


# ----------------------------------------------------------------------------------------------- fix
FIX_INITS = {"ghaar": "ghaar", "dct": "dct", "keep": "unchanged", "haar": "haar", "ghaar4": "ghaar4",
             "dct_steered": "dct_steered"}  # CLI name → kernels.fix_spatial_conv2d method


@dataclass
class FixJob:
    out: Path
    report: dict
    model: nn.Module


def evaluate_on(model: nn.Module, calib: CalibrationSet | None, batch_size: int, device: torch.device) -> dict | None:
    """Top-1 predictions and accuracy on a calibration set (None without data)."""
    from .finetune import accuracy, predict

    if calib is None:
        return None
    preds, labels = predict(model, calib.batches(batch_size), device)
    return {"preds": preds, "labels": labels, "accuracy": accuracy(preds, labels), "samples": len(labels)}


def fix_job(
    model: ModelSpec,
    init: str,
    data: DataSpec | None = None,
    out: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
) -> FixJob:
    """Replace (or keep) every spatial conv's kernels by fixed filters and freeze them in the recipe."""
    from .finetune import agreement
    from .kernels import fix_spatial_conv2d

    if init not in FIX_INITS:
        raise BadInput(f"--init must be one of {', '.join(FIX_INITS)}, got {init!r}", hint="e.g. --init ghaar")
    opened = open_inputs(model, data, device)
    out = Path(out) if out is not None else default_out(model.path, f"fixed-{init}")
    check_output_dir(out, force)
    m = opened.model.to(opened.device)
    bs = data.batch_size if data else 32
    before = evaluate_on(m, opened.calib, bs, opened.device)
    trainable_before = sum(p.numel() for p in m.parameters() if p.requires_grad)
    layers = fix_spatial_conv2d(m, FIX_INITS[init], seed=seed)
    if not layers:
        raise BadInput("the model has no spatial Conv2d (kernel larger than 1×1) to fix")
    frozen_now = [f"{name}.{p}" for name in layers for p, _ in m.get_submodule(name).named_parameters(recurse=False)]
    after = evaluate_on(m, opened.calib, bs, opened.device)
    recipe = dict(opened.loaded.recipe)
    recipe["preprocessing"] = opened.pre.to_dict()
    recipe["edits"] = list(recipe.get("edits", [])) + [{"op": "fix", "init": init, "seed": seed, "layers": len(layers)}]
    recipe["frozen"] = sorted(set(recipe.get("frozen", [])) | set(frozen_now))
    provenance = {"command": "fix", "time": now(), "init": init, "seed": seed,
                  "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256}
    recipe["provenance"] = list(recipe.get("provenance", [])) + [provenance]
    convs = dict(sal.iter_spatial_convs(m))
    report = {
        "command": "fix", "model": str(model.path), "out": str(out), "init": init, "seed": seed,
        "layers": [{"name": n, "kernel": list(convs[n].kernel_size), "filters": int(convs[n].weight.shape[0] * convs[n].weight.shape[1])}
                   for n in layers],
        "spatial_filters": sum(int(convs[n].weight.shape[0] * convs[n].weight.shape[1]) for n in layers),
        "frozen": recipe["frozen"],
        "frozen_params": sum(p.numel() for n, p in m.named_parameters() if n in set(recipe["frozen"])),
        "params": count_params(m), "trainable_params_before": trainable_before,
        "trainable_params_after": sum(p.numel() for p in m.parameters() if p.requires_grad),
        "data": opened.calib.describe() if opened.calib else None,
        "accuracy_before": before["accuracy"] if before else None,
        "accuracy_after": after["accuracy"] if after else None,
        "agreement": agreement(before["preds"], after["preds"]) if before else None,
    }
    m.to("cpu")
    save_model_dir(m, recipe, out, extra={"report.json": report}, force=force)
    return FixJob(out, report, m)


# ------------------------------------------------------------------------------------------ finetune
@dataclass
class FinetuneJob:
    out: Path
    report: dict
    result: Any  # finetune.FinetuneResult
    model: nn.Module


def finetune_opened(
    opened: Opened,
    data: DataSpec,
    options: Any,
    fixed_spatial: bool | None = None,
    eval_calib: CalibrationSet | None = None,
    seed: int = 0,
    on_step: Any = None,
    recipe: dict | None = None,
) -> tuple[Any, dict]:
    """Fine-tune ``opened.model`` in place on ``opened.calib``; return the FinetuneResult and the new recipe.

    ``fixed_spatial`` None: keep the recipe's frozen tensors frozen (a fixed model stays fixed); True on a
    model without frozen tensors: freeze its spatial filters as they are; False: train everything.
    ``recipe`` defaults to the loaded model's (pass the pruned one when chaining in memory)."""
    from .finetune import accuracy, finetune, predict, set_spatial_frozen, shuffled_batches, spatial_param_names

    if opened.calib is None:
        raise BadInput("fine-tuning needs labeled data", hint="pass --data PATH with class subfolders")
    recipe = dict(opened.loaded.recipe if recipe is None else recipe)
    stored = list(recipe.get("frozen", []))
    fixed = bool(stored) if fixed_spatial is None else fixed_spatial
    names = (stored or spatial_param_names(opened.model)) if fixed else []
    frozen = set_spatial_frozen(opened.model, names, fixed)
    batches, steps = shuffled_batches(opened.calib, data.batch_size, seed=seed)
    evaluate = None
    if eval_calib is not None:
        if not eval_calib.labeled:
            raise BadInput(f"--eval-data {eval_calib.source} is unlabeled", hint="use class subfolders")
        evaluate = lambda m: accuracy(*predict(m, eval_calib.batches(data.batch_size), opened.device))  # noqa: E731
    result = finetune(opened.model, batches, options, steps_per_epoch=steps, device=opened.device,
                      evaluate=evaluate, on_step=on_step, seed=seed)
    opt = result.options
    recipe["preprocessing"] = opened.pre.to_dict()
    recipe["frozen"] = frozen
    recipe["edits"] = list(recipe.get("edits", [])) + [{"op": "finetune", "epochs": opt["epochs"], "seed": seed}]
    provenance = {
        "command": "finetune", "time": now(), "epochs": opt["epochs"], "optimizer": opt["optimizer"], "lr": opt["lr"],
        "weight_decay": opt["weight_decay"], "batch_size": data.batch_size, "fixed_spatial": fixed, "seed": seed,
        "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256,
        "data": opened.calib.describe(), "eval_data": eval_calib.describe() if eval_calib else None,
        "final_loss": result.epochs[-1].loss, "final_train_accuracy": result.epochs[-1].accuracy,
        "eval_accuracy": result.eval_accuracy_after,
    }
    recipe["provenance"] = list(recipe.get("provenance", [])) + [provenance]
    return result, recipe


def finetune_job(
    model: ModelSpec,
    data: DataSpec,
    options: Any,
    fixed_spatial: bool | None = None,
    eval_data: Path | None = None,
    out: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
    on_step: Any = None,
) -> FinetuneJob:
    """Short supervised training on a labeled folder; writes a new explainfix dir keeping the recipe chain."""
    if data.path is None:
        raise BadInput("finetune needs --data PATH (labeled class subfolders)")
    options = options.resolved()
    opened = open_inputs(model, data, device)
    out = Path(out) if out is not None else default_out(model.path, "finetuned")
    check_output_dir(out, force)
    eval_calib = load_calibration(eval_data, opened.pre) if eval_data is not None else None
    result, recipe = finetune_opened(opened, data, options, fixed_spatial, eval_calib, seed, on_step)
    m = opened.model.to("cpu")
    report = {"command": "finetune", "model": str(model.path), "out": str(out),
              "data": opened.calib.describe(), "eval_data": eval_calib.describe() if eval_calib else None,
              "params": count_params(m), "fixed_spatial": bool(recipe["frozen"]), **result.to_json()}
    save_model_dir(m, recipe, out, extra={"report.json": report}, force=force)
    return FinetuneJob(out, report, result, m)
