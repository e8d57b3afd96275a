"""``explainfix quantize``: FP32 ONNX → static INT8 (onnxruntime), verified against FP32, accuracy-controlled, timed.

    job = quantize_job(ModelSpec(Path("model-pruned")), DataSpec(Path("calib")), eval_data=Path("val"),
                       max_accuracy_drop=1.0)
    job.passed, job.report["float_layers"], job.report["bench"]["verdict"]

MODEL is an explainfix directory or a checkpoint with ``--arch`` (exported to FP32 ONNX first by the export
job's own step, verified against torch), or an ``.onnx`` file (its input size from the graph when fixed, its
preprocessing from its explainfix metadata, else ``--input-size/--mean/--std``). Then: quantize
(deploy/quantize.py) → INT8 vs FP32 on ``--eval-data`` (deploy/int8_check.py) → when a gate fails, keep the
most sensitive nodes in float, the fewest found (deploy/sensitivity.py) → FP32 and INT8 timed interleaved
(deploy/bench.py). OUT gets ``model.int8.onnx``, ``model.onnx`` (the FP32 model, when this run exported it)
and ``report.json``, only when every gate passes (as ``export``: a model that failed its check never lands).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.errors import BadInput, CheckFailed
from ..deploy.int8_check import Gate, Int8Comparison, check_gate_values, compare_onnx, int8_gates, measure_int8
from ..deploy.quantize import (
    MIN_CALIB_IMAGES,
    MOVE_OPS,
    QuantizeOptions,
    QuantizeResult,
    calibration_index,
    load_float_onnx,
    module_names,
    onnx_metadata,
    pre_process,
    quantize_onnx,
    resolve_settings,
)
from ..deploy.sensitivity import MAX_FLOAT, ControlResult
from ..io.data import CalibrationSet, Preprocessing, held_out, load_calibration, parse_input_size, resolve_preprocessing
from ..io.outdir import publish, staging
from ..prune.pipeline import Progress
from .bench import BenchOptions
from .common import DataSpec, ModelSpec, now, open_inputs, output_dir
from .export import export_verified, provenance_metadata
from .result import JobResult

SENSITIVITY_SAMPLES = 32  # calibration samples the per-layer sensitivity is measured on (all activations are held)


@dataclass
class QuantizeJob(JobResult):
    out: Path
    report: dict
    gates: list[Gate] = field(default_factory=list)
    written: bool = False

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failure_message(self) -> str:
        return "gate failed: " + "; ".join(g.failure_line() for g in self.gates if not g.passed) + "; nothing written"

    def failure_hint(self) -> str | None:
        ac = self.report.get("accuracy_control")
        if ac is None:
            return "--max-float N lets accuracy control keep up to N layers in float"
        return f"keeping up to {ac['max_float']} layers in float did not meet it (report: accuracy_control); " \
               "try --calibrate entropy or percentile, more --calib-images, or deploy the FP32 model"


def quantize_job(model: ModelSpec, data: DataSpec, *, eval_data: Path | None = None,
                 options: QuantizeOptions | None = None, out: Path | None = None, force: bool = False,
                 max_accuracy_drop: float | None = None, min_agreement: float | None = None, max_float: int = MAX_FLOAT,
                 timing: BenchOptions = BenchOptions(), opset: int = 18, progress: Progress | None = None) -> QuantizeJob:
    """Quantize, check, control, time (module docstring). A failed gate returns the job with ``passed``
    False and nothing written; the CLI makes it exit 1. ``timing.threads`` also runs the check."""
    options = (options or QuantizeOptions()).check()
    check_gate_values(max_accuracy_drop, min_agreement)
    if data is None or data.path is None:
        raise BadInput("quantize needs --data PATH: calibration images (a few hundred, like those the model will see)",
                       hint="e.g. --data calib/ (class subfolders or a flat folder)")
    timing = timing.check()
    if max_float < 0:
        raise BadInput(f"--max-float must be ≥ 0, got {max_float}")
    out = output_dir(out, "int8", model, force, data.path, eval_data)
    notes: list[str] = []
    stage = (lambda name: progress(name, 0, 1)) if progress else (lambda name: None)
    is_onnx = Path(model.path).suffix.lower() == ".onnx"
    if is_onnx:
        load_float_onnx(model.path)
        pre, batch = _onnx_preprocessing(Path(model.path), data, notes)
        calib, opened = load_calibration(data.path, pre), None
    else:
        opened = open_inputs(model, data, "cpu", purpose="quantize")
        pre, calib, batch = opened.pre, opened.calib, data.batch_size
        notes += opened.loaded.notes
    options = _replace(options, batch_size=batch)
    if len(calib) < MIN_CALIB_IMAGES:
        raise BadInput(f"--data {calib.source} holds {len(calib)} samples; calibration needs at least {MIN_CALIB_IMAGES}",
                       hint="pass a folder with a few hundred images like those the model will see")
    eval_set = load_calibration(eval_data, pre) if eval_data is not None else calib
    if not held_out(eval_data, data.path):
        notes.append(f"INT8 is checked on the calibration data ({calib.source}): pass a disjoint --eval-data for "
                     "numbers that hold on unseen images")
    if max_accuracy_drop is not None and not eval_set.labeled:
        raise BadInput(f"--max-accuracy-drop needs labeled evaluation data; {eval_set.source} is unlabeled",
                       hint="pass --eval-data with class subfolders, or gate with --min-agreement")
    with staging(out) as work:
        tmp = work / ".quantize-work"
        tmp.mkdir()
        if is_onnx:
            fp32, files = Path(model.path), ["model.int8.onnx", "report.json"]
        else:
            stage("export")
            fp32, files = work / "model.onnx", ["model.int8.onnx", "model.onnx", "report.json"]
            meta = provenance_metadata(opened.loaded.recipe, pre, opened.loaded.source_sha256, command="quantize")
            _, check = export_verified(opened.model, fp32, meta, calib, pre, opset=opset, batch_size=batch,
                                       seed=options.seed)
            if not check.passed:
                raise CheckFailed(f"the FP32 ONNX differs from torch; nothing written. {check.summary_line()}")
        step = quantize_checked(fp32, work / "model.int8.onnx", calib, eval_set, options, work=tmp, shape=pre.shape,
                                max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, max_float=max_float,
                                timing=timing, progress=progress)
        report = {"command": "quantize", "time": now(), "model": str(model.path), "out": str(out), "files": files,
                  "notes": notes, "preprocessing": pre.to_dict(), **step.to_json()}
        job = QuantizeJob(out, report, step.gates)
        (work / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        if job.passed:
            shutil.rmtree(tmp)
            publish(work, out, force)
            job.written = True
    return job


@dataclass
class Int8Step:
    """What :func:`quantize_checked` did: the INT8 file's result, the check, the gates, the control, the timing."""

    result: QuantizeResult
    comparison: Int8Comparison
    gates: list[Gate]
    calib_source: dict
    eval_source: dict
    max_float: int
    control: ControlResult | None = None
    ranked: list[dict] = field(default_factory=list)
    bench: dict | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_json(self) -> dict:
        """The quantization part of a report (``quantize``'s report.json; compress can nest it)."""
        c = self.control
        return {
            "passed": self.passed, "gates": [asdict(g) for g in self.gates], "settings": self.result.settings,
            "data": self.calib_source, "calib_samples": self.result.calib_samples, "eval_data": self.eval_source,
            "comparison": self.comparison.to_json(), "quantized_nodes": self.result.quantized_nodes,
            "weights_int8": self.result.weights_int8, "float_layers": self.result.float_nodes,
            "accuracy_control": None if c is None else {
                "passed": c.passed, "kept_float": c.kept_float, "max_float": self.max_float,
                "sensitivity": self.ranked, "tried": c.tried,
                "note": None if c.passed else
                f"no set of up to {self.max_float} layers kept in float meets the gates; the best found is reported"},
            "bench": self.bench,
        }


