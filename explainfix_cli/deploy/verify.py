"""torch vs onnxruntime, output by output → a :class:`VerifyResult` (the CLI turns ``passed`` into an exit code).

    res = verify_onnx("out/model.onnx", model, [torch.randn(4, 3, 64, 64)], atol=1e-4, rtol=1e-3)
    res.passed           # False on any element with abs > atol AND rel > rtol, any NaN/Inf, any shape mismatch
    res.summary_line()   # "PASSED | output: max abs 2.1e-06, p99 abs 8.0e-07, max rel 3.3e-04, top-1 100.0% | …"

rel = abs / (|reference| + 1e-12): an element passes when either error is within its tolerance.
onnxruntime is imported lazily.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import BadInput, first_line
from ..core.tensors import as_input_tuple, eval_mode, flatten_outputs

_TINY = 1e-12
_SHOWN = 3  # outputs detailed in the summary line
ORT_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass
class OutputStats:
    """Error statistics of one output over all batches (None where there is nothing to measure)."""

    name: str
    shape: list[int]
    elements: int
    atol: float
    rtol: float
    passed: bool
    reason: str | None = None
    failed_elements: int = 0
    max_abs: float | None = None
    mean_abs: float | None = None
    median_abs: float | None = None
    p99_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    median_rel: float | None = None
    p99_rel: float | None = None
    nonfinite_reference: int = 0
    nonfinite_candidate: int = 0
    top1_agreement: float | None = None

    def brief(self) -> str:
        parts = []
        if self.max_abs is not None:
            parts.append(f"max abs {self.max_abs:.2e}, p99 abs {self.p99_abs:.2e}, max rel {self.max_rel:.2e}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 {100 * self.top1_agreement:.1f}%")
        if self.reason:
            parts.append(self.reason)
        return f"{self.name}: " + ", ".join(parts or ["empty"])


@dataclass
class VerifyResult:
    """``passed`` is True only when every output passed and nothing else went wrong (``reason``)."""

    passed: bool
    outputs: list[OutputStats]
    atol: float
    rtol: float
    reason: str | None = None
    batches: int = 1
    samples: int | None = None
    providers: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        """``PASSED | …`` or ``FAILED | …``: the reason, the worst outputs first, then the tolerances."""
        parts = ["PASSED" if self.passed else "FAILED"]
        if self.reason:
            parts.append(self.reason)
        worst = sorted(self.outputs, key=lambda o: (o.passed, -(o.max_abs if o.max_abs is not None else math.inf)))
        parts += [o.brief() for o in worst[:_SHOWN]]
        if len(worst) > _SHOWN:
            failed = sum(not o.passed for o in worst[_SHOWN:])
            parts.append(f"+{len(worst) - _SHOWN} more outputs ({failed} failed)")
        samples = f"{self.samples} samples in " if self.samples is not None else ""
        parts.append(f"{len(self.outputs)} outputs, {samples}{self.batches} batches, "
                     f"atol {self.atol:g} rtol {self.rtol:g}")
        return " | ".join(parts)

    def to_json(self) -> dict:
        """A JSON-ready dict (non-finite floats become None)."""
        return _finite(asdict(self))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------ compare
def compare_outputs(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    per_output_tol: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Compare outputs pairwise; ``per_output_tol`` maps a name to ``(atol, rtol)`` or
    ``{"atol": …, "rtol": …}`` to override the defaults for that output.

        compare_outputs([ref], [ref + 1e-6], ["logits"]).passed   # True
    """
    check_tolerances(atol, rtol)
    names = list(names) if names is not None else [f"output_{i}" for i in range(len(reference))]
    if len(names) != len(reference):
        raise BadInput(f"{len(reference)} reference outputs but {len(names)} names")
    overrides = {n: _tolerance(n, spec, atol, rtol) for n, spec in (per_output_tol or {}).items()}
    if unknown := sorted(set(overrides) - set(names)):
        raise BadInput(f"per-output tolerance for unknown outputs {unknown}; outputs are {names}")
    stats = [_compare_one(n, np.asarray(r), np.asarray(c), *overrides.get(n, (atol, rtol)))
             for n, r, c in zip(names, reference, candidate)]
    reason = None
    if len(reference) != len(candidate):
        reason = f"output count differs: reference {len(reference)}, candidate {len(candidate)}"
    passed = reason is None and all(s.passed for s in stats)
    first = np.asarray(reference[0]) if len(reference) else None
    samples = int(first.shape[0]) if first is not None and first.ndim else None
    return VerifyResult(passed=passed, outputs=stats, atol=atol, rtol=rtol, reason=reason, samples=samples)


def _tolerance(name: str, spec: Any, atol: float, rtol: float) -> tuple[float, float]:
    if isinstance(spec, Mapping):
        a, r = float(spec.get("atol", atol)), float(spec.get("rtol", rtol))
    else:
        try:
            a, r = (float(v) for v in spec)
        except (TypeError, ValueError):
            raise BadInput(f"tolerance for {name!r} must be (atol, rtol) or a dict, got {spec!r}") from None
    check_tolerances(a, r, f"tolerances for {name!r}")
    return a, r


def check_tolerances(atol: float, rtol: float, what: str = "--atol/--rtol") -> None:
    """The one validation of a tolerance pair (CLI flags, the jobs' API and per-output overrides alike)."""
    if not (atol >= 0 and rtol >= 0):  # also refuses NaN
        raise BadInput(f"{what} must be ≥ 0, got {atol:g}/{rtol:g}", hint="e.g. --atol 1e-4 --rtol 1e-3")


