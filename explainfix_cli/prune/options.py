"""Every prune setting, validated in one place: the CLI, the jobs and the Python API share
:class:`PruneOptions`, so a bad value gives the same one-line error everywhere.

A *budget* (``target_macs`` / ``target_params``) is what a user names: a fraction of the original kept
(``0.25``) or a reduction factor (``4x``). ``pct`` is the ExplainFix reference's knob: the percentage of
spatial filters zeroed (filter criteria only). Exactly one of them is given.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from ..core.errors import BadInput
from ..core.model import has_depthwise

FILTER_CRITERIA = ("saliency", "magnitude")
CRITERIA = ("channel", *FILTER_CRITERIA)
RANKS = ("auto", "per-cost", "saliency", "l1-per-layer", "saliency-per-layer", "sensitivity")
PER_LAYER_RANKS = ("l1-per-layer", "saliency-per-layer")  # the same fraction from every layer
MAGNITUDE_RANKS = ("l1-per-layer",)  # ranks that score channel groups by Σ|w| even when data is given
SALIENCY_RANKS = ("saliency", "saliency-per-layer", "sensitivity")  # ranks that read the data: they need it
# --rank auto: the saliency per cost (per-cost) while the budget keeps at least this fraction, the same fraction
# from every layer by Σ|w| (l1-per-layer) beyond it. Chosen on one base (Fashion-MNIST ResNet-18, 2 epochs, two
# seeds, 2-epoch fine-tune: per-cost ahead at 4×, level at 6×, 1.0 points behind at 10×; measured on MACs) and reported unchanged
# on the others: benchmarks/README.md, "Every budget, four bases".
AUTO_UNIFORM_BELOW = 1 / 8
# On a network with depthwise convolutions (MobileNet-like) auto never ranks across layers by the score alone: there
# per-cost cut the high-resolution expansion/depthwise pairs to --floor (MobileNetV2, 4×: 4 / 16 points behind
# Torch-Pruning after fine-tuning / distillation) or the last stage and head (MobileNetV3-Small, 2×: its residual
# stream 96 → 12, and fine-tuning then fell below one-shot). Up to this fraction kept (2×) every layer is cut to the
# same measured loss per MAC, its channels by saliency (sensitivity; one-shot, mean of two seeds: MobileNetV2 87.92
# → 90.24, MobileNetV3-Small 85.34 → 89.86, held-out MNASNet-0.5 72.10 → 77.20; benchmarks/README.md, "Session
# 19"); beyond it every layer
# loses the same fraction, its channels by Σ|w| (l1-per-layer: chosen on MobileNetV3-Small, two seeds, saliency
# behind from 3× after distillation; benchmarks/README.md, "The saliency inside each layer").
AUTO_DEPTHWISE_SENSITIVITY_FROM = 1 / 2
FILL_METHODS = ("none", "fillzero", "restore")
FILL_ALIASES = {"reset": "restore"}
BUDGET_TOLERANCE = 0.02


def parse_target(value: str | float | None, flag: str) -> float | None:
    """``0.25`` (fraction kept, in (0, 1)) or ``4x`` (reduction factor, > 1) → the fraction kept."""
    if value is None:
        return None
    text = str(value).strip().lower()
    hint = f"e.g. {flag} 4x (4× fewer) or {flag} 0.25 (keep a quarter)"
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x?)", text)
    if m is None:
        raise BadInput(f"{flag} must be a fraction in (0, 1) or a factor like 4x, got {value!r}", hint=hint)
    number, factor = float(m.group(1)), bool(m.group(2))
    if factor:
        if not (math.isfinite(number) and number > 1):
            raise BadInput(f"{flag} {value}: a reduction factor must be > 1", hint=hint)
        return 1.0 / number
    if not 0 < number < 1:
        raise BadInput(f"{flag} {value}: a fraction kept must be in (0, 1)", hint=hint)
    return number


def parse_round_to(value: str | int | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadInput(f"--round-to must be a positive integer or auto, got {value!r}") from None
    if n < 1:
        raise BadInput(f"--round-to must be ≥ 1, got {n}")
    return n


@dataclass(frozen=True)
class PruneOptions:
    pct: float | None = None
    target_macs: str | float | None = None
    target_params: str | float | None = None
    criterion: str | None = None  # None: channel with a budget; else saliency with data, magnitude without
    rank: str = "auto"
    fill: str = "none"
    round_to: int | str | None = None  # None: "auto" with a budget (channels/plan.auto_multiple), 1 with --pct
    allow_inexact_folds: bool = False
    floor: float = 0.1  # fraction of every producer's channels that stays (channel criterion)
    recalibrate_bn: bool | None = None  # None: on with a budget and data
    refit: bool | None = None  # least-squares refit of the layers reading removed channels; None: on with a budget and data
    resolved_for: bool | None = field(default=None, repr=False, compare=False)  # set by resolved(): has_data
    depthwise: bool = field(default=False, repr=False)  # the model has depthwise convs: set by with_model(), not by hand

    # validated once: resolved() returns an already resolved instance as it is

    @property
    def budget(self) -> tuple[str, float] | None:
        """("macs" | "params", fraction kept), or None for --pct."""
        if self.target_macs is not None:  # parsed, so options not yet resolved ("10x") answer too
            return "macs", parse_target(self.target_macs, "--target-macs")
        if self.target_params is not None:
            return "params", parse_target(self.target_params, "--target-params")
        return None

    @property
    def ranking(self) -> tuple[str, str]:
        """(the rank the channel criterion uses, why): ``--rank`` as given, or what ``auto`` chose for the budget
        and the model (call :meth:`with_model` first: on a depthwise network auto differs)."""
        if self.rank != "auto":
            return self.rank, "--rank " + self.rank
        if self.budget is None:
            return "per-cost", "auto: no budget"
        metric, frac = self.budget
        name = "MACs" if metric == "macs" else "params"
        if self.depthwise:
            if self.resolved_for is False:  # no data: every group is scored by Σ|w|
                return "l1-per-layer", (f"auto: {1 / frac:.3g}× fewer {name} on a network with depthwise convolutions "
                                        "and no --data: the same fraction from every layer, its channels by Σ|w|")
            if frac >= AUTO_DEPTHWISE_SENSITIVITY_FROM:
                return "sensitivity", (f"auto: {1 / frac:.3g}× fewer {name} on a network with depthwise convolutions: "
                                       "every layer cut to the same measured loss per cost, its channels by saliency "
                                       f"(up to {1 / AUTO_DEPTHWISE_SENSITIVITY_FROM:g}×)")
            return "l1-per-layer", (f"auto: {1 / frac:.3g}× fewer {name} on a network with depthwise convolutions: the "
                                    f"same fraction from every layer, its channels by Σ|w| (beyond "
                                    f"{1 / AUTO_DEPTHWISE_SENSITIVITY_FROM:g}×, where that recovers better)")
        limit = 1 / AUTO_UNIFORM_BELOW
        if frac >= AUTO_UNIFORM_BELOW:
            scored = "; no --data: Σ|w| per cost" if self.resolved_for is False else ""
            return "per-cost", f"auto: {1 / frac:.3g}× fewer {name} is within {limit:g}×, where ranking by cost leads{scored}"
        return "l1-per-layer", (f"auto: {1 / frac:.3g}× fewer {name} is beyond {limit:g}×, where the same fraction "
                                "from every layer recovers better")

    @property
    def needs_saliency(self) -> bool:
        """Whether these options, at their budget, rank by the saliency (a gradient pass over the data); not when
        the rank is Σ|w| (``l1-per-layer``, pinned or chosen by ``auto``), so the gradient pass can be skipped."""
        return self.may_need_saliency and (self.criterion != "channel" or self.ranking[0] not in MAGNITUDE_RANKS)

    @property
    def may_need_saliency(self) -> bool:
        """Whether these options rank by the saliency at some budget (what a pruner that may be asked for any
        budget computes): not when the rank is pinned to Σ|w|."""
        if self.criterion != "channel":
            return self.criterion == "saliency"  # the paper's filter saliency; magnitude needs no data
        return self.rank not in MAGNITUDE_RANKS

    def with_model(self, model) -> PruneOptions:
        """These options for ``model``: where ``--rank auto`` switches depends on whether it has depthwise
        convolutions (a conv whose groups are its input channels, more than one)."""
        return replace(self, depthwise=has_depthwise(model))

    def resolved(self, has_data: bool) -> PruneOptions:
        """Validated, with every default filled in (raises BadInput with one line); once: a resolved instance
        (for the same ``has_data``) is returned as it is."""
        if self.resolved_for is has_data:
            return self
        macs = parse_target(self.target_macs, "--target-macs")
        params = parse_target(self.target_params, "--target-params")
        targets = sum(v is not None for v in (self.pct, macs, params))
        if targets > 1:
            raise BadInput("give one of --pct, --target-macs and --target-params", hint="e.g. --target-macs 4x")
        if targets == 0:
            raise BadInput("say how much to prune: --target-macs (e.g. 4x), --target-params, or --pct",
                           hint="e.g. --target-macs 4x (4× fewer MACs) or --pct 70 (zero 70 % of spatial filters)")
        if self.pct is not None and not (isinstance(self.pct, (int, float)) and 0 < self.pct < 100):
            raise BadInput(f"--pct must be in (0, 100), got {self.pct}", hint="e.g. --pct 50")
        budget = macs is not None or params is not None
        criterion = self.criterion or ("channel" if budget else ("saliency" if has_data else "magnitude"))
        if criterion not in CRITERIA:
            raise BadInput(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if criterion == "saliency" and not has_data:
            raise BadInput("--criterion saliency needs calibration data", hint="pass --data PATH, or use --criterion magnitude")
        if self.rank not in RANKS:
            raise BadInput(f"--rank must be one of {', '.join(RANKS)}, got {self.rank!r}")
        if self.rank in SALIENCY_RANKS and criterion == "channel" and not has_data:
            raise BadInput(f"--rank {self.rank} ranks by the saliency, which needs calibration data",
                           hint="pass --data PATH, or use --rank l1-per-layer")
        fill = FILL_ALIASES.get(self.fill, self.fill)
        if fill not in FILL_METHODS:
            raise BadInput(f"--fill must be one of {', '.join(FILL_METHODS)}, got {self.fill!r}")
        if fill != "none" and criterion == "channel":
            raise BadInput(f"--fill {fill} applies to zeroed kernels; the channel criterion removes whole channels and zeroes none",
                           hint="use --criterion saliency with --fill restore")
        round_to = parse_round_to(self.round_to)
        if round_to is None:
            round_to = "auto" if budget else 1
        if not (isinstance(self.floor, (int, float)) and 0 <= self.floor < 1):
            raise BadInput(f"--floor must be in [0, 1), got {self.floor}")
        recal = self.recalibrate_bn if self.recalibrate_bn is not None else (budget and has_data)
        if recal and not has_data:
            raise BadInput("--recalibrate-bn needs calibration data", hint="pass --data PATH")
        refit = self.refit if self.refit is not None else (criterion == "channel" and has_data)
        if refit and not has_data:
            raise BadInput("--refit needs calibration data", hint="pass --data PATH")
        if refit and criterion != "channel":
            raise BadInput("--refit applies to a budget (the channel criterion)", hint="e.g. --target-macs 2x --refit")
        return replace(self, target_macs=macs, target_params=params, criterion=criterion, fill=fill,
                       round_to=round_to, recalibrate_bn=bool(recal), refit=bool(refit), resolved_for=has_data)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("resolved_for", "depthwise")}
        if self.criterion == "channel":
            out["rank_used"], out["rank_why"] = self.ranking
        return out
