"""``explainfix info``: size, cost, spatial layers and prunable channel groups of any loadable model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..channels import graph as graph_mod
from ..core.errors import ExplainFixError
from ..core.model import count_params, iter_spatial_convs
from .result import JobResult
from .common import DataSpec, ModelSpec, open_inputs


@dataclass
class InfoJob(JobResult):
    report: dict


def info_job(model: ModelSpec, data: DataSpec | None = None) -> InfoJob:
    opened = open_inputs(model, data, "cpu", purpose="analyse")
    m = opened.model
    x = opened.example(1)
    convs = iter_spatial_convs(m)
    layers = [
        {"name": n, "kernel": list(c.kernel_size), "in": c.in_channels, "out": c.out_channels, "groups": c.groups,
         "filters": int(c.weight.shape[0] * c.weight.shape[1]),
         "zero_filters": int((c.weight.detach().flatten(2).abs().sum(2) == 0).sum())}
        for n, c in convs
    ]
    groups: dict[str, Any]
    try:
        gm, g = graph_mod.build_graph(m, x)
        prunable = [s for s in g.spaces if s.prunable and s.producers]
        groups = {
            "traced": True, "spaces": len(g.spaces), "prunable": len(prunable),
            "prunable_channels": sum(s.size for s in prunable),
            "channels": g.channels_total,  # every producer's output channels: prune's "channels" total
            "frozen": sorted({r for s in g.spaces for r in s.frozen})[:10],
            "frozen_by": dict(list(g.frozen_by.items())[:5]),  # channels by the op that froze them, most first
            "opaque": {**graph_mod.opaque_modules(gm), **g.passed},
        }
    except ExplainFixError as e:
        groups = {"traced": False, "reason": e.message}
    return InfoJob({
        "command": "info", "model": str(model.path),
        "source_format": opened.loaded.source_format,
        "arch": opened.loaded.recipe.arch,
        "params": count_params(m),
        "macs": opened.macs,
        "input_shape": list(x.shape[1:]),
        "preprocessing": opened.pre.to_dict(),
        "spatial_layers": len(layers),
        "spatial_filters": sum(layer["filters"] for layer in layers),
        "zero_spatial_filters": sum(layer["zero_filters"] for layer in layers),
        "layers": layers,
        "channel_groups": groups,
        "edits": len(opened.loaded.recipe.edits),
        "frozen_params": len(opened.loaded.recipe.frozen),
    })


