"""What every job shares: how the user named a model and data, opening them, and the device.

A job (one module per command) opens its inputs, calls the stage packages, writes its outputs atomically
and returns a result; jobs never print. ``progress(stage, completed, total)`` reports long work; the jobs
that compose the others (compress, sweep) take it with the device and the seed as one :class:`Run`."""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import dist
from ..core.errors import BadInput, first_line
from ..core.model import count_macs
from ..core.progress import Progress
from ..io.arch import parse_arch_kwargs
from ..io.checkpoint import LoadedModel, load_model
from ..io.codec import FLOAT_DTYPES, WeightDtypes, main_dtype
from ..io.outdir import check_output_dir, default_out
from ..io.data import (
    CalibrationSet,
    Preprocessing,
    load_calibration,
    parse_input_size,
    random_inputs,
    resolve_preprocessing,
    with_data,
)
from ..prune.check import train_outputs


@dataclass
class ModelSpec:
    """How the user named a model on the command line."""

    path: Path
    arch: str | None = None
    arch_kwargs: str | None = None
    trust_pickle: bool = False
    trust_code: bool = False  # run the code an explainfix directory names (io/trust.py)
    dtype: str = "keep"  # the dtype weights are written in: keep (each tensor's own, as loaded) or one of FLOAT_DTYPES

    def __post_init__(self) -> None:
        if self.dtype not in ("keep", *FLOAT_DTYPES):
            raise BadInput(f"--dtype must be keep, {', '.join(FLOAT_DTYPES)}; got {self.dtype!r}", hint="e.g. --dtype float16")


@dataclass
class DataSpec:
    path: Path | None = None
    input_size: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    batch_size: int = 32
    batches: int | None = None
    workers: int = 0  # DataLoader processes decoding images (io/data.py CalibrationSet.load)
    amp: bool = False  # bf16 autocast of the saliency and training forward passes (CUDA only; Opened.amp)


@dataclass(frozen=True)
class Run:
    """How compress and sweep run, apart from what they make; they hand it down to every step (prune rounds,
    fine-tuning, export, INT8, timing): the device, the seed, and the callbacks that report long work
    (``progress`` per stage, ``on_step`` per fine-tuning step: train.finetune.TrainStep)."""

    device: str = "auto"
    seed: int = 0
    progress: Progress | None = None
    on_step: Any = None


@dataclass
class Opened:
    loaded: LoadedModel
    pre: Preprocessing
    calib: CalibrationSet | None
    device: torch.device
    macs: int = 0  # of one input, counted by the probe forward in open_inputs
    dtype: str = "keep"  # ModelSpec.dtype
    amp: bool = False  # DataSpec.amp on a CUDA device

    @property
    def out_dtypes(self) -> WeightDtypes:
        """How written weights are cast (codec.cast_floats): as loaded, or the one dtype asked for."""
        return self.loaded.dtypes if self.dtype == "keep" else self.dtype

    @property
    def written_dtype(self) -> str:
        return main_dtype(self.out_dtypes)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    def example(self, n: int = 1) -> torch.Tensor:
        """``n`` real calibration inputs when there is data, else seeded random ones."""
        if self.calib is not None:
            x, _ = next(iter(self.calib.batches(n)))
            return x
        return random_inputs(self.pre, n)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise BadInput(f"--device {device!r} is not a device", hint="use auto, cpu, cuda or cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: CUDA is not available on this machine", hint="use --device cpu or auto")
    if d.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {device!r} is not supported", hint="use auto, cpu, cuda or cuda:N")
    return d


def open_inputs(model: ModelSpec, data: DataSpec | None, device: str = "cpu", purpose: str = "restructure") -> Opened:
    """Load the model, resolve preprocessing (flags → recipe → defaults) and open the calibration data."""
    dev = dist.init_from_env(resolve_device(device))  # under torchrun: join the process group, this rank's GPU
    if data is not None and data.batch_size < 1:
        raise BadInput(f"--batch-size must be ≥ 1, got {data.batch_size}")
    if data is not None and data.batches is not None and data.batches < 1:
        raise BadInput(f"--batches must be ≥ 1, got {data.batches}")
    if data is not None and data.workers < 0:
        raise BadInput(f"--workers must be ≥ 0, got {data.workers}")
    loaded = load_model(model.path, model.arch, parse_arch_kwargs(model.arch_kwargs), model.trust_pickle, purpose,
                        trust_code=model.trust_code)
    check_finite_weights(loaded.model, model.path)
    data = data or DataSpec()
    size = parse_input_size(data.input_size) if data.input_size else None
    pre = resolve_preprocessing(loaded.model, size, data.mean, data.std, loaded.preprocessing)
    calib = load_calibration(data.path, pre) if data.path is not None else None
    if calib is not None:
        pre = with_data(pre, calib)  # an .npz: its real per-sample shape is what gets recorded
        calib.workers, calib.pin_memory = _cap_workers(data.workers, loaded.notes), dev.type == "cuda"
        if calib.empty_classes:
            loaded.notes.append(f"--data: class folder(s) {', '.join(calib.empty_classes[:5])} hold no images; every "
                                "class keeps its sorted folder index as its label (as torchvision's ImageFolder numbers them)")
    if calib is not None and calib.array is not None and calib.array.ndim == 4 and calib.array.shape[1] != pre.channels:
        raise BadInput(f"{calib.source}: x has {calib.array.shape[1]} channels but the model's first conv takes {pre.channels}",
                       hint="x must be (N, C, H, W) as the model expects it (already normalised)")
    opened = Opened(loaded, pre, calib, dev, dtype=model.dtype, amp=data.amp and dev.type == "cuda")
    if data.amp and dev.type != "cuda":
        loaded.notes.append("--amp is ignored on CPU (bf16 autocast is used on CUDA only); computing in float32")
    if loaded.dtypes:
        loaded.notes.append(f"the weights are stored as {main_dtype(loaded.dtypes)}: explainfix computes in float32 and "
                            f"writes them as {opened.written_dtype}" + (" (each tensor in its own dtype; --dtype to change)"
                                                                         if model.dtype == "keep" else ""))
    opened.macs = _probe(opened)
    return opened


