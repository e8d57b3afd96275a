"""``explainfix bench``: onnxruntime latency side by side with MACs/params, models timed interleaved.

The jobs that time what they make (compress, sweep, quantize) take one :class:`BenchOptions`:

    compress_job(..., timing=BenchOptions(threads=4, bench_iters=20))   # BenchOptions(bench=False): no timing
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..core.errors import BadInput
from ..io.arch import parse_arch_kwargs
from ..io.checkpoint import load_model
from .result import JobResult
from ..io.data import (
    Preprocessing,
    parse_input_size,
    random_inputs,
    resolve_preprocessing,
)


@dataclass(frozen=True)
class BenchOptions:
    """How compress, sweep and quantize time their models in onnxruntime (``--bench/--no-bench``, ``--threads``,
    ``--bench-iters``): ``bench_iters`` timed runs per model in each of ``bench_rounds`` interleaved rounds, with
    ``threads`` intra-op threads, which their INT8 checks use too."""

    bench: bool = True
    threads: int = 2
    bench_iters: int = 50
    bench_rounds: int = 5

    def check(self) -> "BenchOptions":
        """Bad values are refused before any work."""
        if self.threads < 1 or self.bench_iters < 1:
            raise BadInput(f"--threads and --bench-iters must be ≥ 1; got {self.threads} and {self.bench_iters}")
        if self.bench_rounds < 1:
            raise BadInput(f"bench_rounds must be ≥ 1, got {self.bench_rounds}")
        return self


@dataclass
class BenchJob(JobResult):
    report: dict  # "rows": one per model, ratios to the first


def bench_job(models: list[Path], arch: str | None = None, arch_kwargs: str | None = None, trust_pickle: bool = False,
              trust_code: bool = False, input_size: str | None = None, batch_size: int = 1, threads: int = 2, warmup: int = 10,
              iters: int = 50, seed: int = 0, opset: int = 18, rounds: int = 5) -> BenchJob:
    """onnxruntime latency of each model side by side with MACs/params and ratios to the first, timed
    interleaved over ``rounds`` rounds (bench.py).

    A model that is not ``.onnx`` is loaded like any MODEL and exported to a temporary ONNX first."""
    from ..deploy.bench import BenchTarget, bench_interleaved, compare_bench

    if not models:
        raise BadInput("bench needs at least one MODEL")
    if batch_size < 1 or threads < 1 or iters < 1 or warmup < 0 or rounds < 1:
        raise BadInput("--batch-size, --threads, --iters and --rounds must be ≥ 1, --warmup ≥ 0")
    targets, loaded_models = [], {}
    for path in map(Path, models):
        if path.suffix != ".onnx":
            # --arch builds every model: a weights file's, and an explainfix directory's in place of its recipe's
            loaded_models[path] = load_model(path, arch, parse_arch_kwargs(arch_kwargs), trust_pickle, "bench",
                                             trust_code=trust_code)
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
            recorded = (loaded.preprocessing or {}).get("sample_shape") is not None  # not an image (io/data.py)
            pre = resolve_preprocessing(loaded.model, None if recorded and not input_size else size, None, None,
                                        loaded.preprocessing)
            targets.append(model_target(loaded.model, pre, Path(tmp) / f"m{k}", str(path), seed, opset))
        rows = compare_bench(bench_interleaved(targets, batch_size=batch_size, threads=threads, warmup=warmup,
                                               iters=iters, rounds=rounds, seed=seed))
    return BenchJob({"command": "bench", "batch_size": batch_size, "threads": threads, "iters": iters, "rounds": rounds,
                     "rows": rows})


def model_target(model: nn.Module, pre: Preprocessing, folder: Path, label: str, seed: int = 0, opset: int = 18):
    """A torch model as a bench target: exported (dynamic batch) to ``folder/model.onnx``, with its MACs/params."""
    from ..deploy.bench import BenchTarget, model_cost
    from ..deploy.onnx import export_onnx

    shape = pre.shape
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(model, random_inputs(pre, 2, seed), folder / "model.onnx", opset=opset)
    return BenchTarget(folder / "model.onnx", shape, model_cost(model, shape), label)


def bench_models(models: list[tuple[str, nn.Module]], pre: Preprocessing, *, batch_size: int = 1, threads: int = 2,
                 warmup: int = 10, iters: int = 50, rounds: int = 5, seed: int = 0, opset: int = 18,
                 extra: list = ()) -> list[dict]:
    """In-memory models (label, model) timed interleaved exactly as ``explainfix bench`` times files; ``extra``
    (deploy.bench.BenchTarget: ONNX files, e.g. INT8 models) are timed in the same rounds, after them."""
    from ..deploy.bench import bench_interleaved, compare_bench

    with tempfile.TemporaryDirectory(prefix="explainfix-bench-") as tmp:
        targets = [model_target(m, pre, Path(tmp) / f"m{k}", label, seed, opset) for k, (label, m) in enumerate(models)]
        targets += list(extra)
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
