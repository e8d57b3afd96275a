"""The recipe (``explainfix.json``): what rebuilds a model from its architecture, and where it came from."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from ..core.errors import BadInput, first_line
from ..core.version import __version__
from .schema import validate_recipe

RECIPE_NAME = "explainfix.json"
WEIGHTS_NAME = "model.safetensors"
RECIPE_FORMAT = "explainfix/1"
MAX_RECIPE_BYTES = 64 << 20


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
    """The recipe of an explainfix directory, every field checked (io/schema.py) before anything uses it."""
    path = directory / RECIPE_NAME
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise BadInput(f"{path} is larger than {MAX_RECIPE_BYTES >> 20} MiB; not an explainfix recipe")
        recipe = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{directory} is not an explainfix directory (no {RECIPE_NAME})", hint="pass a model file, or a directory written by explainfix") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BadInput(f"{path} is not valid JSON: {first_line(e, 200)}") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise BadInput(f"{path} is not an explainfix recipe (format {str(recipe.get('format'))[:40] if isinstance(recipe, dict) else '?'})")
    validate_recipe(recipe, str(path))
    arch = recipe["arch"]
    if arch["kind"] == "file":  # shipped inside the directory (the schema allows only arch/NAME.py)
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
