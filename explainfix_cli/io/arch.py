"""Architectures: how ``--arch`` names one, how the recipe records it, and how it is built (random init)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path

from torch import nn

from ..core.errors import BadInput
from .trust import check_import_object, check_import_target, refuse_file_arch


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_arch_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"--arch-kwargs is not valid JSON: {e.msg} at char {e.pos}", hint='e.g. --arch-kwargs \'{"num_classes": 10}\'') from None
    if not isinstance(kwargs, dict):
        raise BadInput("--arch-kwargs must be a JSON object", hint='e.g. --arch-kwargs \'{"num_classes": 10}\'')
    return kwargs


NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
SHORTHANDS = {  # --arch LIB:NAME → (module, callable, how NAME is passed, default kwargs)
    "timm": ("timm", "create_model", "model_name", {"pretrained": False}),
    "torchvision": ("torchvision.models", None, None, {}),
    "smp": ("segmentation_models_pytorch", None, None, {"encoder_weights": None}),
}


def arch_spec(arch: str, kwargs: dict) -> dict:
    """The recipe's record of an architecture: importable ``module:callable`` or ``file.py:Name``, or a
    shorthand: ``timm:NAME`` (``timm.create_model(NAME, pretrained=False)``), ``torchvision:NAME``
    (``torchvision.models.NAME``), ``smp:NAME`` (``segmentation_models_pytorch.NAME``, encoder_weights
    None unless given), ``ultralytics:NAME`` (the task model of ultralytics' packaged ``NAME.yaml``, e.g.
    yolov8n, yolo11n-seg). Nothing is downloaded: weights come from the checkpoint."""
    lib, sep, rest = arch.partition(":")
    if sep and lib == "ultralytics" and rest and ":" not in rest:
        return _ultralytics_spec(rest, kwargs)
    if sep and lib in SHORTHANDS and rest and ":" not in rest:
        module, name, name_kwarg, defaults = SHORTHANDS[lib]
        if name is None:
            return {"kind": "import", "module": module, "name": rest, "kwargs": {**defaults, **kwargs}}
        return {"kind": "import", "module": module, "name": name, "kwargs": {name_kwarg: rest, **defaults, **kwargs}}
    if ":" not in arch:
        raise BadInput(f"--arch {arch!r} must be MODULE:CALLABLE, path/to/file.py:ClassName, timm:NAME, torchvision:NAME, smp:NAME "
                       "or ultralytics:NAME",
                       hint="e.g. --arch torchvision.models:resnet18 or --arch timm:resnet26d")
    where, _, name = arch.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise BadInput(f"architecture file {path} does not exist")
        return {"kind": "file", "path": str(path.resolve()), "name": name, "kwargs": kwargs, "sha256": sha256_file(path)}
    return {"kind": "import", "module": where, "name": name, "kwargs": kwargs}


#: ultralytics model-yaml suffix → its task model class in ultralytics.nn.tasks
ULTRALYTICS_TASKS = {"-seg": "SegmentationModel", "-pose": "PoseModel", "-cls": "ClassificationModel", "-obb": "OBBModel"}


def _ultralytics_spec(name: str, kwargs: dict) -> dict:
    stem = name.removesuffix(".yaml")
    if not NAME_RE.fullmatch(stem):
        raise BadInput(f"--arch ultralytics:{name}: give a packaged model name such as yolov8n or yolo11n-seg",
                       hint="a path to your own yaml: --arch ultralytics.nn.tasks:DetectionModel --arch-kwargs '{\"cfg\": …}'")
    cls = next((c for suffix, c in ULTRALYTICS_TASKS.items() if stem.endswith(suffix)), "DetectionModel")
    return {"kind": "import", "module": "ultralytics.nn.tasks", "name": cls,
            "kwargs": {"cfg": f"{stem}.yaml", "verbose": False, **kwargs}}


#: the model libraries of the shorthands → the extra that installs them (pyproject.toml)
EXTRAS = {"timm": "timm", "segmentation_models_pytorch": "smp", "ultralytics": "yolo", "torchvision": "vision"}


def missing_library(module: str, error: ImportError) -> BadInput:
    """One line for an architecture whose library is not installed: the extra to install, for a shorthand's
    library (``pip install explainfix-cli[timm]``); else the import error."""
    root = module.split(".")[0]
    missing = getattr(error, "name", None) or ""
    if root in EXTRAS and missing.split(".")[0] == root:
        return BadInput(f"{root} is not installed: pip install explainfix-cli[{EXTRAS[root]}] "
                        "(or explainfix-cli[all]: torchvision, timm, segmentation-models-pytorch and ultralytics)")
    return BadInput(f"cannot import {module}: {error}", hint="install the package that defines the architecture")


def arch_label(spec: dict) -> str:
    if spec["kind"] == "file":
        return f"{spec['path']}:{spec['name']}"
    if spec["kind"] == "import":
        return f"{spec['module']}:{spec['name']}"
    return f"pickle:{spec.get('path')}"


def build_arch(spec: dict, trusted: bool = True) -> nn.Module:
    """Instantiate an architecture from its recipe record (random init). ``trusted=False`` (a recipe read
    from a directory without ``--trust-code``): only allow-listed model libraries, decided before any
    import, and never a file (io/trust.py)."""
    kind = spec["kind"]
    if kind == "import":
        if not trusted:
            check_import_target(spec["module"], spec["name"], spec.get("kwargs", {}))
        try:
            module = importlib.import_module(spec["module"])
        except ImportError as e:
            raise missing_library(spec["module"], e) from None
    elif kind == "file":
        if not trusted:
            raise refuse_file_arch(spec["path"], spec["name"])
        path = Path(spec["path"])
        if not path.is_file():
            raise BadInput(f"architecture file {path} does not exist", hint="the recipe points to it; restore it or pass --arch")
        sha = sha256_file(path)
        if spec.get("sha256") and sha != spec["sha256"]:
            raise BadInput(f"architecture file {path} changed since the recipe was written (sha256 differs)",
                           hint="restore it, or start again from the original checkpoint with --arch")
        mod_name = f"_explainfix_arch_{hashlib.sha1(f'{path}:{sha}'.encode()).hexdigest()[:12]}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise BadInput(f"cannot import {path}: {type(e).__name__}: {e}") from None
    else:
        raise BadInput(f"this recipe's architecture is a pickled module ({spec.get('path')}); reload it with --trust-pickle")
    factory = getattr(module, spec["name"], None) if trusted else check_import_object(module, spec)
    if not callable(factory):
        raise BadInput(f"{arch_label(spec)} is not a callable in that module")
    try:
        model = factory(**spec.get("kwargs", {}))
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError) as e:
        raise BadInput(f"{arch_label(spec)}({json.dumps(spec.get('kwargs', {}))}) failed: {e}", hint="check --arch-kwargs") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"{arch_label(spec)} returned {type(model).__name__}, not an nn.Module")
    return model


# ------------------------------------------------------------------------------------ file formats
