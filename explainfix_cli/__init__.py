"""explainfix: ExplainFix channel pruning, ExplainSteer spectra and fixed spatial filters for real CNNs.

The Python API needs neither typer nor rich; importing it has no side effects.

>>> import explainfix_cli as ef
>>> ef.channelprune(model, 90, loader=loader, device="cpu")      # in place, checked
>>> ef.load("model-pruned/")                                      # rebuild a pruned model, no pickle

The package map (imports run one way, top to bottom; ``lint-imports`` checks it):

    cli/       Typer commands and rich rendering (the only place that imports typer or rich)
    jobs/      one module per command: open inputs → call the stages → write outputs → a result
    prune/ deploy/ explain/ train/    the stages (independent of each other)
    channels/  the channel-dependency engine: tracing, label maps, op handlers, removal plan
    io/        checkpoints, recipes, the safetensors codec, edits, output directories, calibration data
    core/      errors, the model helpers and gradient loop every stage shares, formatting
"""
from __future__ import annotations

from .core.errors import (
    BadInput,
    CannotProcess,
    CheckFailed,
    ExplainFixError,
    UnsupportedOp,
)
from .core.version import __version__
from .explain.figures import plot_spectrum_ed, save_spectra_png
from .explain.kernels import (
    dct_basis_nd,
    dct_steered_2d,
    fix_spatial_conv2d,
    ghaar2d,
    ghaar4_2d,
)
from .explain.spectra import (
    explain_model,
    explainsteer_layerwise_with_saliency,
    explainsteer_layerwise_without_saliency,
)
from .io.checkpoint import load_model
from .io.model_dir import load, save_model_dir
from .prune.pipeline import channelprune, fill_zero_initialization, prune_model
from .prune.saliency import (
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
