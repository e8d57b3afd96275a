"""Short fine-tuning (cross-entropy on labels, or distillation from the original model) and top-1 evaluation.

>>> batches, steps = shuffled_batches(calib, batch_size=32, seed=0)
>>> res = finetune(model, batches, TrainOptions(epochs=3), steps_per_epoch=steps)
>>> [e.accuracy for e in res.epochs], res.frozen_unchanged

Defaults (documented in the CLI's ``--help`` too): SGD, momentum 0.9 (Nesterov), lr 0.01 (a distillation: 0.003,
``DISTILL_LR``), weight decay 5e-4, cosine decay of the learning rate to 0 over all steps, no augmentation, no label
smoothing. With ``--optimizer adamw``: lr 1e-3, weight decay 1e-4. After the last epoch the BatchNorm running statistics
are re-estimated by a forward pass over (up to 100 batches of) the training data
(:func:`recalibrate_batchnorm`). Parameters with ``requires_grad=False`` (the frozen
spatial filters of a fixed model) are left out of the optimizer and checked bit-identical afterwards.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from ..core import dist
from ..core.errors import BadInput, CannotProcess, InternalError
from ..core.gradients import autocast
from ..core.layout import channels_last
from .batches import Batches, shuffled_batches, tensor_batches
from .objectives import CrossEntropy, Distillation, classifier_logits

OPTIMIZERS = {  # name → (default lr, default weight decay)
    "sgd": (0.01, 5e-4),
    "adamw": (1e-3, 1e-4),
}
# a distillation's default lr where it differs from OPTIMIZERS'. SGD 0.003 against 0.01, 2 epochs on 2,000 images (session
# 18, Fashion-MNIST, five bases, 2×–10× fewer MACs, mean of seeds 0 and 1, Torch-Pruning's models beside): up in all 15
# cells of the three depthwise bases (+1.05 to +12.20), down in 7 of 10 on ResNet-18 (at most −0.86).
# benchmarks/README.md, "Session 18"
DISTILL_LR = {"sgd": 0.003}


@dataclass
class TrainOptions:
    epochs: int = 1
    optimizer: str = "sgd"
    lr: float | None = None  # None: the optimizer's default (OPTIMIZERS)
    weight_decay: float | None = None
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.0
    max_batches: int | None = None  # per epoch
    recalibrate_bn: bool = True  # re-estimate BatchNorm running stats on the training data after training
    bn_batches: int = 100  # at most this many batches for that
    amp: bool = False  # bf16 autocast of the training forward pass on CUDA (core/gradients.autocast)

    def resolved(self, distill: bool = False) -> "TrainOptions":
        """Defaults filled in; ``distill``: for a distillation (its own default lr, ``DISTILL_LR``)."""
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise BadInput(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.epochs < 1:
            raise BadInput(f"--epochs must be ≥ 1, got {self.epochs}")
        lr, wd = OPTIMIZERS[self.optimizer]
        lr = DISTILL_LR.get(self.optimizer, lr) if distill else lr
        lr = lr if self.lr is None else self.lr
        if not (lr > 0 and math.isfinite(lr)):
            raise BadInput(f"--lr must be a positive number, got {lr:g}")
        return replace(self, lr=lr, weight_decay=wd if self.weight_decay is None else self.weight_decay)


@dataclass
class TrainStep:
    """What a progress callback sees after each optimizer step (running means over the epoch)."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int | None
    loss: float
    accuracy: float | None  # vs the labels (or the teacher's top-1 where unlabeled); None for non-classifiers
    lr: float


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float | None
    samples: int
    lr: float  # at the end of the epoch (what the next step would use; 0 after the last step of a cosine schedule)
    seconds: float
    eval_accuracy: float | None = None
    lr_used: tuple[float, float] | None = None  # the rate of the epoch's first and last step (what trained it)


@dataclass
class FinetuneResult:
    options: dict
    epochs: list[EpochStats]
    trainable_params: int
    frozen_params: int
    frozen_tensors: list[str]
    frozen_unchanged: bool
    seconds: float
    eval_accuracy_before: float | None = None
    eval_accuracy_after: float | None = None

    @property
    def eval_fell(self) -> bool:
        """Training ended more than :data:`FELL` below the eval accuracy it started from (a short recovery at too
        high a rate can: benchmarks/README.md, "The recovery's learning rate")."""
        return fell(self.eval_accuracy_before, self.eval_accuracy_after)

    def to_json(self) -> dict:
        return {**asdict(self), "eval_fell": self.eval_fell}


