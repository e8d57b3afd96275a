"""Jobs that ship a model: export (ONNX / safetensors, verified), verify, bench.

    job = export_job(ModelSpec(Path("r18-pruned")), DataSpec(Path("calib")), onnx=True)
    job.verify.passed, job.out / "model.onnx"

Artifacts are built in a temporary folder beside the output, verified, and only then moved in place:
a failed export or a failed check writes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import RECIPE_NAME, arch_label, load_model, parse_arch_kwargs, portable_recipe, write_output_dir
from .data import CalibrationSet, Preprocessing, parse_input_size, random_inputs, resolve_preprocessing
from .errors import BadInput, CheckFailed
from .jobs import DataSpec, ModelSpec, Opened, default_out, open_inputs

VERIFY_SAMPLES = 64  # real inputs checked against onnxruntime (all of them when the data set is smaller)


def verification_inputs(calib: CalibrationSet | None, pre: Preprocessing, batch_size: int = 16,
                        samples: int = VERIFY_SAMPLES, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``samples`` calibration inputs in batches of ≥ 2, or seeded random inputs without data."""
    if calib is None:
        return [random_inputs(pre, 4, seed), random_inputs(pre, 3, seed + 1)]
    xs, n = [], 0
    for x, _ in calib.batches(max(2, min(batch_size, samples))):
        xs.append(x)
        n += len(x)
        if n >= samples:
            break
    return xs


def provenance_metadata(opened: Opened) -> dict[str, str]:
    """ONNX ``metadata_props``: who made the model, from what, how it was pruned and fed."""
    recipe = opened.loaded.recipe
    meta = {
        "explainfix.version": recipe.get("versions", {}).get("explainfix", ""),
        "explainfix.arch": arch_label(recipe["arch"]),
        "explainfix.source_sha256": recipe.get("source", {}).get("sha256", opened.loaded.source_sha256),
        "explainfix.preprocessing": json.dumps(opened.pre.to_dict()),
    }
    from . import __version__

    meta["explainfix.version"] = __version__
    prunes = [p for p in recipe.get("provenance", []) if p.get("command") in ("prune", "compress")]
    if prunes:
        meta["explainfix.pct"] = f"{prunes[-1].get('pct'):g}"
        meta["explainfix.criterion"] = str(prunes[-1].get("criterion", ""))
    if recipe.get("frozen"):
        meta["explainfix.frozen_tensors"] = str(len(recipe["frozen"]))
    return meta


@dataclass
class ExportJob:
    out: Path
    files: list[str]
    export: Any = None  # export.OnnxExportResult
    verify: Any = None  # verify.VerifyResult
    doc: dict = field(default_factory=dict)


def export_job(
    model: ModelSpec,
    data: DataSpec,
    *,
    onnx: bool = True,
    safetensors: bool = False,
    out: Path | None = None,
    opset: int = 18,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    verify: bool = True,
    force: bool = False,
    seed: int = 0,
) -> ExportJob:
    """Export, verify against onnxruntime, then move the files into ``out`` (default: the explainfix
    directory itself, else ``<stem>-export/``). Raises CheckFailed (exit 1) on a mismatch."""
    from .export import export_onnx, export_safetensors
    from .verify import verify_onnx

    if atol < 0 or rtol < 0:
        raise BadInput(f"--atol/--rtol must be ≥ 0, got {atol:g}/{rtol:g}")
    opened = open_inputs(model, data, "cpu", purpose="export")
    in_place = opened.loaded.source_format == "explainfix" and out is None
    if out is None:
        out = opened.loaded.source if in_place else default_out(model.path, "export")
    out = Path(out)
    names = (["model.onnx"] if onnx else []) + (["model.safetensors"] if safetensors else [])
    if out.exists() and not force:
        clash = [n for n in names if (out / n).exists()] if in_place else ([] if not any(out.iterdir()) else names)
        if clash:
            raise BadInput(f"{out / clash[0]} exists", hint="pass --force to overwrite, or choose another -o")
    torch.manual_seed(seed)
    meta = provenance_metadata(opened)
    job = ExportJob(out, names)
    parent = out.resolve().parent if not in_place else out.resolve()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".explainfix-export-", dir=parent))
    try:
        if onnx:
            example = verification_inputs(opened.calib, opened.pre, 2, 2, seed)[0]
            job.export = export_onnx(opened.model, example, work / "model.onnx", opset=opset, metadata=meta)
            if verify:
                inputs = verification_inputs(opened.calib, opened.pre, data.batch_size, VERIFY_SAMPLES, seed)
                job.verify = verify_onnx(work / "model.onnx", opened.model, inputs, atol=atol, rtol=rtol)
        if safetensors:
            export_safetensors(opened.model, work / "model.safetensors", metadata=meta)
            if not in_place:  # the recipe beside the weights makes the folder loadable without flags
                recipe, arch_files = portable_recipe({**opened.loaded.recipe, "preprocessing": opened.pre.to_dict()})
                (work / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
                names.append(RECIPE_NAME)
                for rel, content in arch_files.items():
                    (work / rel).parent.mkdir(parents=True, exist_ok=True)
                    (work / rel).write_bytes(content)
                    names.append(rel)
        job.doc = {
            "command": "export", "model": str(model.path), "out": str(out), "files": names,
            "export": job.export.to_json() if job.export else None,
            "verify": job.verify.to_json() if job.verify else None,
            "summary": job.verify.summary_line() if job.verify else None,
        }
        if job.verify is not None and not job.verify.passed:
            raise CheckFailed(f"ONNX output differs from torch; nothing written. {job.verify.summary_line()}",
                              hint="loosen --atol/--rtol only if the difference is expected (e.g. fp16)")
        _move_into(work, out, force=force or in_place)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return job


def _move_into(work: Path, out: Path, force: bool) -> None:
    files = {str(p.relative_to(work)): p for p in sorted(work.rglob("*")) if p.is_file()}
    if not out.exists():
        write_output_dir(out, {name: p.read_bytes() for name, p in files.items()}, force=False)
        return
    for name, p in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, out / name)


