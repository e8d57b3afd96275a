"""Every option two commands share, declared once: an ``Annotated`` alias per flag (its help text and its
``--help`` panel), and the groups of flags that travel together into one job argument.

    @app.command()
    @command
    @grouped
    def prune(model: ModelArg, *, source: Source, inputs: Scoring, output: Weights, device: Device = "auto"):
        jobs.prune_job(source.spec(model, output.dtype), inputs.spec(), out=output.out, ...)

A parameter typed with a group (a dataclass of aliases) stands for all of the group's flags: :func:`grouped`
puts the fields in the command's signature, where Typer reads them, and hands the function one object. A
command that needs another default or help text for one flag subclasses the group and redeclares that field.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..jobs.bench import BenchOptions
from ..jobs.common import DataSpec, ModelSpec
from ..prune.options import PruneOptions
from ..train.finetune import DISTILL_LR, OPTIMIZERS, TrainOptions
from ..train.objectives import DistillOptions

REQUIRED: Any = ...  # a group field's default that makes its flag required (Typer's own marker)
PANELS = MODEL, DATA, BUDGET, RECOVERY, GATES, BENCH, OUTPUT, RUN = (
    "Model", "Data", "Budget", "Recovery", "Gates", "Bench", "Output", "Run")  # --help's order, after the command's own


def _float_list(values: Optional[list[str]]) -> Optional[list[float]]:
    """``--mean 0.485,0.456,0.406`` or the flag repeated once per channel → floats (one value: every channel)."""
    if not values:
        return None
    out = []
    for v in values:
        for part in str(v).split(","):
            try:
                out.append(float(part))
            except ValueError:
                raise typer.BadParameter(f"{part.strip()!r} is not a number (give a comma list, e.g. 0.485,0.456,0.406)") from None
    return out


# ------------------------------------------------------------------------------------------- model
ModelArg = Annotated[Path, typer.Argument(help="Checkpoint (.pt/.pth/.bin/.safetensors), an explainfix output directory, or "
                     "torchvision:NAME / timm:NAME (the library's pretrained weights, from its cache).", show_default=False)]
Arch = Annotated[Optional[str], typer.Option("--arch", rich_help_panel=MODEL, help="Architecture for a weights file: MODULE:CALLABLE "
                 "(torchvision.models:resnet18), FILE.py:CLASS, or a shorthand such as timm:NAME, torchvision:NAME, smp:NAME.")]
ArchKwargs = Annotated[Optional[str], typer.Option("--arch-kwargs", rich_help_panel=MODEL, help='JSON keyword arguments for --arch, e.g. \'{"num_classes": 10}\'.')]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", rich_help_panel=MODEL, help="Allow loading a pickled nn.Module (runs code from the file).")]
TrustCode = Annotated[bool, typer.Option("--trust-code", envvar="EXPLAINFIX_TRUST_CODE", rich_help_panel=MODEL,
                      help="Run the architecture code an explainfix directory names (its arch/*.py, or an import outside the allow-list). Only for directories you trust.")]
# -------------------------------------------------------------------------------------------- data
Data = Annotated[Optional[Path], typer.Option("--data", rich_help_panel=DATA, show_default=False,  # a group's default REQUIRED: required
                 help="Calibration data: class subfolders of images, a flat image folder, or an .npz with x (and y).")]
EvalData = Annotated[Optional[Path], typer.Option("--eval-data", rich_help_panel=DATA, help="Labeled held-out images (class subfolders) for accuracy.")]
HeldOutData = Annotated[Optional[Path], typer.Option("--eval-data", rich_help_panel=DATA,
                        help="Held-out images for accuracy (labeled) and agreement (default: --data).")]
InputSize = Annotated[Optional[str], typer.Option("--input-size", rich_help_panel=DATA, help="Resize images to H or HxW (default: the recipe's, else 224).")]
Mean = Annotated[Optional[list[str]], typer.Option("--mean", callback=_float_list, rich_help_panel=DATA, help="Per-channel mean for normalisation: "
                 "a comma list (0.485,0.456,0.406) or the flag once per channel; one value applies to every channel.")]
Std = Annotated[Optional[list[str]], typer.Option("--std", callback=_float_list, rich_help_panel=DATA, help="Per-channel std for normalisation, as --mean.")]
BatchSize = Annotated[int, typer.Option("--batch-size", rich_help_panel=DATA, help="Calibration batch size.")]
Batches = Annotated[Optional[int], typer.Option("--batches", rich_help_panel=DATA, help="Use at most N calibration batches (default: all).")]
Workers = Annotated[int, typer.Option("--workers", min=0, rich_help_panel=DATA, help="DataLoader processes decoding images (0: in the main process; "
                    "at most the CPUs this process may use, with a note). Memory holds a few batches, never the folder.")]
# ------------------------------------------------------------------------------------------ budget
TargetMacs = Annotated[Optional[str], typer.Option("--target-macs", rich_help_panel=BUDGET, help="MACs budget: 4x (4× fewer) or 0.25 (keep a quarter). Exclusive with --pct.")]
TargetParams = Annotated[Optional[str], typer.Option("--target-params", rich_help_panel=BUDGET, help="Parameter budget: 4x or 0.25, as --target-macs.")]
Pct = Annotated[Optional[float], typer.Option("--pct", rich_help_panel=BUDGET, help="Zero this percentage of spatial filters, in (0, 100), ranked globally (the ExplainFix reference's knob).")]
Fill = Annotated[str, typer.Option("--fill", rich_help_panel=BUDGET, help="Filter criteria: none | fillzero | restore (zeroed kernels in surviving channels get their original values back; reset is an alias).")]
Criterion = Annotated[Optional[str], typer.Option("--criterion", rich_help_panel=BUDGET, help="channel | saliency | magnitude. Default: channel with a budget; else saliency with --data, magnitude without.")]
Rank = Annotated[str, typer.Option("--rank", rich_help_panel=BUDGET, help="Channel criterion: auto (default: per-cost up to 8× fewer, l1-per-layer beyond; on networks with depthwise convs sensitivity up to 2×, l1-per-layer beyond) | per-cost (saliency per MAC, or per parameter with --target-params, removed) | saliency | l1-per-layer (the same fraction from every layer, its channels by Σ|w|: recovers better after fine-tuning beyond 8×) | saliency-per-layer (the same fraction from every layer, its channels by saliency per cost; needs --data) | sensitivity (each layer cut to the same output loss per MAC, measured on --data by replacing its least salient channels with their mean; its channels by saliency per cost; needs --data).")]
Floor = Annotated[float, typer.Option("--floor", rich_help_panel=BUDGET, help="Channel criterion: every layer keeps at least this fraction of its channels.")]
RoundTo = Annotated[Optional[str], typer.Option("--round-to", rich_help_panel=BUDGET, help="Keep every pruned layer's channel count a multiple of N, or auto (the default with a budget: multiples of 8 for layers that keep ≥ 64 channels, any count below): faster kernels, still exact.")]
Refit = Annotated[Optional[bool], typer.Option("--refit/--no-refit", rich_help_panel=RECOVERY, help="Refit, by least squares on --data, the layers that read removed channels (default: on with a budget and data).")]
RecalibrateBn = Annotated[Optional[bool], typer.Option("--recalibrate-bn/--no-recalibrate-bn", rich_help_panel=RECOVERY, help="Re-estimate BatchNorm statistics on --data after pruning (default: on with a budget and data).")]
AllowInexact = Annotated[bool, typer.Option("--allow-inexact-folds", rich_help_panel=BUDGET, help="Also remove channels whose constant would fold into a zero-padded conv (differs at the borders; the report gives the distance and never says passed).")]
# ---------------------------------------------------------------------------------------- recovery
FinetuneEpochs = Annotated[int, typer.Option("--finetune-epochs", rich_help_panel=RECOVERY, help="Epochs of fine-tuning on --data after each prune (each round or point; 0 = none).")]
Epochs = Annotated[int, typer.Option("--epochs", rich_help_panel=RECOVERY, help="Passes over --data.")]
_LR_DEFAULTS = ", ".join(f"{lr:g} for {name}" + (f" ({DISTILL_LR[name]:g} with --distill)" if name in DISTILL_LR else "")
                         for name, (lr, _) in OPTIMIZERS.items())
Lr = Annotated[Optional[float], typer.Option("--lr", rich_help_panel=RECOVERY, help=f"Learning rate (default: {_LR_DEFAULTS}), cosine-decayed to 0.")]
Optimizer = Annotated[str, typer.Option("--optimizer", rich_help_panel=RECOVERY, help="sgd (momentum 0.9 Nesterov, weight decay 5e-4) | adamw (weight decay 1e-4).")]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", rich_help_panel=RECOVERY, help="Override the optimizer's default weight decay.")]
Distill = Annotated[bool, typer.Option("--distill", rich_help_panel=RECOVERY, help="Learn from the original model's outputs (KL on logits softened by "
                    "--temperature, plus cross-entropy where labels exist; MSE for non-classifiers). Works from an unlabeled folder.")]
Temperature = Annotated[float, typer.Option("--temperature", rich_help_panel=RECOVERY, help="Distillation temperature T (logits divided by T; the KL term is scaled by T²).")]
DistillAlpha = Annotated[float, typer.Option("--distill-alpha", rich_help_panel=RECOVERY, help="Weight of the distillation term where a label exists "
                         "(the rest is cross-entropy); unlabeled samples use distillation only.")]
# ------------------------------------------------------------------------------------ gates, bench
MaxAccuracyDrop = Annotated[Optional[float], typer.Option("--max-accuracy-drop", rich_help_panel=GATES, help="Gate: accuracy may drop at most PTS percentage points.")]
MinAgreement = Annotated[Optional[float], typer.Option("--min-agreement", rich_help_panel=GATES, help="Gate: top-1 agreement with the original ≥ F (a fraction, e.g. 0.98).")]
Atol = Annotated[float, typer.Option("--atol", rich_help_panel=GATES, help="ONNX vs torch: an element fails where abs err > atol AND rel err > rtol.")]
Rtol = Annotated[float, typer.Option("--rtol", rich_help_panel=GATES, help="ONNX vs torch relative tolerance (see --atol).")]
Opset = Annotated[int, typer.Option("--opset", rich_help_panel=OUTPUT, help="ONNX opset (≥ 18).")]

Quantize = Annotated[Optional[str], typer.Option("--quantize", rich_help_panel=OUTPUT, metavar="TYPE", show_default=False,
                    help="Also make INT8 models (TYPE: int8) by the quantize command's own steps, checked against their FP32 "
                    "ONNX and timed (compress: model.int8.onnx, accuracy-controlled; sweep: INT8 points).")]
Compare = Annotated[Optional[str], typer.Option("--compare", rich_help_panel=OUTPUT, metavar="PEER", show_default=False,
                   help="Also prune each budget with PEER (torch-pruning: Torch-Pruning L1, one uniform ratio), recover, "
                   "evaluate and time it like explainfix's point, for the table and tradeoff.png (needs the compare "
                   "extra: pip install 'explainfix-cli[compare]').")]
MaxFloat = Annotated[int, typer.Option("--max-float", rich_help_panel=GATES,
                     help="INT8 accuracy control: keep at most N nodes (layers, and the Mul/Add/Softmax between them) in float to meet the gates (0: off).")]
Bench = Annotated[bool, typer.Option("--bench/--no-bench", rich_help_panel=BENCH, help="Measure onnxruntime latency (batch 1) of the original and every result.")]
Threads = Annotated[int, typer.Option("--threads", rich_help_panel=BENCH, help="onnxruntime intra-op threads (fixed) for the latency measurement.")]
TimingThreads = Annotated[int, typer.Option("--threads", rich_help_panel=BENCH, help="onnxruntime intra-op threads (fixed) for the latency measurement and any INT8 check.")]
BenchIters = Annotated[int, typer.Option("--bench-iters", rich_help_panel=BENCH, help="Timed runs per model (and round).")]
# ------------------------------------------------------------------------------------- output, run
Out = Annotated[Optional[Path], typer.Option("-o", "--out", rich_help_panel=OUTPUT, help="Output directory.")]
Force = Annotated[bool, typer.Option("--force", rich_help_panel=OUTPUT, help="Overwrite an existing output directory.")]
WeightDtype = Annotated[str, typer.Option("--dtype", rich_help_panel=OUTPUT, help="Dtype of the written weights: keep (each tensor as loaded, e.g. "
                        "an fp16 checkpoint stays fp16), float32, float16 or bfloat16. Work is done in float32.")]
Json = Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT, help="Print one JSON document on stdout (human output goes to stderr).")]
Device = Annotated[str, typer.Option("--device", rich_help_panel=RUN, help="auto | cpu | cuda | cuda:N (auto = CUDA when available).")]
SEED_MAX = 2**32 - 1  # numpy's and every generator's range; torch alone would take up to 2**64 - 1
Seed = Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, rich_help_panel=RUN, help=f"Seed for everything random (0 to {SEED_MAX}).")]
Amp = Annotated[bool, typer.Option("--amp", rich_help_panel=RUN, help="bf16 autocast for the saliency pass and fine-tuning on CUDA (scores and "
                "weights stay float32; the self-check runs in float32). Ignored on CPU, with a note.")]
Debug = Annotated[bool, typer.Option("--debug", rich_help_panel=RUN, help="Show full tracebacks (also EXPLAINFIX_DEBUG=1).")]


# ------------------------------------------------------------------------------------------- groups
@dataclass
class Source:
    """How MODEL is built: ``--arch``, ``--arch-kwargs``, ``--trust-pickle``, ``--trust-code``."""

    arch: Arch = None
    arch_kwargs: ArchKwargs = None
    trust_pickle: TrustPickle = False
    trust_code: TrustCode = False

    def spec(self, path: Path, dtype: str = "keep") -> ModelSpec:
        return ModelSpec(path, self.arch, self.arch_kwargs, self.trust_pickle, self.trust_code, dtype)


@dataclass
class Images:
    """``--data`` (optional) and how its images become inputs."""

    data: Data = None
    input_size: InputSize = None
    mean: Mean = None
    std: Std = None
    batch_size: BatchSize = 32

    def spec(self) -> DataSpec:
        return DataSpec(self.data, self.input_size, self.mean, self.std, self.batch_size)


@dataclass
class CheckImages(Images):
    """export and verify: ONNX against torch on up to 64 inputs, 16 at a time."""

    batch_size: BatchSize = 16


@dataclass
class Calibration(Images):
    """A calibration pass: at most ``--batches``, decoded by ``--workers`` processes."""

    batches: Batches = None
    workers: Workers = 0

    def spec(self) -> DataSpec:
        return replace(super().spec(), batches=self.batches, workers=self.workers)


@dataclass
class Scoring(Calibration):
    """A calibration pass that may run under bf16 autocast (``--amp``)."""

    amp: Amp = False

    def spec(self) -> DataSpec:
        return replace(super().spec(), amp=self.amp)


@dataclass
class Tuning(Scoring):
    """compress and sweep: ``--data`` required (saliency, then fine-tuning), ``--eval-data`` for accuracy."""

    data: Data = REQUIRED
    eval_data: HeldOutData = None


@dataclass
class Budget:
    """How much goes: ``--target-macs`` | ``--target-params`` | ``--pct`` (with ``--fill``)."""

    target_macs: TargetMacs = None
    target_params: TargetParams = None
    pct: Pct = None
    fill: Fill = "none"


@dataclass
class Ranking:
    """Which channels go first, and what stays: criterion, rank, floor, rounding, BatchNorm, inexact folds."""

    criterion: Criterion = None
    rank: Rank = "auto"
    floor: Floor = 0.1
    round_to: RoundTo = None
    recalibrate_bn: RecalibrateBn = None
    refit: Refit = None
    allow_inexact_folds: AllowInexact = False

    def options(self, budget: Budget | None = None) -> PruneOptions:
        """The flags → the one options object the jobs and the Python API validate."""
        return PruneOptions(**dataclasses.asdict(self), **(dataclasses.asdict(budget) if budget else {}))


@dataclass
class Distillation:
    """``--distill`` with its temperature and weight → DistillOptions, or None without ``--distill``."""

    distill: Distill = False
    temperature: Temperature = 4.0
    distill_alpha: DistillAlpha = 0.9

    def options(self) -> DistillOptions | None:
        return DistillOptions(self.temperature, self.distill_alpha) if self.distill else None


@dataclass
class Recovery(Distillation):
    """compress and sweep: fine-tune (or distill) every pruned model ``--finetune-epochs`` epochs."""

    finetune_epochs: FinetuneEpochs = 0
    lr: Lr = None
    optimizer: Optimizer = "sgd"

    def train(self) -> TrainOptions:
        return TrainOptions(optimizer=self.optimizer, lr=self.lr)


@dataclass
class Tolerance:
    """ONNX against torch: an element fails where abs err > ``--atol`` and rel err > ``--rtol``."""

    atol: Atol = 1e-4
    rtol: Rtol = 1e-3


@dataclass
class Gates(Tolerance):
    """compress's quality gates, besides the ONNX tolerance."""

    max_accuracy_drop: MaxAccuracyDrop = None
    min_agreement: MinAgreement = None


