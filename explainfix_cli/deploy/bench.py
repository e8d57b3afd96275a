"""onnxruntime latency with fixed threads, and models side by side with ratios to the first.

    runs = bench_interleaved([BenchTarget("r18/model.onnx", (3, 224, 224), model_cost(r18, (3, 224, 224)), "resnet18"),
                              BenchTarget("r18-pruned/model.onnx", (3, 224, 224), model_cost(pruned, (3, 224, 224)))])
    compare_bench(runs)   # [{"label": "resnet18", "latency_ratio": 1.0, …}, {…, "macs_ratio": 0.52}]

Latency is the wall time of one ``session.run`` after ``warmup`` runs, on seeded random inputs. Models are
timed *interleaved*: in each of ``rounds`` rounds every model runs its share of ``iters`` back to back, and a
latency ratio is the median over rounds of the same-round p50 ratios. On a shared or throttling machine,
timing one model after the other drifts by tens of percent; drift within a round hits both sides alike.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import BadInput, first_line
from ..core.model import count_macs, count_params
from .verify import ORT_NUMPY_TYPES, open_session

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
    round_p50_ms: list[float] = field(default_factory=list)  # p50 of each interleaved round
    p10_ms: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def model_cost(model: nn.Module, input_shape: Shape | Sequence[Shape]) -> ModelCost:
    """:class:`ModelCost` of ``model`` for one sample of ``input_shape`` (no batch axis), via measure.py.

        model_cost(torchvision.models.resnet18(), (3, 224, 224))   # ModelCost(params=11689512, macs=1814…)
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = tuple(torch.zeros(1, *s, device=device) for s in _shapes(input_shape))
    return ModelCost(params=count_params(model), macs=count_macs(model, example[0] if len(example) == 1 else example))


@dataclass(frozen=True)
class BenchTarget:
    """One ONNX file to time: one sample's input shape (or one per input), its cost, a label."""

    path: str | os.PathLike
    input_shape: Shape | Sequence[Shape]
    cost: ModelCost | None = None
    label: str | None = None


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
    """Time ``iters`` runs of one ONNX model on CPU (``threads`` intra-op threads, 1 inter-op, sequential).

    ``input_shape`` is one sample's shape, e.g. ``(3, 224, 224)``, or a list of them for several inputs.

        bench_onnx("out/model.onnx", (3, 64, 64), batch_size=8, threads=2).p50_ms
    """
    return bench_interleaved([BenchTarget(onnx_path, input_shape, cost, label)], batch_size=batch_size,
                             threads=threads, warmup=warmup, iters=iters, rounds=1, seed=seed)[0]


def bench_interleaved(
    targets: Sequence[BenchTarget],
    *,
    batch_size: int = 1,
    threads: int = 2,
    warmup: int = 10,
    iters: int = 50,
    rounds: int = 5,
    seed: int = 0,
) -> list[BenchResult]:
    """Time several ONNX models interleaved: ``rounds`` rounds, each running every model ``ceil(iters /
    rounds)`` times in turn after ``warmup`` untimed runs each (first round only). Sessions stay open."""
    if batch_size < 1 or threads < 1 or warmup < 0 or iters < 1 or rounds < 1:
        raise BadInput(f"need batch_size >= 1, threads >= 1, warmup >= 0, iters >= 1, rounds >= 1; got "
                       f"{batch_size}, {threads}, {warmup}, {iters}, {rounds}")
    per_round = -(-iters // rounds)
    runs = []
    for t in targets:
        session = open_session(t.path, threads)
        inputs = session.get_inputs()
        shapes = [[batch_size, *s] for s in _shapes(t.input_shape)]
        if len(shapes) != len(inputs):
            raise BadInput(f"{Path(t.path).name} takes {len(inputs)} inputs, got {len(shapes)} input shapes")
        rng = np.random.default_rng(seed)
        feed = {m.name: _random(rng, s, m.type) for m, s in zip(inputs, shapes)}
        try:
            session.run(None, feed)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise BadInput(f"{Path(t.path).name} cannot run on input shapes {shapes}: {first_line(exc)}",
                           hint="check --input-size and --batch-size (is the batch axis dynamic?)") from exc
        runs.append((session, feed, shapes))
    times: list[list[np.ndarray]] = [[] for _ in targets]
    for r in range(rounds):
        for k, (session, feed, _) in enumerate(runs):
            for _ in range(warmup if r == 0 else 0):
                session.run(None, feed)
            ms = np.empty(per_round)
            for i in range(per_round):
                start = time.perf_counter()
                session.run(None, feed)
                ms[i] = (time.perf_counter() - start) * 1e3
            times[k].append(ms)
    results = []
    for t, (_, _, shapes), rounds_ms in zip(targets, runs, times):
        ms = np.concatenate(rounds_ms)
        results.append(BenchResult(
            label=t.label or str(t.path), path=str(t.path), input_shapes=shapes, batch_size=batch_size,
            threads=threads, warmup=warmup, iters=len(ms), p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)), mean_ms=float(ms.mean()), min_ms=float(ms.min()),
            params=t.cost.params if t.cost else None, macs=t.cost.macs if t.cost else None,
            round_p50_ms=[float(np.percentile(x, 50)) for x in rounds_ms], p10_ms=float(np.percentile(ms, 10)),
        ))
    return results


def compare_bench(results: Sequence[BenchResult]) -> list[dict]:
    """One row per result with ``latency_ratio``, ``macs_ratio`` and ``params_ratio`` relative to the first
    result (None where a value is unknown or the first is 0). Results timed interleaved in the same rounds
    get the median of the same-round p50 ratios and its range (``latency_ratio_min`` / ``_max``); others
    the ratio of their p50s."""
    if not results:
        return []
    first = results[0]
    rows = []
    for r in results:
        paired = [a / b for a, b in zip(r.round_p50_ms, first.round_p50_ms) if b] \
            if len(r.round_p50_ms) == len(first.round_p50_ms) > 1 else []
        rows.append({
            "label": r.label, "p10_ms": r.p10_ms, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "mean_ms": r.mean_ms,
            "params": r.params, "macs": r.macs,
            "latency_ratio": float(np.median(paired)) if paired else _ratio(r.p50_ms, first.p50_ms),
            "latency_ratio_min": min(paired) if paired else None,
            "latency_ratio_max": max(paired) if paired else None,
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