def quantize_checked(fp32: Path, int8: Path, calib: CalibrationSet, eval_set: CalibrationSet, options: QuantizeOptions,
                     *, work: Path, shape: tuple[int, ...], max_accuracy_drop: float | None = None,
                     min_agreement: float | None = None, max_float: int = MAX_FLOAT, timing: BenchOptions = BenchOptions(),
                     progress: Progress | None = None) -> Int8Step:
    """The quantize job's steps on an FP32 ONNX file, for any job that has one (compress composes this):
    quantize → check against FP32 on ``eval_set`` → keep layers in float while a gate fails → time FP32 and
    INT8 (only when the gates hold and ``timing.bench``). Writes ``int8``; ``work`` holds scratch files."""
    stage = (lambda name: progress(name, 0, 1)) if progress else (lambda name: None)
    threads = timing.threads  # onnxruntime's threads: the check and the timing alike
    options = options.check()
    settings = resolve_settings(options)
    stage("calibrate")
    meta = {**onnx_metadata(fp32), "explainfix.command": "quantize"}
    prep = pre_process(fp32, work)
    res = quantize_onnx(prep, int8, calib, options, work=work, settings=settings, metadata=meta)
    stage("verify")
    cmp = compare_onnx(fp32, int8, eval_set.batches(options.batch_size), threads=threads, source=eval_set.source)
    gates = int8_gates(cmp, max_accuracy_drop, min_agreement)
    plain, control, ranked = None, None, []  # plain: the INT8 model before control kept layers in float
    if not all(g.passed for g in gates) and max_float > 0:
        control, ranked = _control(prep, fp32, res, calib, eval_set, options, work, threads, max_accuracy_drop,
                                   min_agreement, max_float, progress)
        if control.path is not None:
            plain = work / "plain.int8.onnx"
            shutil.copyfile(int8, plain)
            why = {r["name"]: f"accuracy control, #{i + 1}" for i, r in enumerate(ranked)}
            res = quantize_onnx(prep, int8, calib, options, work=work, settings=settings, exclude=control.kept_float,
                                why_excluded=why, metadata=meta)
            cmp, gates = control.comparison, control.gates
    timed = None
    if timing.bench and all(g.passed for g in gates):  # a model that failed is not written: no time spent timing it
        stage("bench")
        timed = measure_int8(fp32, int8, plain, shape, res.float_nodes, _macs(prep), threads=threads,
                             iters=timing.bench_iters, rounds=timing.bench_rounds, seed=options.seed)
    return Int8Step(res, cmp, gates, calib.describe(), eval_set.describe(), max_float, control, ranked, timed)


