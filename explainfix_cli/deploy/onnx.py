"""ONNX export (torch.export-based exporter, TorchScript fallback), checked and shape-inferred.

    res = export_onnx(model, torch.randn(2, 3, 64, 64), "out/model.onnx", metadata={"source": "r18.pt"})
    res.exporter, res.fallback_reason     # "dynamo", None   (or "torchscript", "why dynamo failed")

The file is built in a temporary path inside the target directory and ``os.replace`` it,
so a failure leaves nothing half-written. onnx is imported lazily. (safetensors: io/codec.py.)
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import BadInput, CannotProcess
from ..io.outdir import disk_error, staging
from ..core.model import attributes_kept
from ..core.tensors import as_input_tuple, eval_mode, flatten_outputs  # flatten_outputs: also this module's API

MIN_OPSET = 18
_INLINE_LIMIT = 1_800_000_000  # protobuf refuses messages over 2 GiB: bigger weights go to one side file


@dataclass
class OnnxExportResult:
    """What :func:`export_onnx` wrote and how (``exporter`` is "dynamo" or "torchscript")."""

    path: str
    exporter: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    file_bytes: int
    metadata: dict[str, str]
    fallback_reason: str | None = None
    external_data: str | None = None  # side file name, only for models over ~1.8 GB
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def input_names_for(count: int) -> list[str]:
    """``["input"]`` for one input, ``["input_0", "input_1", …]`` for several."""
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


# ---------------------------------------------------------------------------------------------- ONNX
def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    opset: int = MIN_OPSET,
    metadata: dict[str, str] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
) -> OnnxExportResult:
    """Export ``model`` to one self-contained ``.onnx`` file, checked and shape-inferred.

    Tries ``torch.onnx.export(dynamo=True)`` (torch.export, batch axis ``torch.export.Dim("batch")``),
    then the TorchScript exporter (``dynamo=False``, ``dynamic_axes``); the result records which one
    worked and why the first failed. Both failing → :class:`CannotProcess` naming the op when the
    exporters say which. With ``dynamic_batch`` the example batch must be > 1 (a batch of 1 gets
    specialised away).

        export_onnx(model, torch.randn(2, 3, 224, 224), "out/model.onnx", metadata={"pct": "50"})
    """
    import onnx

    args = as_input_tuple(example_inputs)
    if opset < MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise BadInput(f"opset {opset} is out of range {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    if dynamic_batch and any(t.dim() == 0 or t.shape[0] < 2 for t in args):
        raise BadInput("the example batch must be > 1 for a dynamic batch axis",
                       hint="pass a batch of 2 or more samples")
    target = Path(path)
    if not target.parent.is_dir():
        raise BadInput(f"output directory {target.parent} does not exist")

    in_names = list(input_names) if input_names is not None else input_names_for(len(args))
    with eval_mode(model), torch.no_grad(), attributes_kept(model):  # a shape cache would fix the batch
        try:
            out = model(*args)
        except Exception as exc:  # noqa: BLE001 - any forward error means the example does not fit
            raise BadInput(f"the model rejects the example inputs {[list(t.shape) for t in args]}: "
                           f"{_summary(exc)}", hint="check --input-size") from exc
    auto_out_names = [name for name, _ in flatten_outputs(out)]
    out_names = list(output_names) if output_names is not None else auto_out_names
    if len(in_names) != len(args) or len(out_names) != len(auto_out_names):
        raise BadInput(f"{len(args)} inputs and {len(auto_out_names)} outputs need as many names, "
                       f"got {len(in_names)} and {len(out_names)}")
    if len(set(in_names + out_names)) != len(in_names) + len(out_names):
        raise BadInput(f"input and output names must be unique: {in_names + out_names}")

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"explainfix.torch_version": torch.__version__, "explainfix.opset": str(opset)})
    big = _weights_bytes(model) > _INLINE_LIMIT
    failures: dict[str, Exception] = {}
    caught: list[str] = []
    with staging(target) as workdir:  # io/outdir.py: next to the target, removed whatever happens
        for exporter in ("dynamo", "torchscript"):
            final = workdir / target.name

            def once(example: tuple) -> None:
                raw = workdir / f"{exporter}-raw.onnx"
                with eval_mode(model), torch.no_grad(), _quiet(caught), attributes_kept(model):
                    _EXPORTERS[exporter](model, example, raw, opset, in_names, out_names, dynamic_batch)
                meta["explainfix.onnx_exporter"] = exporter
                _finalize(raw, final, meta, big, dynamic_batch)
            try:
                once(args)
            except _BatchFixed as exc:
                caught.append(_other_batch(model, args, final, once, exc))
            except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the next one
                full = _disk_full(exc)
                if full is not None:  # not the model's fault, and the other exporter would fail the same way
                    raise disk_error(full, target) from None
                failures[exporter] = exc
                continue
            side = f"{target.name}.data" if big else None
            if side:
                os.replace(workdir / side, target.parent / side)
            os.replace(final, target)
            return OnnxExportResult(
                path=str(target), exporter=exporter, opset=opset, input_names=in_names,
                output_names=out_names, dynamic_batch=dynamic_batch, file_bytes=target.stat().st_size,
                metadata=meta, fallback_reason=_summary(failures["dynamo"]) if failures else None,
                external_data=side, warnings=_unique(caught)[:10],
            )
    raise _both_failed(failures, opset) from failures["torchscript"]


def _export_dynamo(model, args, raw, opset, in_names, out_names, dynamic_batch) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in args)
    torch.onnx.export(model, args, str(raw), dynamo=True, opset_version=opset, input_names=in_names,
                      output_names=out_names, dynamic_shapes=dynamic_shapes, external_data=True,
                      verbose=False)


def _export_torchscript(model, args, raw, opset, in_names, out_names, dynamic_batch) -> None:
    axes = {name: {0: "batch"} for name in in_names + out_names} if dynamic_batch else None
    log_was_on = torch._C._jit_is_onnx_log_enabled()
    try:
        torch.onnx.export(model, args, str(raw), dynamo=False, opset_version=opset, input_names=in_names,
                          output_names=out_names, dynamic_axes=axes, do_constant_folding=True)
    finally:  # the legacy exporter switches native logging on and leaves it on
        torch._C._jit_set_onnx_log_enabled(log_was_on)


_EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


class _BatchFixed(RuntimeError):
    """A dynamic batch axis was asked for and the exporter fixed it."""


def _other_batch(model: nn.Module, args: tuple, final: Path, once: Callable[[tuple], None], exc: _BatchFixed) -> str:
    """The batch axis came out fixed. A forward that compares the batch with a cache of an earlier call
    (a detection head's ``if self.shape != shape``) specialises only on that batch size: export on one
    sample more, and keep the result only if onnxruntime agrees with torch at both batch sizes (a forward
    that truly branches on the batch size does not). Returns the note for the result's warnings."""
    from .verify import verify_onnx

    def refuse() -> CannotProcess:
        return CannotProcess(f"{exc}; an ONNX with a dynamic batch axis would be wrong for other batch sizes",
                             hint="the model's forward branches on or caches the batch size")
    if len(args) != 1:
        raise refuse() from None
    x = args[0]
    bigger = torch.cat([x, x[:1]])
    try:
        once((bigger,))
    except _BatchFixed:
        raise refuse() from None
    if not verify_onnx(final, model, [x, bigger]).passed:
        raise refuse() from None
    return (f"the batch axis was fixed when exported on a batch of {len(x)} (the forward compares it with a "
            f"cached shape); exported on {len(bigger)} and checked in onnxruntime at batches {len(x)} and {len(bigger)}")


def _finalize(raw: Path, final: Path, meta: dict[str, str], big: bool, dynamic_batch: bool) -> None:
    """Raw export → inline weights (one file), provenance, shape inference, full checker; a batch axis
    asked to be dynamic and exported fixed fails (torch.onnx falls back to tracing when torch.export
    finds the batch specialised)."""
    import onnx

    proto = onnx.load(str(raw), load_external_data=True)
    for i in proto.graph.input if dynamic_batch else ():
        dims = i.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise _BatchFixed(f"the exported batch axis of {i.name} is fixed at {dims[0].dim_value} "
                              "(the forward specialises on the batch size)")
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(meta)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(final), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{final.name}.data", size_threshold=1024)
    onnx.shape_inference.infer_shapes_path(str(final), str(final), check_type=True, strict_mode=True)
    onnx.checker.check_model(str(final), full_check=True)
    if not big and any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(final)).graph.initializer):
        raise RuntimeError("weights were left in external data files")


