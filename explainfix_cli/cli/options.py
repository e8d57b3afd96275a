"""Options shared by several commands (one help text per flag); command-specific ones sit with their command."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelArg = Annotated[Path, typer.Argument(help="Checkpoint (.pt/.pth/.bin/.safetensors) or an explainfix output directory.", show_default=False)]
Arch = Annotated[Optional[str], typer.Option("--arch", help="Architecture for a weights file: MODULE:CALLABLE (torchvision.models:resnet18), "
                                               "path/to/file.py:ClassName, or timm:NAME / torchvision:NAME / smp:NAME.")]
ArchKwargs = Annotated[Optional[str], typer.Option("--arch-kwargs", help='JSON keyword arguments for --arch, e.g. \'{"num_classes": 10}\'.')]
TrustCode = Annotated[bool, typer.Option("--trust-code", envvar="EXPLAINFIX_TRUST_CODE",
                                         help="Run the architecture code an explainfix directory names (its arch/*.py, or an import outside the allow-list). Only for directories you trust.")]
WeightDtype = Annotated[str, typer.Option("--dtype", help="Dtype of the written weights: keep (each tensor as loaded, e.g. "
                                                       "an fp16 checkpoint stays fp16), float32, float16 or bfloat16. Work is done in float32.")]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled nn.Module (runs code from the file).")]
Data = Annotated[Optional[Path], typer.Option("--data", help="Calibration data: class subfolders of images, a flat image folder, or an .npz with x (and y).")]
InputSize = Annotated[Optional[str], typer.Option("--input-size", help="Resize images to H or HxW (default: the recipe's, else 224).")]
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


Mean = Annotated[Optional[list[str]], typer.Option("--mean", callback=_float_list, help="Per-channel mean for normalisation: "
                 "a comma list (0.485,0.456,0.406) or the flag once per channel; one value applies to every channel.")]
Std = Annotated[Optional[list[str]], typer.Option("--std", callback=_float_list, help="Per-channel std for normalisation, as --mean.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Calibration batch size.")]
Batches = Annotated[Optional[int], typer.Option("--batches", help="Use at most N calibration batches (default: all).")]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader processes decoding images (0: in the main process; "
                                                   "at most the CPUs this process may use, with a note). Memory holds a few batches, never the folder.")]
Amp = Annotated[bool, typer.Option("--amp", help="bf16 autocast for the saliency pass and fine-tuning on CUDA (scores and "
                                              "weights stay float32; the self-check runs in float32). Ignored on CPU, with a note.")]
Out = Annotated[Optional[Path], typer.Option("-o", "--out", help="Output directory.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite an existing output directory.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N (auto = CUDA when available).")]
SEED_MAX = 2**32 - 1  # numpy's and every generator's range; torch alone would take up to 2**64 - 1
Seed = Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help=f"Seed for everything random (0 to {SEED_MAX}).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (human output goes to stderr).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show full tracebacks (also EXPLAINFIX_DEBUG=1).")]
Atol = Annotated[float, typer.Option("--atol", help="ONNX vs torch: an element fails where abs err > atol AND rel err > rtol.")]
Rtol = Annotated[float, typer.Option("--rtol", help="ONNX vs torch relative tolerance (see --atol).")]
Fill = Annotated[str, typer.Option("--fill", help="Filter criteria: none | fillzero | restore (zeroed kernels in surviving channels get their original values back; reset is an alias).")]

Epochs = Annotated[int, typer.Option("--epochs", help="Passes over --data.")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: 0.01 for sgd, 1e-3 for adamw), cosine-decayed to 0.")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="sgd (momentum 0.9 Nesterov, weight decay 5e-4) | adamw (weight decay 1e-4).")]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", help="Override the optimizer's default weight decay.")]
EvalData = Annotated[Optional[Path], typer.Option("--eval-data", help="Labeled held-out images (class subfolders) for accuracy.")]
Distill = Annotated[bool, typer.Option("--distill", help="Learn from the original model's outputs (KL on logits softened by "
                                       "--temperature, plus cross-entropy where labels exist; MSE for non-classifiers). "
                                       "Works from an unlabeled folder.")]
Temperature = Annotated[float, typer.Option("--temperature", help="Distillation temperature T (logits divided by T; the KL term is scaled by T²).")]
DistillAlpha = Annotated[float, typer.Option("--distill-alpha", help="Weight of the distillation term where a label exists "
                                             "(the rest is cross-entropy); unlabeled samples use distillation only.")]
