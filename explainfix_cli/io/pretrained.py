"""``save_pretrained`` directories (``config.json`` + ``model.safetensors``), as timm and
segmentation-models-pytorch write them: the config names the constructor, the weights fill it.

The config is data, never code: it becomes an ``import`` architecture of an allow-listed library with JSON
keyword arguments, so the rules of io/trust.py apply to it as to any recipe (``pretrained=False`` always;
an argument that could read a file or download is refused). ``--arch`` given with such a directory wins.

    timm:  {"architecture": "resnet18d", "num_classes": 7, "model_args": {...}, "pretrained_cfg": {input_size, mean, std}}
    smp:   {"_model_class": "Unet", "encoder_name": "resnet34", "classes": 2, ...}
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import BadInput, first_line
from .schema import MAX_SIDE

CONFIG_NAME = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_CONFIG_BYTES = 4 << 20


def pretrained_weights(directory: Path) -> Path | None:
    """The weights file of a save_pretrained directory, or None when ``directory`` is not one."""
    if not (directory / CONFIG_NAME).is_file():
        return None
    return next((directory / n for n in WEIGHT_FILES if (directory / n).is_file()), None)


def read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BadInput(f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; not a model config")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BadInput(f"{path} is not valid JSON: {first_line(e, 200)}") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path} is not a model config (a JSON {type(config).__name__})")
    return config


def pretrained_spec(config: dict, where: Path) -> tuple[dict, dict | None, str]:
    """(architecture spec, preprocessing or None, library) from a save_pretrained config."""
    if isinstance(config.get("architecture"), str):  # timm (timm.models._hub.save_config_for_hf)
        args = config.get("model_args")
        if not isinstance(args, dict):
            args = {k: config[k] for k in ("num_classes", "global_pool") if k in config}
        spec = {"kind": "import", "module": "timm", "name": "create_model",
                "kwargs": {"model_name": config["architecture"], **args, "pretrained": False}}
        return spec, _timm_preprocessing(config.get("pretrained_cfg")), "timm"
    if isinstance(config.get("_model_class"), str):  # segmentation-models-pytorch (its hub mixin)
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        spec = {"kind": "import", "module": "segmentation_models_pytorch", "name": config["_model_class"],
                "kwargs": {**kwargs, "encoder_weights": None}}
        return spec, None, "segmentation_models_pytorch"
    raise BadInput(f"{where / CONFIG_NAME} names no architecture explainfix can build (timm's \"architecture\" or "
                   "segmentation-models-pytorch's \"_model_class\")", hint="pass --arch MODULE:CALLABLE with the directory")


def _timm_preprocessing(cfg: Any) -> dict | None:
    """input size, mean and std of a timm pretrained_cfg (resized bilinearly: explainfix's one resize)."""
    if not isinstance(cfg, dict):
        return None
    size, mean, std = cfg.get("input_size"), cfg.get("mean"), cfg.get("std")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in size)):
        return None
    channels = size[0]
    ok = lambda v: isinstance(v, list) and len(v) in (1, channels) and all(  # noqa: E731
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) < 1e6 for x in v)
    if not (ok(mean) and ok(std)) or min(std) <= 0:
        return None
    return {"input_size": size[1:], "channels": channels, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "resize": "bilinear"}
