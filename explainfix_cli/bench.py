"""onnxruntime latency with fixed threads, and models side by side with ratios to the first.

    base = bench_onnx("r18/model.onnx", (3, 224, 224), cost=model_cost(r18, (3, 224, 224)), label="resnet18")
    small = bench_onnx("r18-pruned/model.onnx", (3, 224, 224), cost=model_cost(pruned, (3, 224, 224)))
    compare_bench([base, small])   # [{"label": "resnet18", "latency_ratio": 1.0, …}, {…, "macs_ratio": 0.52}]

Latency is the wall time of one ``session.run`` after ``warmup`` runs, on seeded random inputs.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import BadInput
from .measure import count_macs, count_params
from .verify import ORT_NUMPY_TYPES, first_line, open_session

Shape = Sequence[int]


@dataclass(frozen=True)
class ModelCost:
    """Size of the torch model behind an ONNX file: parameters and MACs for ONE sample."""

    params: int
    macs: int


@dataclass
class BenchResult:
    label: str
    path: str
    input_shapes: list[list[int]]  # per input, batch axis included
    batch_size: int
    threads: int
    warmup: int
    iters: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    params: int | None = None
    macs: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def model_cost(model: nn.Module, input_shape: Shape | Sequence[Shape]) -> ModelCost:
    """:class:`ModelCost` of ``model`` for one sample of ``input_shape`` (no batch axis), via measure.py.

        model_cost(torchvision.models.resnet18(), (3, 224, 224))   # ModelCost(params=11689512, macs=1814…)
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = tuple(torch.zeros(1, *s, device=device) for s in _shapes(input_shape))
    return ModelCost(params=count_params(model), macs=count_macs(model, example[0] if len(example) == 1 else example))


def bench_onnx(
    onnx_path: str | os.PathLike,
    input_shape: Shape | Sequence[Shape],
    *,
    batch_size: int = 1,
    threads: int = 2,
    warmup: int = 10,
    iters: int = 50,
    seed: int = 0,
    cost: ModelCost | None = None,
    label: str | None = None,
) -> BenchResult:
    """Time ``iters`` runs of the ONNX model on CPU (``threads`` intra-op threads, 1 inter-op, sequential).

    ``input_shape`` is one sample's shape, e.g. ``(3, 224, 224)``, or a list of them for several inputs.

        bench_onnx("out/model.onnx", (3, 64, 64), batch_size=8, threads=2).p50_ms
    """
    if batch_size < 1 or threads < 1 or warmup < 0 or iters < 1:
        raise BadInput(f"need batch_size >= 1, threads >= 1, warmup >= 0, iters >= 1; got "
                       f"{batch_size}, {threads}, {warmup}, {iters}")
    session = open_session(onnx_path, threads)
    inputs = session.get_inputs()
    shapes = [[batch_size, *s] for s in _shapes(input_shape)]
    if len(shapes) != len(inputs):
        raise BadInput(f"{Path(onnx_path).name} takes {len(inputs)} inputs, got {len(shapes)} input shapes")
    rng = np.random.default_rng(seed)
    feed = {m.name: _random(rng, s, m.type) for m, s in zip(inputs, shapes)}
    try:
        session.run(None, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise BadInput(f"{Path(onnx_path).name} cannot run on input shapes {shapes}: {first_line(exc)}",
                       hint="check --input-size and --batch-size (is the batch axis dynamic?)") from exc
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    return BenchResult(
        label=label or str(onnx_path), path=str(onnx_path), input_shapes=shapes, batch_size=batch_size,
        threads=threads, warmup=warmup, iters=iters, p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)), mean_ms=float(ms.mean()), min_ms=float(ms.min()),
        params=cost.params if cost else None, macs=cost.macs if cost else None,
    )


def compare_bench(results: Sequence[BenchResult]) -> list[dict]:
    """One row per result with ``latency_ratio`` (p50), ``macs_ratio`` and ``params_ratio`` relative
    to the first result (None where a value is unknown or the first is 0)."""
    if not results:
        return []
    first = results[0]
    rows = []
    for r in results:
        rows.append({
            "label": r.label, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "mean_ms": r.mean_ms,
            "params": r.params, "macs": r.macs,
            "latency_ratio": _ratio(r.p50_ms, first.p50_ms),
            "macs_ratio": _ratio(r.macs, first.macs),
            "params_ratio": _ratio(r.params, first.params),
        })
    return rows


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _shapes(input_shape: Shape | Sequence[Shape]) -> list[list[int]]:
    if all(isinstance(d, (int, np.integer)) for d in input_shape):
        shapes = [list(input_shape)]
    else:
        shapes = [list(s) for s in input_shape]
    if not shapes or any(not s or any(int(d) < 1 for d in s) for s in shapes):
        raise BadInput(f"input shape must be positive sizes without the batch axis, e.g. (3, 224, 224); "
                       f"got {input_shape}")
    return [[int(d) for d in s] for s in shapes]


def _random(rng: np.random.Generator, shape: list[int], ort_type: str) -> np.ndarray:
    dtype = ORT_NUMPY_TYPES.get(ort_type, np.float32)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)  # ints and bools: 0/1, valid as indices and masks