def check_finite_weights(model: nn.Module, source: Path) -> None:
    """Refuse weights holding NaN/inf (a parameter) or NaN (a buffer: masks may hold -inf), naming the tensor."""
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in tensors:
            if not t.is_floating_point() or t.is_meta:
                continue
            bad = ~torch.isfinite(t) if kind == "parameter" else torch.isnan(t)
            if bool(bad.any()):
                raise BadInput(f"{source}: {kind} {name!r} holds {int(bad.sum())} NaN or infinite value(s)",
                               hint="the checkpoint is damaged or training diverged; use an earlier checkpoint")


def _cap_workers(workers: int, notes: list[str]) -> int:
    """``--workers`` at most the CPUs this process may use (more only add processes that wait)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if workers > cpus:
        notes.append(f"--workers {workers} capped at {cpus}, the CPUs this process may use")
        return cpus
    return workers


def _probe(opened: Opened) -> int:
    """Run the model once on one input — counting its MACs, which every command reports — so that a wrong
    input size is a clear bad-input error, not a crash deep inside the pipeline."""
    x = opened.example(1)
    shape = "a " + "×".join(map(str, x.shape)) + " input" if isinstance(x, torch.Tensor) else "the example"
    try:
        macs = count_macs(opened.model, x)
    except Exception as e:  # noqa: BLE001 - whatever the model's forward raises
        needed = _required_inputs(opened.model)
        if len(needed) > 1:
            raise BadInput(f"the model's forward takes {len(needed)} inputs ({', '.join(needed)}): several inputs are "
                           "not supported, explainfix feeds a model one tensor",
                           hint="wrap it in a module whose forward(x) takes one tensor and builds the others, "
                                "and name that with --arch") from None
        raise BadInput(f"the model does not run on {shape}: {type(e).__name__}: {first_line(e, 200)}",
                       hint="check --input-size (and --arch / --arch-kwargs) against what the model expects") from None
    # training mode (BatchNorm re-estimation, fine-tuning, the self-check) may run branches eval mode skips
    # (Inception's auxiliary head) that need a larger input; two samples, as BatchNorm needs in training
    x2 = torch.cat([x, x]) if isinstance(x, torch.Tensor) else type(x)(torch.cat([t, t]) for t in x)
    try:
        train_outputs(opened.model, x2)
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"the model runs on {shape} in eval mode but fails in training mode: "
                       f"{type(e).__name__}: {first_line(e, 160)}",
                       hint="training mode runs other branches (e.g. an auxiliary head) that need a larger --input-size") from None
    return macs


def _required_inputs(model: nn.Module) -> list[str]:
    """Names of the forward's positional parameters without a default (what a call must pass)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def now() -> str:
    """The time written into recipes and reports: ``SOURCE_DATE_EPOCH`` when set (the reproducible-builds
    convention), so two identical runs write identical directories byte for byte; else the current UTC time."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc).isoformat()
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def evaluate_on(model: nn.Module, calib: CalibrationSet | None, batch_size: int, device: torch.device) -> dict | None:
    """Top-1 predictions and accuracy on a calibration set (None without data)."""
    from ..train.finetune import accuracy, predict

    if calib is None:
        return None
    preds, labels = predict(model, calib.batches(batch_size), device)
    return {"preds": preds, "labels": labels, "accuracy": accuracy(preds, labels), "samples": len(labels)}


def output_dir(out: Path | str | None, suffix: str, model: ModelSpec, force: bool, *inputs: Path | str | None) -> Path:
    """``-o`` (default ``<model-stem>-<suffix>/``), checked before any work (io/outdir.py): not a file, not
    an input or inside one, and an existing output only with ``--force``."""
    path = Path(out) if out is not None else default_out(model.path, suffix)
    check_output_dir(path, force, (model.path, *inputs))
    return path


def read_back_example(opened: Opened) -> torch.Tensor:
    """Two inputs for the written directory's read-back forward (io/model_dir.read_back), on the CPU."""
    return opened.example(2).to("cpu")