FELL = 0.005  # half a point of eval accuracy: less is within the noise of a small eval set


def fell(before: float | None, after: float | None) -> bool:
    """``after`` more than :data:`FELL` below ``before`` (False where either was not measured)."""
    return before is not None and after is not None and after < before - FELL


# --------------------------------------------------------------------------------------- evaluation
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 predictions, labels) over all batches, in eval mode (the train flag is restored). A model
    whose output is not (N, classes) logits (segmentation, detection) has no top-1: two empty tensors."""
    was = model.training
    model.eval()
    preds, labels = [], []
    try:
        with torch.no_grad():
            for x, y in batches:
                try:
                    logits = classifier_logits(model(x.to(device)))
                except CannotProcess:
                    return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
                preds.append(logits.argmax(1).cpu())
                labels.append(y.cpu())
    finally:
        model.train(was)
    return torch.cat(preds), torch.cat(labels)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 accuracy in [0, 1]; None when any label is missing (< 0)."""
    if not len(labels) or bool((labels < 0).any()):
        return None
    return float((preds == labels).float().mean())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Share of samples where two models' top-1 predictions agree; None without predictions."""
    return float((a == b).float().mean()) if len(a) else None


# ----------------------------------------------------------------------------------------- training
def finetune(
    model: nn.Module,
    batches: Batches,
    options: TrainOptions,
    *,
    steps_per_epoch: int | None = None,
    device: torch.device | str = "cpu",
    evaluate: Callable[[nn.Module], float | None] | None = None,
    on_step: Callable[[TrainStep], None] | None = None,
    seed: int = 0,
    objective: Any = None,
    example: Any = None,
    evaluate_last: bool = True,
) -> FinetuneResult:
    """Train ``model`` in place; parameters with ``requires_grad=False`` stay as they are.

    ``batches(epoch)`` yields (x, y) (y = -1 where unlabeled); ``objective`` (train/objectives.py) is
    cross-entropy by default, or ``Distillation(teacher)``; ``evaluate(model)`` (optional) returns an
    accuracy after each epoch (``evaluate_last`` False: not after the last one, which the caller measures
    itself and fills in; one pass over the evaluation data saved). ``example`` (one input) lets the passes run channels-last where that
    computes the same (core/layout.py). Leaves the model in eval mode."""
    opt = options.resolved(distill=isinstance(objective, Distillation))
    torch.manual_seed(seed)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    if not trainable:
        raise BadInput("every parameter of the model is frozen; there is nothing to fine-tune",
                       hint="pass --no-fixed-spatial to train the fixed filters as well")
    optimizer = _make_optimizer(trainable, opt)
    limit = opt.max_batches or math.inf
    per_epoch = min(steps_per_epoch, limit) if steps_per_epoch is not None else None
    total_steps = per_epoch * opt.epochs if per_epoch else None
    schedule = _schedule(optimizer, opt, total_steps)
    objective = objective or CrossEntropy(opt.label_smoothing)
    if hasattr(objective, "to"):
        objective.to(device)
    with channels_last(model, example, enabled=example is not None):  # restored before anything is saved
        eval_before = evaluate(model) if evaluate else None
        net = _distributed(model, device)  # under torchrun: gradients averaged over the ranks each step
        history: list[EpochStats] = []
        t_start = time.perf_counter()
        for epoch in range(1, opt.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen, counted = 0.0, 0, 0, 0
            first_lr = last_lr = optimizer.param_groups[0]["lr"]
            for step, (x, y) in enumerate(batches(epoch), start=1):
                if step > limit:
                    break
                x, y = x.to(device), y.to(device)
                with autocast(device, opt.amp):
                    loss, preds, targets = objective(net, x, y)
                if not torch.isfinite(loss):
                    raise CannotProcess(f"the loss became {float(loss)} at epoch {epoch} step {step}",
                                        hint="lower --lr; nothing was written")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                last_lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                loss_sum += float(loss.detach()) * len(y)
                if preds is not None:
                    correct += int((preds == targets).sum())
                    counted += len(y)
                seen += len(y)
                if on_step:
                    on_step(TrainStep(epoch, opt.epochs, step, per_epoch, loss_sum / seen, correct / counted if counted else None,
                                      optimizer.param_groups[0]["lr"]))
            if not seen:
                raise BadInput("the training data yielded no batch")
            if dist.active():  # the epoch's numbers over every rank's batches
                loss_sum, correct, seen, counted = dist.sum_counts(loss_sum, correct, seen, counted)
                seen, counted = int(seen), int(counted)
            measured = evaluate is not None and (evaluate_last or epoch < opt.epochs)
            if opt.recalibrate_bn and (epoch == opt.epochs or measured):  # an epoch's eval accuracy is of the model
                # as it will be written (BatchNorm re-estimated), not of running statistics mid-training (22.7 % → 96.0 %)
                with torch.random.fork_rng(devices=[]):  # its train-mode passes (dropout) leave training's RNG as it was
                    recalibrate_batchnorm(model, batches(epoch), device, min(limit, opt.bn_batches))
            eval_acc = evaluate(model) if measured else None
            history.append(EpochStats(epoch, loss_sum / seen, correct / counted if counted else None, seen, optimizer.param_groups[0]["lr"],
                                      time.perf_counter() - t0, eval_acc, (first_lr, last_lr)))
    model.eval()
    named = dict(model.named_parameters())
    unchanged = all(torch.equal(named[n].detach(), v) for n, v in frozen.items())
    if not unchanged:
        raise InternalError("a frozen parameter changed during fine-tuning", hint="this is an explainfix bug; please report it")
    return FinetuneResult(
        options={**asdict(opt), "objective": objective.name, **getattr(objective, "details", {})}, epochs=history, trainable_params=sum(p.numel() for p in trainable),
        frozen_params=sum(v.numel() for v in frozen.values()), frozen_tensors=sorted(frozen),
        frozen_unchanged=unchanged, seconds=time.perf_counter() - t_start,
        eval_accuracy_before=eval_before, eval_accuracy_after=history[-1].eval_accuracy if evaluate else None,
    )


def _distributed(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when running under torchrun (else itself). Buffers
    (BatchNorm statistics) follow rank 0; parameters a forward does not reach are allowed (aux heads)."""
    if not dist.active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          device: torch.device | str = "cpu", max_batches: float = math.inf) -> int:
    """Re-estimate every BatchNorm's running mean/var as the plain average over ``batches`` (no gradients).

    A short fine-tune moves the weights more than BatchNorm's momentum (0.1) lets the running statistics follow,
    so eval-mode accuracy lags train-mode accuracy; this pass closes that gap. Returns the batches used.
    Under torchrun each rank averages its shard and the averages are combined weighted by batch count, which
    is the single-process average over all batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(batches):
                if i >= max_batches:
                    break
                model(x.to(device))
                used += 1
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    total = dist.sum_counts(used)[0] if dist.active() else used
    if dist.active() and total:
        stats = [t for m in bns for t in (m.running_mean, m.running_var)]
        with torch.no_grad():
            for t in stats:
                t.mul_(used / total if total else 0.0)
            dist.all_reduce_sum(stats)
            for m in bns:
                m.num_batches_tracked.fill_(int(total))
    return int(total)


def _make_optimizer(params: list[nn.Parameter], opt: TrainOptions) -> torch.optim.Optimizer:
    if opt.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.momentum > 0,
                               weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, opt: TrainOptions, total_steps: int | None) -> Any:
    if opt.schedule == "constant" or not total_steps:
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)


