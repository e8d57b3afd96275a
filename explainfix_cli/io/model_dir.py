"""Explainfix output directories as models: rebuild one from its recipe and weights, or save one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.errors import BadInput
from ..core.version import __version__
from .arch import arch_label, build_arch, sha256_file
from .codec import load_into, read_safetensors, safetensors_bytes
from .edits import apply_edit
from .outdir import write_output_dir
from .recipe import (
    RECIPE_FORMAT,
    RECIPE_NAME,
    WEIGHTS_NAME,
    portable_recipe,
    read_recipe,
    versions,
)


@dataclass
class LoadedModel:
    """A model ready to use, with the recipe that rebuilds it and where it came from."""

    model: nn.Module
    recipe: dict
    source: Path
    source_sha256: str
    source_format: str  # explainfix | safetensors | state_dict | pickle
    notes: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> dict | None:
        return self.recipe.get("preprocessing")


def rebuild(recipe: dict, trust_pickle: bool = False) -> nn.Module:
    """The architecture of a recipe with every structural edit applied (weights not loaded)."""
    spec = recipe["arch"]
    if spec["kind"] == "pickle":
        if not trust_pickle:
            raise BadInput(
                f"this model was made from a pickled module ({spec['path']}); rebuilding it unpickles that file",
                hint="pass --trust-pickle if you trust it",
            )
        p = Path(spec["path"])
        if not p.is_file() or sha256_file(p) != spec["sha256"]:
            raise BadInput(f"the pickled source {p} is missing or changed since the recipe was written")
        model = torch.load(p, map_location="cpu", weights_only=False)
    else:
        model = build_arch(spec)
    for edit in recipe.get("edits", []):
        apply_edit(model, edit)
    return model


def load_explainfix_dir(directory: Path, trust_pickle: bool = False) -> LoadedModel:
    recipe = read_recipe(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise BadInput(f"{directory} has {RECIPE_NAME} but no {WEIGHTS_NAME}")
    model = rebuild(recipe, trust_pickle=trust_pickle)
    state_dict, _ = read_safetensors(weights)
    load_into(model, state_dict, weights)
    frozen = set(recipe.get("frozen", []))
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    model.eval()
    return LoadedModel(model, recipe, directory, sha256_file(weights), "explainfix")


def load(path: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Rebuild the nn.Module saved in an explainfix directory (no pickle involved)."""
    path = Path(path)
    return load_explainfix_dir(path.parent if path.suffix == ".safetensors" else path, trust_pickle).model




def save_model_dir(
    model: nn.Module, recipe: dict, out: Path, extra: dict[str, bytes | str | dict] | None = None, force: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``explainfix.json`` (+ extra files) into ``out``, atomically."""
    recipe, arch_files = portable_recipe({**recipe, "versions": versions()})
    meta = {"format": RECIPE_FORMAT, "explainfix": __version__, "arch": arch_label(recipe["arch"])}
    files: dict[str, bytes | str | dict] = {WEIGHTS_NAME: safetensors_bytes(model, meta), RECIPE_NAME: recipe}
    files.update(arch_files)
    files.update(extra or {})
    return write_output_dir(out, files, force=force)
