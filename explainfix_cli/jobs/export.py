"""``explainfix export``: ONNX and/or safetensors, verified in onnxruntime, moved into place only when they pass."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..core.errors import BadInput, CheckFailed
from ..deploy.verify import check_tolerances
from ..io.arch import arch_label
from ..io.data import CalibrationSet, Preprocessing, random_inputs
from ..io.model_dir import dir_files
from ..io.outdir import default_out, write_output_dir
from ..io.recipe import WEIGHTS_NAME, Recipe
from .common import DataSpec, ModelSpec, open_inputs

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
    from ..io.codec import export_safetensors

    check_tolerances(atol, rtol)
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
    meta = provenance_metadata(opened.loaded.recipe, opened.pre, opened.loaded.source_sha256)
    job = ExportJob(out, names)
    parent = out.resolve().parent if not in_place else out.resolve()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".explainfix-export-", dir=parent))
    try:
        if onnx:
            job.export, job.verify = export_verified(opened.model, work / "model.onnx", meta, opened.calib, opened.pre,
                                                     opset=opset, atol=atol, rtol=rtol, verify=verify,
                                                     batch_size=data.batch_size, seed=seed)
            job.export = replace(job.export, path=str(out / "model.onnx"))  # where it lands, not the staging dir
        if safetensors:
            export_safetensors(opened.model, work / "model.safetensors", metadata=meta, dtypes=opened.out_dtypes)
            if not in_place:  # the recipe beside the weights makes the folder loadable without flags
                files = dir_files(replace(opened.loaded.recipe, preprocessing=opened.pre.to_dict()),
                                  (work / WEIGHTS_NAME).read_bytes())
                for rel, content in files.items():
                    if rel == WEIGHTS_NAME:
                        continue
                    (work / rel).parent.mkdir(parents=True, exist_ok=True)
                    if isinstance(content, dict):
                        (work / rel).write_text(json.dumps(content, indent=2) + "\n")
                    else:
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


