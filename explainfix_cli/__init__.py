"""explainfix: ExplainFix channel pruning, ExplainSteer spectra and fixed spatial filters for real CNNs.

The Python API needs neither typer nor rich; importing it has no side effects.

>>> import explainfix_cli as ef
>>> ef.channelprune(model, 90, loader=loader, device="cpu")      # in place, checked
>>> ef.load("model-pruned/")                                      # rebuild a pruned model, no pickle
"""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import load, load_model, save_model_dir
from .errors import BadInput, CannotProcess, CheckFailed, ExplainFixError, UnsupportedOp
from .prune import channelprune, fill_zero_initialization, prune_model
from .saliency import (
    get_spatial_filter_magnitude,
    get_spatial_filter_saliency,
    zero_least_salient_spatial_filters,
)

__all__ = [
    "__version__", "load", "load_model", "save_model_dir", "channelprune", "prune_model",
    "fill_zero_initialization", "get_spatial_filter_saliency", "get_spatial_filter_magnitude",
    "zero_least_salient_spatial_filters", "ExplainFixError", "BadInput", "CannotProcess", "CheckFailed",
    "UnsupportedOp",
]
