"""Static INT8 post-training quantization with onnxruntime.quantization (no quantizer of our own).

    opts = QuantizeOptions(calibrate="minmax", calib_images=300, seed=0)
    res = quantize_onnx("model.onnx", "model.int8.onnx", calib, opts, work=Path(tmp))
    res.settings        # format QDQ, int8 per-channel symmetric weights, uint8 asymmetric activations, ISA, …
    res.float_nodes     # [{"name": "/head/Softmax", "op_type": "Softmax", "why": "…"}]

Steps, all onnxruntime's: ``quant_pre_process`` (shape inference + graph optimisation) → calibration on up
to ``calib_images`` samples of ``calib`` in a seeded order, streamed one batch at a time (memory holds one
batch and the calibrator's ranges or histograms) → ``quantize_static`` in QDQ format. The calibrated
ranges are cached in ``work``, so quantizing again with other nodes kept in float (accuracy control,
sensitivity.py) does not calibrate again. Every choice is recorded in ``settings`` and in the INT8 file's
``metadata_props`` (``explainfix.quantization``, ``explainfix.float_nodes``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..core.errors import BadInput, CannotProcess, first_line
from ..io.data import CalibrationSet
from .isa import Isa, detect_isa, recommended_settings
from .qdq import feed_float

TYPES = ("int8",)
CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("auto", "uint8", "int8")
MIN_CALIB_IMAGES = 8  # fewer cannot estimate activation ranges worth shipping
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: ops that move or describe data without arithmetic worth quantizing (never reported as "left in float")
_SHAPE_OPS = frozenset({"Shape", "Constant", "ConstantOfShape", "Range", "Cast", "Identity", "Expand", "Size",
                        "NonZero", "Dropout", "QuantizeLinear", "DequantizeLinear"})
#: ops that only move, select or resize values (a QDQ model gives their output their input's scale): keeping one
#: in float changes nothing worth a try, so accuracy control does not rank them
MOVE_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Concat", "Gather",
                      "GatherElements", "Resize", "Pad", "Tile", "MaxPool", "DepthToSpace", "SpaceToDepth"})
_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                        "ConvInteger", "MatMulInteger", "MatMulNBits", "QGemm", "QLinearAdd"})
_INT_WEIGHTS = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 17: "float8e4m3fn", 22: "int4", 21: "uint4"}


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize to and how; validated once (:meth:`check`) for the CLI and the API alike."""

    type: str = "int8"
    calibrate: str = "minmax"
    calib_images: int = 300
    per_channel: bool = True
    activations: str = "auto"  # auto: what onnxruntime prescribes for this CPU (isa.py)
    reduce_range: bool | None = None  # None: what onnxruntime prescribes for this CPU
    keep_float: tuple[str, ...] = ()  # node names pinned in float by hand
    batch_size: int = 16
    seed: int = 0

    def check(self) -> "QuantizeOptions":
        if str(self.type).lower() not in TYPES:
            raise BadInput(f"--type {self.type} is not supported; explainfix quantizes to int8 only "
                           "(int8 weights and 8-bit activations, onnxruntime QDQ)", hint="use --type int8")
        if self.calibrate not in CALIBRATIONS:
            raise BadInput(f"--calibrate must be one of {', '.join(CALIBRATIONS)}; got {self.calibrate!r}")
        if self.activations not in ACTIVATIONS:
            raise BadInput(f"--activations must be one of {', '.join(ACTIVATIONS)}; got {self.activations!r}")
        if not (isinstance(self.calib_images, int) and self.calib_images >= MIN_CALIB_IMAGES):
            raise BadInput(f"--calib-images must be an integer ≥ {MIN_CALIB_IMAGES}, got {self.calib_images}")
        if self.batch_size < 1:
            raise BadInput(f"--batch-size must be ≥ 1, got {self.batch_size}")
        return replace(self, type=str(self.type).lower(), keep_float=tuple(self.keep_float))


@dataclass
class QuantizeResult:
    path: str
    settings: dict
    quantized_nodes: list[str]
    float_nodes: list[dict]  # {"name", "op_type", "why"}
    weights_int8: int  # int8 weight initializers in the file
    calib_samples: int

    def to_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ checks
