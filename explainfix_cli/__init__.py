"""explainfix: ExplainFix channel pruning, ExplainSteer spectra and fixed spatial filters for real CNNs.

The Python API needs neither typer nor rich; importing it has no side effects (and is instant: each name
is imported on first use).

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

from importlib import import_module
from typing import Any

#: public name → the module that defines it; imported on first use (PEP 562), so that ``import
#: explainfix_cli`` is instant and the command line can catch Ctrl-C while torch imports
_API = {
    "__version__": "core.version",
    "BadInput": "core.errors", "CannotProcess": "core.errors", "CheckFailed": "core.errors",
    "ExplainFixError": "core.errors", "UnsupportedOp": "core.errors",
    "plot_spectrum_ed": "explain.figures", "save_spectra_png": "explain.figures",
    "dct_basis_nd": "explain.kernels", "dct_steered_2d": "explain.kernels", "fix_spatial_conv2d": "explain.kernels",
    "ghaar2d": "explain.kernels", "ghaar4_2d": "explain.kernels",
    "explain_model": "explain.spectra", "explainsteer_layerwise_with_saliency": "explain.spectra",
    "explainsteer_layerwise_without_saliency": "explain.spectra",
    "load_model": "io.checkpoint", "load": "io.model_dir", "save_model_dir": "io.model_dir",
    "channelprune": "prune.pruner", "fill_zero_initialization": "prune.pipeline", "prune_model": "prune.pruner",
    "Pruner": "prune.pruner", "PruneOptions": "prune.options",
    "get_spatial_filter_magnitude": "prune.saliency", "get_spatial_filter_saliency": "prune.saliency",
    "zero_least_salient_spatial_filters": "prune.saliency",
    "quantize": "jobs.quantize",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


__all__ = [
    "__version__", "load", "load_model", "save_model_dir", "channelprune", "prune_model", "Pruner", "PruneOptions",
    "fill_zero_initialization", "get_spatial_filter_saliency", "get_spatial_filter_magnitude",
    "zero_least_salient_spatial_filters", "ExplainFixError", "BadInput", "CannotProcess", "CheckFailed",
    "UnsupportedOp", "explain_model", "explainsteer_layerwise_with_saliency",
    "explainsteer_layerwise_without_saliency", "plot_spectrum_ed", "save_spectra_png", "dct_basis_nd",
    "dct_steered_2d", "fix_spatial_conv2d", "ghaar2d", "ghaar4_2d", "quantize",
]