# -------------------------------------------------------------------------------------------- verify
def verify_job(onnx_path: Path, reference: ModelSpec, data: DataSpec, atol: float = 1e-4, rtol: float = 1e-3,
               seed: int = 0) -> Any:
    """Compare an ONNX file with a loadable model on calibration (or seeded random) inputs."""
    from .verify import verify_onnx

    if not Path(onnx_path).is_file():
        raise BadInput(f"ONNX file {onnx_path} does not exist")
    if atol < 0 or rtol < 0:
        raise BadInput(f"--atol/--rtol must be ≥ 0, got {atol:g}/{rtol:g}")
    opened = open_inputs(reference, data, "cpu", purpose="verify")
    inputs = verification_inputs(opened.calib, opened.pre, data.batch_size, VERIFY_SAMPLES, seed)
    return verify_onnx(onnx_path, opened.model, inputs, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------------- bench
def bench_job(models: list[Path], arch: str | None = None, arch_kwargs: str | None = None, trust_pickle: bool = False,
              input_size: str | None = None, batch_size: int = 1, threads: int = 2, warmup: int = 10,
              iters: int = 50, seed: int = 0, opset: int = 18, rounds: int = 5) -> list[dict]:
    """onnxruntime latency of each model side by side with MACs/params and ratios to the first, timed
    interleaved over ``rounds`` rounds (bench.py).

    A model that is not ``.onnx`` is loaded like any MODEL and exported to a temporary ONNX first."""
    from .bench import BenchTarget, bench_interleaved, compare_bench, model_cost
    from .export import export_onnx

    if not models:
        raise BadInput("bench needs at least one MODEL")
    if batch_size < 1 or threads < 1 or iters < 1 or warmup < 0 or rounds < 1:
        raise BadInput("--batch-size, --threads, --iters and --rounds must be ≥ 1, --warmup ≥ 0")
    targets, loaded_models = [], {}
    for path in map(Path, models):
        if path.suffix != ".onnx":
            loaded_models[path] = load_model(path, arch if not path.is_dir() else None, parse_arch_kwargs(arch_kwargs),
                                             trust_pickle, "bench")
    # one input size for all: --input-size, else the first recipe that stores one, else the default
    size = parse_input_size(input_size) if input_size else next(
        (tuple(m.preprocessing["input_size"]) for m in loaded_models.values() if m.preprocessing), None)
    with tempfile.TemporaryDirectory(prefix="explainfix-bench-") as tmp:
        for k, path in enumerate(map(Path, models)):
            if path.suffix == ".onnx":
                if not path.is_file():
                    raise BadInput(f"ONNX file {path} does not exist")
                targets.append(BenchTarget(path, _onnx_input_shape(path, input_size), None, str(path)))
                continue
            loaded = loaded_models[path]
            pre = resolve_preprocessing(loaded.model, size, None, None, loaded.preprocessing)
            shape = (pre.channels, *pre.input_size)
            onnx_path = Path(tmp) / f"m{k}" / "model.onnx"
            onnx_path.parent.mkdir()
            export_onnx(loaded.model, random_inputs(pre, 2, seed), onnx_path, opset=opset)
            targets.append(BenchTarget(onnx_path, shape, model_cost(loaded.model, shape), str(path)))
        return compare_bench(bench_interleaved(targets, batch_size=batch_size, threads=threads, warmup=warmup,
                                               iters=iters, rounds=rounds, seed=seed))


def _onnx_input_shape(path: Path, input_size: str | None) -> tuple[int, ...]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_value or None for d in graph.input[0].type.tensor_type.shape.dim][1:]
    if input_size:
        h, w = parse_input_size(input_size)
        dims[-2:] = [h, w]
    if any(d is None for d in dims):
        raise BadInput(f"{path} has dynamic spatial dimensions", hint="pass --input-size HxW")
    return tuple(dims)