def set_spatial_frozen(model: nn.Module, frozen_names: Iterable[str], fixed: bool) -> list[str]:
    """Apply ``--fixed-spatial`` / ``--no-fixed-spatial``: freeze exactly ``frozen_names`` or unfreeze all.

    Returns the names of the parameters that are frozen afterwards."""
    names = set(frozen_names) if fixed else set()
    own = dict(model.named_parameters())
    missing = sorted(names - set(own))
    if missing:
        raise BadInput(f"the recipe freezes parameters the model does not have: {', '.join(missing[:3])}")
    for n, p in own.items():
        p.requires_grad_(n not in names)
    return sorted(names)


def spatial_param_names(model: nn.Module) -> list[str]:
    """Names of the weight (and bias) of every spatial Conv2d (kernel larger than 1×1)."""
    from ..core.model import iter_spatial_convs

    names = []
    for name, conv in iter_spatial_convs(model):
        names += [f"{name}.{p}" for p, _ in conv.named_parameters(recurse=False)]
    return names


__all__ = [
    "TrainOptions", "TrainStep", "EpochStats", "FinetuneResult", "finetune", "predict", "accuracy", "agreement",
    "shuffled_batches", "tensor_batches", "set_spatial_frozen", "spatial_param_names", "OPTIMIZERS", "DISTILL_LR", "fell",
]
