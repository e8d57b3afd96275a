"""A library's own pretrained weights as ``MODEL``: ``torchvision:NAME`` or ``timm:NAME`` (docs/CLI.md, "Loading a
model"). The weights are taken from the cache where that library keeps what it downloads — torchvision's
``weights=`` files under ``torch.hub.get_dir()/checkpoints/`` (``TORCH_HOME``), timm's Hugging Face Hub files
under the hub cache (``HF_HOME``/``HF_HUB_CACHE``) — and read like any weights file (``weights_only``,
safetensors). explainfix never downloads: weights not in the cache are one line saying where they were looked
for and the library call that fetches them.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import BadInput
from .arch import missing_library
from .pretrained import _timm_preprocessing

LIBRARIES = ("torchvision", "timm")
_SPEC = re.compile(r"(torchvision|timm):([A-Za-z][A-Za-z0-9_.-]*)")


def library_model(text: str) -> tuple[str, str] | None:
    """(library, NAME) when ``text`` names a library's pretrained model (``timm:resnet18``), else None."""
    m = _SPEC.fullmatch(text)
    return (m.group(1), m.group(2)) if m else None


def cached_weights(library: str, name: str) -> tuple[Path, dict | None]:
    """(the cached weights file, the preprocessing its library trained with) of ``library:name``."""
    return _torchvision(name) if library == "torchvision" else _timm(name)


def _torchvision(name: str) -> tuple[Path, dict | None]:
    import torch

    try:
        import torchvision.models as tvm
    except ImportError as e:
        raise missing_library("torchvision", e) from None
    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise BadInput(f"torchvision:{name}: torchvision has no model {name!r} with pretrained weights",
                       hint="e.g. torchvision:resnet18; or pass a weights file with --arch torchvision:NAME") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise BadInput(f"torchvision:{name}: the pretrained weights are not in torchvision's cache ({path}) and "
                       f"explainfix does not download; fetch them once with torchvision: python -c \"import torchvision; "
                       f"torchvision.models.get_model('{name}', weights='DEFAULT')\"")
    pre = None
    t = weights.transforms()
    crop, mean, std = getattr(t, "crop_size", None), getattr(t, "mean", None), getattr(t, "std", None)
    if crop and mean and std:
        pre = {"input_size": [int(crop[0]), int(crop[-1])], "channels": len(mean), "mean": [float(v) for v in mean],
               "std": [float(v) for v in std], "resize": "bilinear"}
    return path, pre


def _timm(name: str) -> tuple[Path, dict | None]:
    try:
        from timm.models import get_pretrained_cfg
    except ImportError as e:
        raise missing_library("timm", e) from None
    from huggingface_hub import try_to_load_from_cache

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise BadInput(f"timm:{name}: timm has no pretrained weights on the Hugging Face Hub for {name!r}",
                       hint="e.g. timm:resnet18; or pass a weights file with --arch timm:NAME")
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors", "pytorch_model.bin"]
    for filename in files:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            d = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
            return Path(found), _timm_preprocessing({k: list(v) if isinstance(v, tuple) else v for k, v in d.items()})
    raise BadInput(f"timm:{name}: the pretrained weights ({repo}) are not in the Hugging Face Hub cache and explainfix "
                   f"does not download; fetch them once with timm: python -c \"import timm; timm.create_model('{name}', "
                   "pretrained=True)\"")
