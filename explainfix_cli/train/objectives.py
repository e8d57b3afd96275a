"""What fine-tuning minimises: cross-entropy on labels, or distillation from the original model.

>>> finetune(student, batches, TrainOptions(epochs=2), objective=Distillation(teacher, DistillOptions()))

An objective is called as ``objective(model, x, y) → (loss, preds, targets)``; ``preds``/``targets`` (top-1
of the model, and the labels or the teacher's top-1) feed the running train accuracy, or are None for
outputs that are not (N, classes) logits.

Distillation (Hinton et al. 2015): the teacher runs in eval mode without gradients. For classifier logits
the loss is ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)``; samples without a label
(y = -1, e.g. an unlabeled folder) get the KL term only. Defaults: T = 4, alpha = 0.9. Any other output (dense
maps, dicts, tuples) is matched by the mean squared error over every tensor it holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import BadInput, CannotProcess
from ..core.model import output_tensors

Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def classifier_logits(out: object) -> torch.Tensor:
    """The (N, classes) logits of a classifier's output (the first tensor of a dict/tuple); else CannotProcess."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CannotProcess(f"cross-entropy and accuracy need a classifier with (N, classes) logits; the model returns {shape}",
                            hint="--distill trains any model against the original's outputs")
    return out


class CrossEntropy:
    """Supervised fine-tuning: every sample needs a label in [0, classes)."""

    name = "cross-entropy"
    needs_labels = True
    details: dict = {}

    def __init__(self, label_smoothing: float = 0.0):
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Result:
        if bool((y < 0).any()):
            raise BadInput("fine-tuning with cross-entropy needs every sample labeled (found a label < 0)",
                           hint="use class subfolders, or --distill")
        logits = classifier_logits(model(x))
        if int(y.max()) >= logits.shape[1]:
            raise BadInput(f"label {int(y.max())} but the model has {logits.shape[1]} outputs",
                           hint="the data's class folders must match the model's classes (sorted folder index = class)")
        return self.loss(logits, y), logits.detach().argmax(1), y


@dataclass
class DistillOptions:
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term where a label exists (1 = ignore labels)

    def resolved(self) -> "DistillOptions":
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise BadInput(f"--temperature must be a positive number, got {self.temperature:g}")
        if not 0 <= self.alpha <= 1:
            raise BadInput(f"--distill-alpha is a weight in [0, 1], got {self.alpha:g}")
        return self


_EVAL_ALWAYS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.modules.dropout._DropoutNd)


def _same_shapes(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))


class Distillation:
    """Learn from a teacher's outputs (KL on softened logits for classifiers, MSE otherwise)."""

    name = "distillation"
    needs_labels = False

    def __init__(self, teacher: nn.Module, options: DistillOptions | None = None):
        self.opts = (options or DistillOptions()).resolved()
        self.details = {"temperature": self.opts.temperature, "alpha": self.opts.alpha}
        self.teacher = teacher.eval()
        self.mirror = False  # run the teacher with training-mode heads (see __call__)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def _teacher(self, x: torch.Tensor, train_heads: bool) -> list[torch.Tensor]:
        with torch.no_grad():
            if train_heads:
                self.teacher.train()
                for m in self.teacher.modules():
                    if isinstance(m, _EVAL_ALWAYS) or type(m).__name__ in ("DropPath", "StochasticDepth"):
                        m.eval()
            try:
                out = self.teacher(x)
            finally:
                self.teacher.eval()
        return [t for t in output_tensors(out) if t.is_floating_point()]

    def to(self, device: torch.device | str) -> "Distillation":
        self.teacher.to(device)
        return self

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Result:
        s_out = model(x)
        s_list = [t for t in output_tensors(s_out) if t.is_floating_point()]
        t_list = self._teacher(x, model.training and self.mirror)
        if model.training and not self.mirror and not _same_shapes(t_list, s_list):
            # a head that returns other outputs in training mode (a detection head's raw maps): run the teacher
            # with its training-mode structure too, its normalisation and dropout still in eval mode
            self.mirror = True
            t_list = self._teacher(x, True)
        if not _same_shapes(t_list, s_list):
            raise CannotProcess("the teacher's outputs and the model's differ in number or shape; cannot distill",
                                hint="the teacher must be the model before pruning (same outputs)")
        if not t_list:
            raise CannotProcess("the model returns no floating-point tensor to distill")
        if len(s_list) == 1 and s_list[0].ndim == 2:
            return self._logits(s_list[0], t_list[0], y)
        loss = sum(F.mse_loss(s, t) for s, t in zip(s_list, t_list)) / len(s_list)
        return loss, None, None

    def _logits(self, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> Result:
        T, alpha = self.opts.temperature, self.opts.alpha
        kl = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="none", log_target=True).sum(1)
        labeled = y >= 0
        per_sample = kl * (T * T)
        if bool(labeled.any()) and alpha < 1:
            if int(y.max()) >= s.shape[1]:
                raise BadInput(f"label {int(y.max())} but the model has {s.shape[1]} outputs",
                               hint="the data's class folders must match the model's classes (sorted folder index = class)")
            ce = F.cross_entropy(s[labeled], y[labeled], reduction="none")
            per_sample = per_sample.clone()
            per_sample[labeled] = alpha * per_sample[labeled] + (1 - alpha) * ce
        targets = torch.where(labeled, y, t.argmax(1))
        return per_sample.mean(), s.detach().argmax(1), targets


__all__ = ["CrossEntropy", "Distillation", "DistillOptions", "classifier_logits"]