@dataclass
class Timing:
    """onnxruntime latency of the original and the result(s), for compress, sweep and quantize."""

    bench: Bench = True
    threads: TimingThreads = 2
    bench_iters: BenchIters = 50

    def options(self) -> BenchOptions:
        return BenchOptions(**dataclasses.asdict(self))


@dataclass
class Output:
    """``-o`` and ``--force``."""

    out: Out = None
    force: Force = False


@dataclass
class Weights(Output):
    """An output holding weights: also ``--dtype``."""

    dtype: WeightDtype = "keep"


# ------------------------------------------------------------------------------------- the decorator
EVERY_COMMAND = {"json_out": (Json, False), "debug": (Debug, False)}  # docs/CLI.md: every command has --json, --debug


def grouped(fn: Callable) -> Callable:
    """Typer sees every field of every group-typed parameter of ``fn`` (and ``--json``/``--debug``, which every
    command has); ``fn`` gets one object per group, and ``json_out``/``debug`` only if it names them."""
    hints = typing.get_type_hints(fn, include_extras=True)
    signature = inspect.signature(fn)
    groups: dict[str, type] = {}
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        kind = hints.get(p.name, p.annotation)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            groups[p.name] = kind
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=t)
                       for f, t in _fields(kind)]
        else:
            params.append(p.replace(annotation=kind))
    added = [name for name in EVERY_COMMAND if name not in signature.parameters]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=EVERY_COMMAND[n][1], annotation=EVERY_COMMAND[n][0])
               for n in added]
    params.sort(key=_panel_order)  # stable: a panel keeps its flags in the order they are declared
    names = [p.name for p in params]
    if len(names) != len(set(names)):
        raise TypeError(f"{fn.__name__}: a flag is declared twice: {sorted(n for n in names if names.count(n) > 1)}")

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        for name in added:
            kwargs.pop(name, None)
        return fn(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _panel_order(p: inspect.Parameter) -> int:
    """Arguments first, then the command's own options (no panel), then the panels in :data:`PANELS` order."""
    if p.kind is not inspect.Parameter.KEYWORD_ONLY:
        return -2
    infos = [a for a in getattr(p.annotation, "__metadata__", ()) if isinstance(a, typer.models.OptionInfo)]
    panel = infos[0].rich_help_panel if infos else None
    return PANELS.index(panel) if panel in PANELS else -1


def _fields(group: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(group, include_extras=True)
    return [(f, hints[f.name]) for f in dataclasses.fields(group)]