def load_float_onnx(path: Path, what: str = "MODEL"):
    """The ONNX model at ``path``, refusing an unreadable file and an already quantized model (exit 2)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf/onnx raise many types
        raise BadInput(f"cannot read {path} as ONNX: {first_line(exc, 160)}",
                       hint="pass a valid .onnx file (explainfix export writes one)") from None
    if why := quantized_reason(model):
        raise BadInput(f"{path} is already quantized ({why}); quantizing twice loses accuracy for nothing",
                       hint=f"quantize the float model it was made from (pass it as {what})")
    if not any(i.type.tensor_type.elem_type == 1 for i in model.graph.input):  # FLOAT
        raise BadInput(f"{path} has no float32 input; INT8 calibration feeds float32 images",
                       hint="export the model in float32 (explainfix export)")
    return model


def quantized_reason(model) -> str | None:
    """Why an ONNX graph counts as quantized already (None when it does not)."""
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in _QUANT_OPS})
    if ops:
        return "it holds " + ", ".join(ops[:3])
    ints = [t.name for t in model.graph.initializer if t.data_type in _INT_WEIGHTS and len(t.dims) >= 2]
    if ints:
        return f"its weights are integers ({ints[0]})"
    return None


# ------------------------------------------------------------------------------------- calibration
class FeedReader:
    """onnxruntime's ``CalibrationDataReader`` protocol (``get_next`` → one input feed, or None at the end; also
    an iterator of feeds); subclasses say where the batches come from."""

    def get_next(self) -> dict | None:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


class _CalibReader(FeedReader):
    """Over index lists of a :class:`CalibrationSet`: a batch is decoded when onnxruntime asks for it;
    ``set_range`` lets the calibrator take one batch at a time."""

    def __init__(self, calib: CalibrationSet, index: list[list[int]], input_name: str):
        self.calib, self.index, self.input_name = calib, index, input_name
        self.start, self.end = 0, len(index)
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return len(self.index)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self._it = start_index, end_index, None

    def get_next(self) -> dict | None:
        if self._it is None:
            self._it = iter(self.calib.load(self.index[self.start:self.end]))
        nxt = next(self._it, None)
        return None if nxt is None else {self.input_name: nxt[0].numpy().astype(np.float32, copy=False)}


def calibration_index(calib: CalibrationSet, images: int, batch_size: int, seed: int) -> list[list[int]]:
    """Up to ``images`` samples in the seeded order of :meth:`CalibrationSet.batches`, in batches."""
    import torch

    if len(calib) < MIN_CALIB_IMAGES:
        raise BadInput(f"{calib.source} holds {len(calib)} samples; calibration needs at least {MIN_CALIB_IMAGES}",
                       hint="pass a --data folder with a few hundred images like those the model will see")
    order = torch.randperm(len(calib), generator=torch.Generator().manual_seed(seed)).tolist()[:images]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# ------------------------------------------------------------------------------------------ stage
def resolve_settings(options: QuantizeOptions, isa: Isa | None = None) -> dict:
    """Every choice of the quantization, with where it came from (the report's ``settings``)."""
    import onnxruntime

    isa = isa or detect_isa()
    rec = recommended_settings(isa)
    act = rec["activation_type"] if options.activations == "auto" else options.activations
    rr = rec["reduce_range"] if options.reduce_range is None else bool(options.reduce_range)
    return {
        "type": options.type, "format": "QDQ", "weights": "int8, symmetric, " + ("per-channel" if options.per_channel else "per-tensor"),
        "activations": f"{act}, " + ("asymmetric" if act == "uint8" else "symmetric"), "activation_type": act,
        "reduce_range": rr, "calibrate": options.calibrate, "calib_images": options.calib_images,
        "per_channel": options.per_channel, "seed": options.seed, "pre_process": "onnxruntime quant_pre_process",
        "isa": isa.to_json(), "recommended": rec,
        "chosen_by": {"activations": "onnxruntime's prescription for this CPU" if options.activations == "auto" else "--activations",
                      "reduce_range": "onnxruntime's prescription for this CPU" if options.reduce_range is None else "flag"},
        "onnxruntime": onnxruntime.__version__,
    }


def pre_process(fp32_path: Path, work: Path) -> Path:
    """onnxruntime's ``quant_pre_process`` into ``work``; retried without its graph optimisation (which
    some exports trip) before giving up (exit 3)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(work) / "prep.onnx"
    last: Exception | None = None
    for skip in (False, True):
        try:
            with _quiet_ort():
                quant_pre_process(str(fp32_path), str(out), skip_optimization=skip, skip_symbolic_shape=skip)
        except Exception as exc:  # noqa: BLE001
            last = exc
            continue
        _name_every_node(out)
        return out
    raise CannotProcess(f"onnxruntime's quant_pre_process fails on {Path(fp32_path).name}: {first_line(last)}",
                        hint="the FP32 model runs, but onnxruntime cannot prepare it for quantization")


def _name_every_node(path: Path) -> None:
    """Name the nodes the graph optimisation made without one (e.g. hard-swish's HardSigmoid) after their first
    output, so the report, --keep-float and the accuracy control can name every node."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {n.name for n in model.graph.node if n.name}
    changed = False
    for i, node in enumerate(model.graph.node):
        if not node.name:
            base = f"{node.op_type}:{node.output[0]}" if node.output and node.output[0] else f"{node.op_type}:{i}"
            name, k = base, 1
            while name in names:
                name, k = f"{base}#{k}", k + 1
            node.name, changed = name, True
            names.add(name)
    if changed:
        onnx.save(model, str(path))


def quantize_onnx(fp32_path: Path, out_path: Path, calib: CalibrationSet, options: QuantizeOptions, *,
                  work: Path, settings: dict | None = None, exclude: Sequence[str] = (),
                  why_excluded: dict[str, str] | None = None, metadata: dict[str, str] | None = None) -> QuantizeResult:
    """Quantize ``fp32_path`` (already :func:`pre_process`-ed, or raw: it is prepared on the first call) to
    ``out_path``. ``exclude``: node names kept in float besides ``options.keep_float``; ``why_excluded``
    words the report's reason per name. The calibration of the first call is cached in ``work``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    options = options.check()
    settings = settings or resolve_settings(options)
    work = Path(work)
    prep = Path(fp32_path) if Path(fp32_path).name == "prep.onnx" else pre_process(fp32_path, work)
    graph = onnx.load(str(prep), load_external_data=False).graph
    pinned = resolve_node_names(graph, options.keep_float)
    excluded = list(dict.fromkeys([*pinned, *exclude]))
    index = calibration_index(calib, options.calib_images, options.batch_size, options.seed)
    reader = _CalibReader(calib, index, graph.input[0].name)
    act = QuantType.QUInt8 if settings["activation_type"] == "uint8" else QuantType.QInt8
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.calibrate]
    extra = {"CalibStridedMinMax": 1,  # one batch per calibrator pass: memory holds one batch, never the folder
             "WeightSymmetric": True, "ActivationSymmetric": settings["activation_type"] == "int8"}
    try:
        with _quiet_ort(), contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(str(prep), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                            reduce_range=settings["reduce_range"], activation_type=act, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=method, extra_options=extra,
                            calibration_cache_path=str(work / f"calibration-{options.calibrate}.json"))
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer raises plain exceptions
        raise CannotProcess(f"onnxruntime cannot quantize {Path(fp32_path).name}: {first_line(exc)}",
                            hint="--keep-float NAME keeps the node it names in float") from None
    model = onnx.load(str(out_path))
    feed_float(model, excluded, graph)  # an excluded node reads float tensors, not the copies others read
    quantized, float_nodes, int8 = _inspect(model, set(excluded), why_excluded or {}, set(pinned), module_names(graph))
    result = QuantizeResult(str(out_path), settings, quantized, float_nodes, int8, sum(len(b) for b in index))
    meta = {**(metadata or {}), "explainfix.quantization": json.dumps({k: v for k, v in settings.items() if k != "isa"}),
            "explainfix.isa": json.dumps(settings["isa"]),
            "explainfix.float_nodes": json.dumps([n["name"] for n in float_nodes])}
    _set_metadata(model, meta)
    onnx.save(model, str(out_path))
    return result


def module_names(graph) -> dict[str, str]:
    """Node name → the torch module its weight came from (``conv1`` for an input ``conv1.weight``)."""
    inits = {t.name for t in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type in WEIGHTED_OPS:
            w = next((i for i in n.input[1:2] if i in inits), "")
            out[n.name] = w[:-len(".weight")] if w.endswith(".weight") else w
    return out


def resolve_node_names(graph, names: Sequence[str]) -> list[str]:
    """``--keep-float`` values (node names, or the module names of weighted nodes) → node names."""
    nodes = {n.name for n in graph.node}
    by_module = {m: n for n, m in module_names(graph).items() if m}
    out = []
    for name in names:
        if name in nodes or name in by_module:
            out.append(name if name in nodes else by_module[name])
            continue
        near = sorted(n for n in [*nodes, *by_module] if name.lower() in n.lower())[:3]
        raise BadInput(f"--keep-float {name}: no node or module of that name in the model",
                       hint=f"did you mean {', '.join(near)}?" if near else "names are listed in report.json (quantized_nodes)")
    return out


def _inspect(model, excluded: set[str], why: dict[str, str], pinned: set[str], modules: dict[str, str]) -> tuple[list[str], list[dict], int]:
    """(nodes running on dequantized inputs, nodes left in float with the reason, int8 weight initializers)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    supported = set(QDQRegistry) | set(QLinearOpsRegistry)
    made_by = {o: n for n in model.graph.node for o in n.output}
    quantized, floats = [], []
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        fed = any(getattr(made_by.get(i), "op_type", "") == "DequantizeLinear" for i in node.input)
        if fed and node.name not in excluded and node.op_type in supported:
            quantized.append(node.name)
        elif node.name in excluded:
            floats.append({"name": node.name, "op_type": node.op_type, "module": modules.get(node.name),
                           "why": "--keep-float" if node.name in pinned else why.get(node.name, "kept in float")})
        elif node.op_type not in supported:
            floats.append({"name": node.name, "op_type": node.op_type, "module": modules.get(node.name),
                           "why": f"onnxruntime does not quantize {node.op_type}"})
        elif node.op_type in WEIGHTED_OPS:
            floats.append({"name": node.name, "op_type": node.op_type, "module": modules.get(node.name),
                           "why": "left in float by onnxruntime"})
    int8 = sum(1 for t in model.graph.initializer if t.data_type == 3)
    return quantized, floats, int8


def _set_metadata(model, meta: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


class _quiet_ort:
    """onnxruntime's quantization tools log warnings (pre-processing advice, …) through ``logging``: the
    library stays quiet, the report says what matters."""

    def __enter__(self):
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        logging.disable(self._level)


__all__ = ["QuantizeOptions", "QuantizeResult", "quantize_onnx", "pre_process", "resolve_settings",
           "load_float_onnx", "quantized_reason", "calibration_index", "onnx_metadata"]