def quantize(model: str | Path, data: str | Path, *, eval_data: str | Path | None = None, out: str | Path | None = None,
             arch: str | None = None, arch_kwargs: str | None = None, trust_pickle: bool = False,
             trust_code: bool = False, input_size: str | None = None, mean: list[float] | None = None,
             std: list[float] | None = None, batch_size: int = 16, **kwargs) -> QuantizeJob:
    """The Python API: ``explainfix_cli.quantize("model-pruned/", "calib/", eval_data="val/",
    max_accuracy_drop=1.0, calibrate="entropy", bench=False)``. Options of :class:`QuantizeOptions` (``calibrate``,
    ``calib_images``, ``keep_float``, ``seed``, …), of :class:`~.bench.BenchOptions` (``bench``, ``threads``,
    ``bench_iters``; or ``timing=BenchOptions(...)`` itself) and of :func:`quantize_job` are keywords."""
    timing, opts = kwargs.pop("timing", None), kwargs.pop("options", None)
    for given, group in ((timing, BenchOptions), (opts, QuantizeOptions)):
        loose = sorted({f.name for f in fields(group)} & kwargs.keys())
        if given is not None and loose:
            raise BadInput(f"give {group.__name__}(...) or its fields as keywords ({', '.join(loose)}), not both")
    timing = timing if timing is not None else _take(kwargs, BenchOptions)
    opts = opts if opts is not None else _take(kwargs, QuantizeOptions)
    return quantize_job(ModelSpec(Path(model), arch, arch_kwargs, trust_pickle, trust_code),
                        DataSpec(Path(data), input_size, mean, std, batch_size),
                        eval_data=Path(eval_data) if eval_data is not None else None, options=opts,
                        out=Path(out) if out is not None else None, timing=timing, **kwargs)