def _compare_one(name: str, ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> OutputStats:
    base = dict(name=name, shape=list(ref.shape), elements=int(ref.size), atol=atol, rtol=rtol)
    if ref.shape != cand.shape:
        return OutputStats(**base, passed=False, reason=f"shape {tuple(cand.shape)} != reference {tuple(ref.shape)}")
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    finite_r, finite_c = np.isfinite(r), np.isfinite(c)
    bad_r, bad_c = int(r.size - finite_r.sum()), int(c.size - finite_c.sum())
    both = finite_r & finite_c
    abs_err = np.abs(c[both] - r[both])
    rel_err = abs_err / (np.abs(r[both]) + _TINY)
    failed = int(np.count_nonzero((abs_err > atol) & (rel_err > rtol)))
    reasons = []
    if bad_r or bad_c:
        reasons.append(f"non-finite values: {bad_r} in reference, {bad_c} in candidate")
    if failed:
        reasons.append(f"{failed}/{r.size} elements over tolerance")
    stats = OutputStats(**base, passed=not reasons, reason="; ".join(reasons) or None, failed_elements=failed,
                        nonfinite_reference=bad_r, nonfinite_candidate=bad_c)
    if abs_err.size:
        for kind, err in (("abs", abs_err), ("rel", rel_err)):
            setattr(stats, f"max_{kind}", float(err.max()))
            setattr(stats, f"mean_{kind}", float(err.mean()))
            setattr(stats, f"median_{kind}", float(np.median(err)))
            setattr(stats, f"p99_{kind}", float(np.percentile(err, 99)))
    if r.ndim == 2 and r.shape[0] > 0 and r.shape[1] > 1:
        stats.top1_agreement = float(np.mean(np.argmax(r, axis=1) == np.argmax(c, axis=1)))
    return stats


# --------------------------------------------------------------------------------------- onnxruntime
def open_session(onnx_path: str | os.PathLike, threads: int | None = None):
    """A CPU onnxruntime session: ``threads`` intra-op threads (None = onnxruntime's default),
    one inter-op thread, sequential execution, quiet logging. Unreadable file → :class:`BadInput`."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise BadInput(f"ONNX file not found: {path}")
    if threads is not None and threads < 1:
        raise BadInput(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BadInput(f"onnxruntime cannot load {path}: {first_line(exc)}",
                       hint="is it an ONNX file? re-export it with `explainfix export`") from exc


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    inputs: Sequence[Any],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    per_output_tol: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> VerifyResult:
    """Run every batch (a tensor or a tuple of tensors) through onnxruntime and through ``model``
    (eval, no_grad; its train flag is restored) and compare all outputs over all batches.

        verify_onnx("out/model.onnx", model, [x1, x2], atol=1e-4, rtol=1e-3).summary_line()
    """
    session = open_session(onnx_path, threads)
    feeds_meta = session.get_inputs()
    onnx_names = [o.name for o in session.get_outputs()]
    batches = [as_input_tuple(b) for b in inputs]
    if not batches:
        raise BadInput("no input batches to verify with")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    refs, cands = [], []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            if len(batch) != len(feeds_meta):
                raise BadInput(f"the ONNX model takes {len(feeds_meta)} inputs, a batch has {len(batch)}")
            feed = {m.name: _to_numpy(t, m.type) for m, t in zip(feeds_meta, batch)}
            try:
                cands.append(session.run(None, feed))
            except Exception as exc:  # noqa: BLE001 - a model that cannot run on the inputs fails the check
                return VerifyResult(passed=False, outputs=[], atol=atol, rtol=rtol, batches=len(batches),
                                    reason=f"onnxruntime failed on input shapes {[list(t.shape) for t in batch]}: "
                                           f"{first_line(exc)}", providers=session.get_providers())
            try:
                out = model(*(t.to(device) for t in batch))
            except Exception as exc:  # noqa: BLE001
                raise BadInput(f"the torch model rejects the inputs: {first_line(exc)}") from exc
            refs.append(flatten_outputs(out))
    torch_names = [n for n, _ in refs[0]]
    if sorted(torch_names) == sorted(onnx_names):
        order = [torch_names.index(n) for n in onnx_names]
    elif len(torch_names) == len(onnx_names):
        order = list(range(len(onnx_names)))  # names differ (file from elsewhere): match by position
    else:
        return VerifyResult(passed=False, outputs=[], atol=atol, rtol=rtol, batches=len(batches),
                            providers=session.get_providers(),
                            reason=f"output count differs: torch {len(torch_names)} {torch_names}, "
                                   f"ONNX {len(onnx_names)} {onnx_names}")
    reference, candidate = [], []
    for j, i in enumerate(order):
        ref, cand = _join([r[i][1].detach().cpu().numpy() for r in refs], [c[j] for c in cands])
        reference.append(ref)
        candidate.append(cand)
    result = compare_outputs(reference, candidate, onnx_names, atol=atol, rtol=rtol, per_output_tol=per_output_tol)
    result.batches = len(batches)
    result.samples = sum(int(b[0].shape[0]) if b[0].dim() else 1 for b in batches)
    result.providers = session.get_providers()
    return result


def _to_numpy(t: torch.Tensor, ort_type: str) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    dtype = ORT_NUMPY_TYPES.get(ort_type)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


def _join(refs: list[np.ndarray], cands: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch arrays → one array per side (along the batch axis); the first mismatched pair as is."""
    for r, c in zip(refs, cands):
        if np.shape(r) != np.shape(c):
            return np.asarray(r), np.asarray(c)
    if all(r.ndim >= 1 and r.shape[1:] == refs[0].shape[1:] for r in refs):
        return np.concatenate(refs), np.concatenate([np.asarray(c) for c in cands])
    return (np.concatenate([np.ravel(r) for r in refs]), np.concatenate([np.ravel(c) for c in cands]))
