"""Accuracy control: which quantized layers hurt most, and the fewest to keep in float so a gate holds.

    ranked = rank_layers(fp32, int8, candidates, batches, work)              # most sensitive first
    found = keep_float_until(ranked, requantize, evaluate, max_float=64)      # fewest found

Sensitivity comes from one pass of each model over a few calibration batches (onnxruntime's
``qdq_loss_debug``: every intermediate tensor of the INT8 model matched with the FP32 one): the noise a
node adds, relative to its output's power. The candidates are every quantized node that computes — weighted
layers and the Mul / Add / Softmax / LayerNormalization between them: on MobileViT-XXS the SiLU products
matter more than any one layer. The top 1, 2, … 8 nodes are kept in float, then 16, 32, … up to ``max_float``,
then the count is bisected (:func:`float_counts`), until ``evaluate`` (the gates on ``--eval-data``) passes; or
the best model found is returned with ``passed = False``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .int8_check import Gate, Int8Comparison
from .quantize import FeedReader

Requantize = Callable[[list[str]], Path]  # node names kept in float → a freshly quantized file
Evaluate = Callable[[Path], tuple[Int8Comparison, list[Gate]]]


@dataclass
class ControlResult:
    passed: bool
    path: Path | None  # the model that passed, else the best one tried
    kept_float: list[str]
    comparison: Int8Comparison | None
    gates: list[Gate]
    tried: list[dict] = field(default_factory=list)  # per attempt: {"float_layers": k, "agreement", "accuracy_drop_pts", "passed"}


def rank_layers(fp32: Path, int8: Path, candidates: Sequence[str], batches: list, work: Path) -> list[dict]:
    """``[{"name", "added_noise", "snr_in_db", "snr_out_db"}]``, most sensitive first, from ONE pass of each
    model (onnxruntime's ``qdq_loss_debug`` activation matching on ``batches``).

    A layer's sensitivity is the quantization noise it adds: the relative noise power of its output (before
    its own output is quantized) minus that of its inputs before their quantization, against the FP32 model.
    That is what keeping it in float removes — its weights' and its inputs' quantization (a float node reads
    its inputs unquantized: deploy/qdq.py)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from .quantize import _quiet_ort

    acts = {}
    for key, path in (("float", fp32), ("qdq", int8)):
        aug = Path(work) / f"augmented-{key}.onnx"
        with _quiet_ort():
            modify_model_output_intermediate_tensors(str(path), str(aug))
            acts[key] = collect_activations(str(aug), _Batches(batches, _input_name(path)))
    match = create_activation_matching(acts["qdq"], acts["float"])
    graph = onnx.load(str(fp32), load_external_data=False).graph
    nodes = {n.name: n for n in graph.node}
    graph_inputs = {i.name for i in graph.input}
    inits = {t.name for t in graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    clamps = {n.output[0]: b for n in graph.node if (b := _clamp(n, graph)) is not None}
    ranked = []
    for name in candidates:
        node = nodes.get(name)
        if node is None:
            continue
        noise_in = _input_noise(node, match, graph_inputs, inits, clamps)
        out, which = node.output[0], "pre_qdq"
        while out not in match and len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in ("Relu", "Clip"):
            # onnxruntime removed the activation: the layer writes its output, clamped by the output's quantization
            out, which = consumers[out][0].output[0], "post_qdq"
        noise_out = _rel_noise(match.get(out), which)
        if noise_in is None or noise_out is None:
            continue
        ranked.append({"name": name, "added_noise": noise_out - noise_in, "snr_in_db": _db(noise_in),
                       "snr_out_db": _db(noise_out)})
    ranked.sort(key=lambda r: -r["added_noise"])
    return ranked


def _input_noise(node, match: dict, graph_inputs: set[str], inits: set[str], clamps: dict) -> float | None:
    """The noise a node kept in float still sees: its activation inputs as computed upstream in the INT8
    model, before their own quantization (deploy/qdq.py feeds a float node those), summed (a product's
    relative errors add). A Relu / Clip output is clamped first: where onnxruntime folded the activation into
    the pair, the tensor before it is the raw producer's output (qdq.py puts the activation back). None when
    the first input was not matched."""
    total = 0.0
    for k, t in enumerate(node.input):
        if not t or t in inits:
            continue
        n = 0.0 if t in graph_inputs else _rel_noise(match.get(t), "pre_qdq", clamps.get(t))
        if n is None and k == 0:
            return None
        total += n or 0.0
    return total


def _clamp(node, graph) -> tuple[float, float] | None:
    """(low, high) of a Relu or Clip of the float graph (bounds from initializers, Constant nodes or the
    opset-6 attributes); None for any other node or bounds it cannot read."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    if node.op_type != "Clip":
        return None
    from onnx import numpy_helper

    attrs = {a.name: a.f for a in node.attribute}
    bounds = [attrs.get("min", -float("inf")), attrs.get("max", float("inf"))]
    values = {t.name: t for t in graph.initializer}
    values.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    for k, name in enumerate(node.input[1:3]):
        if not name:
            continue
        if name not in values:
            return None
        bounds[k] = float(numpy_helper.to_array(values[name]).reshape(-1)[0])
    return bounds[0], bounds[1]


def _rel_noise(m: dict | None, which: str, clamp: tuple[float, float] | None = None) -> float | None:
    """‖qdq − float‖² / ‖float‖² of one tensor over all batches (None when it was not matched); ``clamp``:
    bounds the INT8 side is clipped to first."""
    if not m or not m.get("float") or m.get(which) is None:
        return None
    f = np.concatenate([np.ravel(a) for a in m["float"]]).astype(np.float64)
    q = np.concatenate([np.ravel(a) for a in m[which]]).astype(np.float64)
    if clamp is not None:
        q = np.clip(q, *clamp)
    if f.shape != q.shape:
        return None
    return float(np.sum((q - f) ** 2) / max(np.sum(f * f), 1e-30))


def _db(noise: float) -> float:
    return 999.0 if noise <= 0 else float(-10 * np.log10(noise))


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


class _Batches(FeedReader):
    """A ``CalibrationDataReader`` over (x, y) batches already in memory."""

    def __init__(self, batches: list, name: str):
        self.it = iter(batches)
        self.name = name

    def get_next(self) -> dict | None:
        nxt = next(self.it, None)
        return None if nxt is None else {self.name: np.ascontiguousarray(nxt[0].numpy(), dtype=np.float32)}


#: the default cap of ``--max-float``: nodes kept in float by accuracy control (most are cheap elementwise ones)
MAX_FLOAT = 64
#: up to this many nodes, every count is tried (1, 2, 3, …); beyond, the count doubles and is then bisected
LINEAR_TRIES = 8


def float_counts(n: int, passed: Callable[[int], bool]) -> int | None:
    """The fewest of the ``n`` most sensitive nodes to keep in float for which ``passed(k)``: every count up to
    :data:`LINEAR_TRIES`, then doubling (16, 32, …, ``n``), then bisection between the last count that failed and
    the first that passed (the gates are close to monotone in k, not exactly: this finds a small passing k in
    O(log n) tries instead of n). None when no count up to ``n`` passes."""
    k, failed = 0, 0
    while k < n:
        k = k + 1 if k < LINEAR_TRIES else min(2 * k, n)
        if passed(k):
            break
        failed = k
    else:
        return None
    hi = k
    while hi - failed > 1:
        mid = (failed + hi) // 2
        if passed(mid):
            hi = mid
        else:
            failed = mid
    return hi


def keep_float_until(ranked: list[dict], requantize: Requantize, evaluate: Evaluate, max_float: int) -> ControlResult:
    """Keep the top ranked nodes in float, the fewest that pass every gate (at most ``max_float``; the counts
    tried: :func:`float_counts`)."""
    best: ControlResult | None = None
    found: ControlResult | None = None
    tried = []

    def passed(k: int) -> bool:
        nonlocal best, found
        names = [r["name"] for r in ranked[:k]]
        path = requantize(names)
        cmp, gates = evaluate(path)
        ok = all(g.passed for g in gates)
        tried.append({"float_layers": k, "names": names, "agreement": cmp.agreement,
                      "accuracy_drop_pts": cmp.accuracy_drop_pts, "passed": ok})
        if ok:  # the fewest so far (bisection only tries fewer after a pass)
            keep = path.with_name(f"passed-{path.name}")
            path.replace(keep)
            found = ControlResult(True, keep, names, cmp, gates)
        elif best is None or _score(cmp) > _score(best.comparison):
            keep = path.with_name(f"best-{path.name}")
            path.replace(keep)
            best = ControlResult(False, keep, names, cmp, gates)
        return ok

    float_counts(min(max_float, len(ranked)), passed)
    result = found or best or ControlResult(False, None, [], None, [])
    result.tried = tried
    return result


def _score(cmp: Int8Comparison) -> tuple:
    drop = cmp.accuracy_drop_pts
    return (-(drop if drop is not None else 0.0), cmp.agreement or 0.0, cmp.outputs[0]["snr_db"] if cmp.outputs else 0.0)


def node_macs(model) -> dict[str, int]:
    """Multiply-accumulates of one sample per weighted node (Conv, ConvTranspose, Gemm, MatMul), from the
    weight shape and the inferred output shape, and one operation per output element of the others: the basis
    of the float layers' latency estimate."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes = {}
    for v in [*model.graph.value_info, *model.graph.output]:
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        shapes[v.name] = dims
    out = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w = inits.get(n.input[1])
        y = shapes.get(n.output[0])
        if not w:
            continue
        if n.op_type in ("Conv", "ConvTranspose") and y and all(y[2:]):
            out[n.name] = int(np.prod(w, dtype=np.int64) * np.prod(y[2:], dtype=np.int64))
        elif n.op_type == "Gemm":
            out[n.name] = int(np.prod(w, dtype=np.int64))
        elif y and all(y[1:-1]):  # MatMul: every row of the (batch-free) input times the weight
            out[n.name] = int(np.prod(w, dtype=np.int64) * np.prod(y[1:-1], dtype=np.int64))
        else:
            out[n.name] = int(np.prod(w, dtype=np.int64))
    for n in model.graph.node:  # the rest (Mul, Add, Softmax, …): one operation per output element; a MatMul of
        y = shapes.get(n.output[0]) if n.output else None  # two activations (attention): × the shared dimension
        if n.name in out or not y or not all(y[1:]) or n.op_type in ("Conv", "ConvTranspose", "Gemm"):
            continue
        inner = (shapes.get(n.input[0]) or [1])[-1] if n.op_type == "MatMul" else 1
        out[n.name] = int(np.prod(y[1:], dtype=np.int64)) * max(1, inner)
    return out
