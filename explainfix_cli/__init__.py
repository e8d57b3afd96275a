"""explainfix: ExplainFix channel pruning, ExplainSteer spectra and fixed spatial filters for real CNNs.

The Python API needs neither typer nor rich; importing it has no side effects.

>>> import explainfix_cli as ef
>>> ef.channelprune(model, 90, loader=loader, device="cpu")      # in place, checked
>>> ef.load("model-pruned/")                                      # rebuild a pruned model, no pickle
"""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import load, load_model, save_model_dir
from .explain import (
    explain_model,
    explainsteer_layerwise_with_saliency,
    explainsteer_layerwise_without_saliency,
)
from .figures import plot_spectrum_ed, save_spectra_png
from .kernels import dct_basis_nd, dct_steered_2d, fix_spatial_conv2d, ghaar2d, ghaar4_2d
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
    "UnsupportedOp", "explain_model", "explainsteer_layerwise_with_saliency",
    "explainsteer_layerwise_without_saliency", "plot_spectrum_ed", "save_spectra_png", "dct_basis_nd",
    "dct_steered_2d", "fix_spatial_conv2d", "ghaar2d", "ghaar4_2d",
]