def _weights_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def _quiet(caught: list[str]) -> Iterator[None]:
    """Keep the exporters' prints, native logs (fd 1/2) and warnings off the terminal.

    Warnings' first lines are appended to ``caught``. The fd redirect is process-wide while it lasts;
    it is skipped where fd 1/2 cannot be duplicated (closed descriptors). ``sys.stdout``/``sys.stderr``
    are swapped too: torch's log handlers write to whatever ``sys.stderr`` is, not always fd 2."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        saved = []
    python_sink = io.StringIO()
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as records, \
            contextlib.redirect_stdout(python_sink), contextlib.redirect_stderr(python_sink):
        warnings.simplefilter("always")
        for fd in (1, 2) if saved else ():
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            caught += [str(r.message).strip().splitlines()[0] for r in records if str(r.message).strip()]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OP_PATTERNS = [
    re.compile(r"OpOverload\(op='([\w.]+)', overload='\w+'\)"),  # dynamo: no ONNX function for aten._linalg_svd
    re.compile(r"[Ee]xporting the operator '([\w:.]+)'"),  # torchscript: … to ONNX opset version N is not supported
    re.compile(r"unrecognized namespace ([\w:.]+)"),  # torchscript: custom ops
    re.compile(r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]?\("),  # dynamo: error when translating node …
]


def failing_op(exc: BaseException) -> str | None:
    """The op an exporter error names (``aten::linalg_svd``, ``mylib::op``), or None."""
    seen, texts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(_ANSI.sub("", str(exc)))
        exc = exc.__cause__ or exc.__context__
    for pattern in _OP_PATTERNS:
        for text in texts:
            if m := pattern.search(text):
                op = m.group(1)
                return op if "::" in op else op.replace(".", "::", 1)
    return None


def _summary(exc: BaseException) -> str:
    """One line: the dynamo exporter's "Exception summary" line, else the message's first line."""
    text = _ANSI.sub("", str(exc))
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = re.sub(r"^<class '[\w.]+'>:\s*", "", lines[0]) if lines else type(exc).__name__
    return line[:300]


def _disk_full(exc: BaseException) -> OSError | None:
    """The OSError for a full disk somewhere in an exporter's exception chain (exporters wrap it), or None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return e
        if re.search(r"No space left on device|Disk quota exceeded|File too large", str(e)):
            return OSError(errno.ENOSPC, "No space left on device")
        e = e.__cause__ or e.__context__
    return None


def _both_failed(failures: dict[str, Exception], opset: int) -> CannotProcess:
    op = failing_op(failures["dynamo"]) or failing_op(failures["torchscript"])
    if op:
        msg = (f"ONNX export failed: operator `{op}` has no ONNX translation at opset {opset} "
               "(torch.export-based and TorchScript exporters both failed)")
    else:
        msg = (f"ONNX export failed with both exporters: dynamo: {_summary(failures['dynamo'])}; "
               f"torchscript: {_summary(failures['torchscript'])}")
    return CannotProcess(msg, hint="replace that op in the model or try another --opset; nothing was written. "
                                   "--safetensors export still works")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


