"""The recipe (``explainfix.json``): what rebuilds a model from its architecture, and where it came from."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from ..core.errors import BadInput
from ..core.version import __version__

RECIPE_NAME = "explainfix.json"
WEIGHTS_NAME = "model.safetensors"
RECIPE_FORMAT = "explainfix/1"


def versions() -> dict[str, str]:
    return {"explainfix": __version__, "torch": torch.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------- arch


def empty_recipe(spec: dict, source: Path, sha: str, fmt: str) -> dict:
    return {
        "format": RECIPE_FORMAT,
        "arch": spec,
        "source": {"path": str(source.resolve()), "sha256": sha, "format": fmt},
        "preprocessing": None,
        "edits": [],
        "frozen": [],
        "provenance": [],
        "versions": versions(),
    }


def read_recipe(directory: Path) -> dict:
    try:
        recipe = json.loads((directory / RECIPE_NAME).read_text())
    except FileNotFoundError:
        raise BadInput(f"{directory} is not an explainfix directory (no {RECIPE_NAME})", hint="pass a model file, or a directory written by explainfix") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{directory / RECIPE_NAME} is not valid JSON: {e}") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise BadInput(f"{directory / RECIPE_NAME} is not an explainfix recipe (format {recipe.get('format') if isinstance(recipe, dict) else '?'})")
    arch = recipe.get("arch", {})
    if arch.get("kind") == "file" and not Path(arch["path"]).is_absolute():  # shipped inside the directory
        recipe["arch"] = {**arch, "path": str((directory / arch["path"]).resolve())}
    return recipe


def portable_recipe(recipe: dict) -> tuple[dict, dict[str, bytes]]:
    """The recipe to write into an output directory, plus the files to write beside it: an architecture
    given as ``file.py:Class`` travels as ``arch/file.py`` (path relative to the directory, sha256 kept),
    so the directory reloads on another machine."""
    arch = recipe.get("arch", {})
    if arch.get("kind") != "file":
        return recipe, {}
    src = Path(arch["path"])
    rel = f"arch/{src.name}"
    return {**recipe, "arch": {**arch, "path": rel}}, {rel: src.read_bytes()}