def _take(kwargs: dict, options: type) -> Any:
    """``options`` (a dataclass) made of the keywords named as its fields, which leave ``kwargs``."""
    names = {f.name for f in fields(options)}
    return options(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})


def _control(prep, fp32, res, calib, eval_set, options, tmp, threads, max_drop, min_agree, max_float, progress):
    """Rank the quantized nodes that compute (weighted layers, and the Mul / Add / Softmax … between them; not
    the ones that only move values) by sensitivity, then keep the fewest in float that pass the gates."""
    import onnx

    from ..deploy.sensitivity import keep_float_until, rank_layers

    graph = onnx.load(str(prep), load_external_data=False).graph
    ops = {n.name: n.op_type for n in graph.node}
    candidates = [n for n in res.quantized_nodes if ops.get(n) not in MOVE_OPS]  # arithmetic: weighted or not
    cand_path = tmp / "candidate.int8.onnx"

    def requantize(names: list[str]) -> Path:
        quantize_onnx(prep, cand_path, calib, options, work=tmp, settings=res.settings, exclude=names)
        return cand_path

    index = calibration_index(calib, SENSITIVITY_SAMPLES, options.batch_size, options.seed)
    if progress:
        progress("sensitivity", 0, 1)
    ranked = rank_layers(prep, Path(res.path), candidates, list(calib.load(index)), tmp)
    modules = module_names(graph)
    for r in ranked:
        r["module"] = modules.get(r["name"])

    def evaluate(path: Path):
        cmp = compare_onnx(fp32, path, eval_set.batches(options.batch_size), threads=threads, source=eval_set.source)
        return cmp, int8_gates(cmp, max_drop, min_agree)

    if progress:
        progress("accuracy control", 0, 1)
    return keep_float_until(ranked, requantize, evaluate, max_float), ranked


def _onnx_preprocessing(path: Path, data: DataSpec, notes: list[str]) -> tuple[Preprocessing, int]:
    """An .onnx MODEL's preprocessing (flags → its explainfix metadata → defaults) and the batch size it takes."""
    import onnx
    from torch import nn

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_value or None for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise BadInput(f"{path}: input {graph.input[0].name} has {len(dims)} dimensions; quantize calibrates image "
                       "models with one (N, C, H, W) input", hint="quantize the model's image part")
    stored = onnx_metadata(path).get("explainfix.preprocessing")
    stored_pre = json.loads(stored) if stored else None
    size = parse_input_size(data.input_size) if data.input_size else None
    if size is None and dims[2] and dims[3]:
        size = (dims[2], dims[3])
    if size is None and stored_pre is None:
        raise BadInput(f"{path} has dynamic spatial dimensions and no recorded preprocessing", hint="pass --input-size HxW")
    if size and dims[2] and dims[3] and tuple(size) != (dims[2], dims[3]):
        raise BadInput(f"--input-size {size[0]}x{size[1]} but {path} takes {dims[2]}x{dims[3]} inputs")
    channels = dims[1] or (stored_pre or {}).get("channels", 3)
    stub = nn.Conv2d(int(channels), 1, 1)  # resolve_preprocessing reads the channel count off a first conv
    pre = resolve_preprocessing(stub, size, data.mean, data.std, stored_pre)
    if stored_pre is None and data.mean is None:
        notes.append(f"{path.name} records no preprocessing: images are normalised with mean {list(pre.mean)}, std "
                     f"{list(pre.std)} (--mean/--std to change)")
    if dims[0] not in (None, 1):
        raise BadInput(f"{path} has a fixed batch of {dims[0]}", hint="export it with a dynamic batch axis (explainfix export)")
    return pre, 1 if dims[0] == 1 else data.batch_size


def _replace(options: QuantizeOptions, **kw) -> QuantizeOptions:
    from dataclasses import replace

    return replace(options, **kw)


def _macs(prep: Path) -> dict[str, int]:
    import onnx

    from ..deploy.sensitivity import node_macs

    return node_macs(onnx.load(str(prep), load_external_data=False))
