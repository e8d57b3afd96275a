"""``explainfix export``: ONNX and/or safetensors, verified in onnxruntime, moved into place only when they pass."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..core.errors import BadInput
from ..deploy.verify import check_tolerances
from ..io.arch import arch_label
from ..io.data import CalibrationSet, Preprocessing, random_inputs
from ..io.codec import safetensors_bytes
from ..io.model_dir import dir_files, exact, read_back
from ..io.outdir import locked, publish, staging, write_file
from ..io.recipe import RECIPE_NAME, WEIGHTS_NAME, Recipe
from .result import JobResult
from .common import DataSpec, ModelSpec, open_inputs, output_dir, read_back_example

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


def provenance_metadata(recipe: Recipe, pre: Preprocessing, source_sha256: str = "", command: str = "export") -> dict[str, str]:
    """ONNX ``metadata_props``: who made the model, from what, how it was pruned and fed (the same keys
    for ``export`` and ``compress``)."""
    from ..core.version import __version__

    meta = {
        "explainfix.version": __version__,
        "explainfix.command": command,
        "explainfix.arch": arch_label(recipe.arch),
        "explainfix.source_sha256": recipe.source_sha256 or source_sha256,
        "explainfix.preprocessing": json.dumps(pre.to_dict()),
    }
    prunes = [p for p in recipe.provenance if p.get("command") in ("prune", "compress") and "pct" in p]
    if prunes:
        pct = prunes[-1].get("pct")
        meta["explainfix.pct"] = f"{pct:g}" if isinstance(pct, (int, float)) else str(pct)
        meta["explainfix.criterion"] = str(prunes[-1].get("criterion", ""))
    if recipe.frozen:
        meta["explainfix.frozen_tensors"] = str(len(recipe.frozen))
    return meta


def export_verified(model: torch.nn.Module, path: Path, meta: dict[str, str], calib: CalibrationSet | None,
                    pre: Preprocessing, *, opset: int = 18, atol: float = 1e-4, rtol: float = 1e-3,
                    verify: bool = True, batch_size: int = 16, seed: int = 0) -> tuple[Any, Any]:
    """Write ``path`` (ONNX with ``meta`` as metadata_props) and check it in onnxruntime on up to
    :data:`VERIFY_SAMPLES` inputs of ``calib``. Returns (export result, verify result or None); the
    caller decides what a failed check means (export: exit 1, nothing written; compress: a gate)."""
    from ..deploy.onnx import export_onnx
    from ..deploy.verify import verify_onnx

    example = verification_inputs(calib, pre, 2, 2, seed)[0]
    exported = export_onnx(model, example, path, opset=opset, metadata=meta)
    checked = None
    if verify:
        inputs = verification_inputs(calib, pre, batch_size, VERIFY_SAMPLES, seed)
        checked = verify_onnx(path, model, inputs, atol=atol, rtol=rtol)
    return exported, checked


@dataclass
class ExportJob(JobResult):
    out: Path
    files: list[str]
    export: Any = None  # export.OnnxExportResult
    verify: Any = None  # verify.VerifyResult
    report: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verify is None or self.verify.passed

    def failure_message(self) -> str:
        return f"ONNX output differs from torch; nothing written. {self.verify.summary_line()}"

    def failure_hint(self) -> str | None:
        return "loosen --atol/--rtol only if the difference is expected (e.g. fp16)"


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
    directory itself, else ``<stem>-export/``). On a mismatch nothing is written and ``passed`` is False (exit 1)."""
    check_tolerances(atol, rtol)
    in_place = out is None and _is_explainfix_dir(model.path)
    if in_place and safetensors:
        raise BadInput(f"{model.path} already holds its weights as model.safetensors with the recipe beside them",
                       hint="pass -o DIR to write a copy elsewhere")
    if not in_place:
        out = output_dir(out, "export", model, force, data.path)
    opened = open_inputs(model, data, "cpu", purpose="export")
    if in_place:
        out = opened.loaded.source
    out = Path(out)
    names = (["model.onnx"] if onnx else []) + (["model.safetensors"] if safetensors else [])
    if in_place and not force and (out / "model.onnx").exists():
        raise BadInput(f"{out / 'model.onnx'} exists", hint="pass --force to overwrite, or choose another -o")
    torch.manual_seed(seed)
    meta = provenance_metadata(opened.loaded.recipe, opened.pre, opened.loaded.source_sha256)
    job = ExportJob(out, names)
    try:
        with staging(out / "model.onnx" if in_place else out) as work:  # next to -o; removed whatever happens
            if onnx:
                job.export, job.verify = export_verified(opened.model, work / "model.onnx", meta, opened.calib, opened.pre,
                                                         opset=opset, atol=atol, rtol=rtol, verify=verify,
                                                         batch_size=data.batch_size, seed=seed)
                job.export = replace(job.export, path=str(out / "model.onnx"))  # where it lands, not the staging dir
            if safetensors:  # the recipe beside the weights makes the folder loadable without flags
                weights = safetensors_bytes(opened.model, meta, opened.out_dtypes)
                files = dir_files(replace(opened.loaded.recipe, preprocessing=opened.pre.to_dict()), weights)
                for rel, content in files.items():
                    write_file(work / rel, content, shown=out / rel)
                names += [rel for rel in files if rel != WEIGHTS_NAME]
                read_back(work, read_back_example(opened), opened.model if exact(opened.out_dtypes) else None)
            job.report = {
                "command": "export", "model": str(model.path), "out": str(out), "files": names,
                "export": job.export.to_json() if job.export else None,
                "verify": job.verify.to_json() if job.verify else None,
                "summary": job.verify.summary_line() if job.verify else None,
            }
            if not job.passed:
                raise _NothingWritten
            if in_place:  # the ONNX file (and its external data) joins the explainfix directory
                with locked(out):  # as publish: an ONNX another run added meanwhile is not replaced silently
                    if not force and (out / "model.onnx").exists():
                        raise BadInput(f"{out / 'model.onnx'} appeared while this run was working; nothing replaced",
                                       hint="pass --force to overwrite")
                    for p in sorted(work.iterdir()):
                        os.replace(p, out / p.name)
            else:
                publish(work, out, force)
    except _NothingWritten:  # a failed check (exit 1): the staging directory and the parents it made are gone
        pass
    return job


class _NothingWritten(Exception):
    """Leaves the staging block of a failed export the way a failure does (io/outdir.py staging)."""


def _is_explainfix_dir(path: Path) -> bool:
    path = Path(path)
    where = path.parent if path.suffix == ".safetensors" else path
    return (where / RECIPE_NAME).is_file()

