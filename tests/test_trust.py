"""A shared explainfix directory runs no code (issue: artifact trust): real tampered directories, a marker
file that must not appear, the --trust-code opt-in, integrity hashes and a fuzzed recipe."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import FIXTURE_ARCH, cli_json, invoke, run_cli
from explainfix_cli import BadInput, load
from explainfix_cli.io.arch import arch_spec, build_arch
from explainfix_cli.io.model_dir import save_model_dir
from explainfix_cli.io.recipe import Recipe
from explainfix_cli.io.trust import ALLOWED_MODULES, check_import_target


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _edit_recipe(d: Path, change) -> None:
    r = json.loads((d / "explainfix.json").read_text())
    change(r)
    (d / "explainfix.json").write_text(json.dumps(r))


@pytest.fixture
def pruned_dir(pruned_fixture) -> Path:
    """A real prune output of the fixture (file-kind architecture: arch/digits_resnet.py); copied before a change."""
    return pruned_fixture("--pct", "60")


@pytest.fixture(scope="module")
def tv_dir(tmp_path_factory) -> Path:
    """An explainfix directory whose recipe names torchvision.models:resnet18 (allow-listed)."""
    out = tmp_path_factory.mktemp("trust") / "tv"
    spec = arch_spec("torchvision.models:resnet18", {"num_classes": 10})
    model = build_arch(spec)
    recipe = Recipe.new(spec, Path(__file__), "0" * 64, "state_dict").record(
        {"command": "test"}, preprocessing={"input_size": [32, 32], "channels": 3, "mean": [0.5], "std": [0.5], "resize": "bilinear"})
    save_model_dir(model, recipe, out)
    return out


def test_allow_listed_torchvision_dir_loads_without_flag(tv_dir):
    model = load(tv_dir)
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 10
    cli_json("info", tv_dir)


def test_file_arch_attack_does_not_run(pruned_dir, tmp_path):
    """The issue's attack: code appended to arch/*.py, its new sha256 written into the recipe."""
    evil = tmp_path / "evil"
    shutil.copytree(pruned_dir, evil)
    marker = tmp_path / "marker.txt"
    src = evil / "arch" / "digits_resnet.py"
    src.write_text(src.read_text() + f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n")

    def fix_hashes(r):
        r["arch"]["sha256"] = _sha(src)
        r["integrity"]["arch/digits_resnet.py"] = _sha(src)

    _edit_recipe(evil, fix_hashes)
    p = run_cli("info", evil)
    assert p.returncode == 2, p.stderr
    assert not marker.exists()
    first = p.stderr.strip().splitlines()[0]
    assert "arch/digits_resnet.py" in first and "Traceback" not in p.stderr
    assert "--trust-code" in p.stderr
    with pytest.raises(BadInput, match="refused to run the Python file"):
        load(evil)
    assert not marker.exists()
    # the user's own --arch replaces the directory's code: loads, and still runs nothing from the directory
    cli_json("info", evil, "--arch", FIXTURE_ARCH)
    assert not marker.exists()
    # the opt-in does what it says (this is how a trusted author's directory is loaded)
    cli_json("info", evil, "--trust-code")
    assert marker.read_text() == "ran"


def test_benign_file_arch_dir_loads_with_trust_code(pruned_dir):
    cli_json("info", pruned_dir, "--trust-code")
    model = load(pruned_dir, trust_code=True)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    p = run_cli("info", pruned_dir, env={"EXPLAINFIX_TRUST_CODE": "1"})
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("module,name,kwargs", [
    ("subprocess", "getoutput", {"cmd": "touch {marker}"}),
    ("os", "system", {"command": "touch {marker}"}),
    ("builtins", "eval", {"source": "open({marker!r}, 'w')"}),
    ("torchvision.models.os", "system", {"command": "touch {marker}"}),
    ("torchvision.models", "os", {}),
    ("torchvision.models", "load_state_dict_from_url", {"url": "file:///{marker}"}),
    ("torchvision.models", "_api", {}),
    ("torchvision.models", "resnet18", {"weights": "DEFAULT"}),
])
def test_import_target_attacks_do_not_run(tv_dir, tmp_path, module, name, kwargs):
    evil = tmp_path / "evil"
    shutil.copytree(tv_dir, evil)
    marker = tmp_path / "marker2.txt"
    kw = {k: v.format(marker=str(marker)) for k, v in kwargs.items()}
    _edit_recipe(evil, lambda r: r.__setitem__("arch", {"kind": "import", "module": module, "name": name, "kwargs": kw}))
    p = run_cli("info", evil)
    assert p.returncode == 2, p.stderr
    assert not marker.exists()
    assert len(p.stderr.strip().splitlines()) <= 2 and "Traceback" not in p.stderr  # error + hint
    assert f"{module}:{name}" in p.stderr and "--trust-code" in p.stderr


def test_allow_list_is_decided_on_strings():
    assert {"torchvision.models", "timm", "segmentation_models_pytorch", "ultralytics.nn.tasks"} <= set(ALLOWED_MODULES)
    check_import_target("timm", "create_model", {"model_name": "resnet18", "num_classes": 3})
    for module, name, kwargs in [("timm", "create_model", {"pretrained": True}),
                                 ("timm", "create_model", {"checkpoint_path": "/x.pt"}),
                                 ("timm.layers", "create_conv2d", {}), ("timm", "__import__", {})]:
        with pytest.raises(BadInput, match="refused"):
            check_import_target(module, name, kwargs)


ALLOWED_KWARGS = [  # written by explainfix itself, or plain hyper-parameters: they read nothing
    ("torchvision.models", "googlenet", {"init_weights": True, "aux_logits": False, "num_classes": 5}),
    ("torchvision.models", "inception_v3", {"init_weights": True, "transform_input": True, "aux_logits": False}),
    ("torchvision.models", "resnet18", {"weights": None, "progress": False}),
    ("torchvision.models.detection", "fasterrcnn_resnet50_fpn", {"weights": None, "weights_backbone": None,
                                                                "trainable_backbone_layers": 3}),
    ("timm", "create_model", {"model_name": "resnet18", "pretrained": False, "drop_path_rate": 0.1,
                              "model_args": {"layers": [1, 1, 1, 1]}}),
    ("segmentation_models_pytorch", "Unet", {"encoder_name": "tu-resnet18", "encoder_weights": None,
                                             "aux_params": {"classes": 3, "dropout": 0.2}}),
    ("ultralytics.nn.tasks", "DetectionModel", {"cfg": "yolov8n.yaml", "verbose": False, "nc": 3}),
]
REFUSED_KWARGS = [  # these fetch or read: a download flag, a cache, a path or URL anywhere in the values
    ("torchvision.models", "resnet18", {"weights": "DEFAULT"}),
    ("torchvision.models", "resnet18", {"pretrained": True}),
    ("torchvision.models.detection", "fasterrcnn_resnet50_fpn", {"weights_backbone": "ResNet50_Weights.DEFAULT"}),
    ("torchvision.models.detection", "fasterrcnn_resnet50_fpn", {"pretrained_backbone": True}),
    ("timm", "create_model", {"model_name": "resnet18", "pretrained_cfg_overlay": {"file": "w.pth"}}),
    ("timm", "create_model", {"model_name": "resnet18", "pretrained_cfg": {"hf_hub_id": "timm/resnet18"}}),
    ("timm", "create_model", {"model_name": "resnet18", "checkpoint_path": "w.pth"}),
    ("timm", "create_model", {"model_name": "resnet18", "cache_dir": "cache"}),
    ("timm", "create_model", {"model_name": "hf-hub:timm/resnet18.a1_in1k"}),
    ("timm", "create_model", {"model_name": "local-dir:model_folder"}),
    ("timm", "create_model", {"model_name": "resnet18", "model_args": {"x": ["~/weights.pth"]}}),
    ("segmentation_models_pytorch", "Unet", {"encoder_weights": "imagenet"}),
    ("segmentation_models_pytorch", "Unet", {"aux_params": {"classes": 3, "x": "../../etc/passwd"}}),
    ("torchvision.models", "resnet18", {"norm": "C:\\weights"}),
    ("torchvision.models", "resnet18", {"x": "https://example.com/w.pth"}),
    ("torchvision.models", "resnet18", {"x": ".hidden"}),
    ("torchvision.models", "resnet18", {"config_file": "model"}),
    ("ultralytics.nn.tasks", "DetectionModel", {"cfg": "models/evil.yaml"}),
    ("ultralytics.nn.tasks", "DetectionModel", {"cfg": {"backbone": []}}),
]


@pytest.mark.parametrize("module,name,kwargs", ALLOWED_KWARGS, ids=[f"{m}:{n}" for m, n, _ in ALLOWED_KWARGS])
def test_kwargs_that_read_nothing_are_allowed(module, name, kwargs):
    """Issue 24 item 3: ``init_weights=True`` only picks an initialisation; the tool's own directories load."""
    check_import_target(module, name, kwargs)


@pytest.mark.parametrize("module,name,kwargs", REFUSED_KWARGS, ids=[str(k) for _, _, k in REFUSED_KWARGS])
def test_kwargs_that_fetch_or_read_are_refused(module, name, kwargs):
    with pytest.raises(BadInput, match="refused") as e:
        check_import_target(module, name, kwargs)
    assert "\n" not in e.value.message and "--trust-code" in e.value.hint


def test_googlenet_init_weights_dir_loads_without_flag(tmp_path):
    """The issue's case: a directory whose recipe says ``googlenet(init_weights=True, aux_logits=False)``."""
    spec = arch_spec("torchvision:googlenet", {"num_classes": 4, "init_weights": True, "aux_logits": False})
    out = tmp_path / "g"
    save_model_dir(build_arch(spec).eval(), Recipe.new(spec, Path(__file__), "0" * 64, "state_dict"), out)
    cli_json("info", out, "--input-size", "64")
    assert load(out)(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_integrity_hash_is_checked(tv_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tv_dir, bad)
    w = bad / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # one byte of a weight: the file still parses
    w.write_bytes(bytes(data))
    r = invoke("info", bad)
    assert r.exit_code == 2
    assert "does not match the sha256" in r.output


def _paths(obj, prefix=()):
    """Every key path of a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


WRONG = [None, True, -1, 10**30, 1e308, "x" * 5000, [], [10**9] * 3, {"__class__": "os.system"}]
HARMLESS = {"kwargs", "resize"}  # optional keys (their default is used when removed)
OPTIONAL = {("source",), ("preprocessing",), ("frozen",), ("provenance",), ("versions",), ("integrity",), ("schema",)}  # no schema: a schema-1 recipe


def test_fuzzed_recipe_is_one_line_exit_2(pruned_dir, tmp_path):
    """Every field replaced by wrong types and huge values, and every key removed: exit 2 with one line (or,
    for a value the schema accepts, a normal load) — never a traceback, never another exit code."""
    base = json.loads((pruned_dir / "explainfix.json").read_text())
    paths = [p for p in _paths(base) if "integrity" not in p and "sha256" not in p]
    seen, accepted = {0: 0, 2: 0}, []
    work = tmp_path / "fuzz"
    shutil.copytree(pruned_dir, work)
    from explainfix_cli.io.checkpoint import load_model

    for path in paths:
        for value in [*WRONG, "<missing>"]:
            r = copy.deepcopy(base)
            node = r
            for k in path[:-1]:
                node = node[k]
            if value == "<missing>":
                del node[path[-1]]
            else:
                node[path[-1]] = value
            (work / "explainfix.json").write_text(json.dumps(r))
            try:
                load_model(work, trust_code=True)
                code = 0
            except BadInput as e:
                assert "\n" not in e.message, (path, value, e.message)
                code = 2
            seen[code] += 1
            if code == 0:
                accepted.append((path, value))
    # what the schema accepts is harmless: informational fields, optional keys removed, equivalent values
    for path, value in accepted:
        harmless = path[-1] in HARMLESS and value == "<missing>" or path[:2] == ("preprocessing", "mean") and value == -1
        assert path[0] in {"source", "provenance", "versions"} or path in OPTIONAL or harmless, (path, value)
    assert seen[2] > 2 * seen[0], accepted
    # and through the CLI: one line, exit 2, no traceback
    _edit_recipe(work, lambda r: r["edits"][0]["modules"].__setitem__("__class__.__init__", {"out": [0]}))
    p = run_cli("info", work, "--trust-code")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: ") and "not a valid explainfix recipe" in p.stderr


def test_allow_listed_timm_dir_loads_without_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("timm")  # a test extra ([test] in pyproject.toml)
    spec = arch_spec("timm:create_model", {"model_name": "resnet18", "num_classes": 4, "pretrained": False})
    model = build_arch(spec)
    out = tmp_path / "timm"
    save_model_dir(model, Recipe.new(spec, Path(__file__), "0" * 64, "state_dict"), out)
    again = load(out)
    assert type(again).__name__ == "ResNet" and again.fc.out_features == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
