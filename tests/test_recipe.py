"""The Recipe type (io/recipe.py): one way to grow it, a schema version, old recipes still load."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from explainfix_cli import load
from explainfix_cli.core.errors import BadInput
from explainfix_cli.io.checkpoint import load_model
from explainfix_cli.io.recipe import RECIPE_NAME, Recipe
from explainfix_cli.io.schema import MAX_INPUT_ELEMENTS, SCHEMA_VERSION, validate_recipe
from tests.conftest import FIXTURE_ARCH, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, invoke, run_cli


@pytest.fixture
def pruned(pruned_fixture):
    return pruned_fixture("--pct", "60")  # conftest: pruned once per session (test_trust reads the same one)


def test_record_appends_and_leaves_the_original_alone():
    base = load_model(FIXTURE_PT, FIXTURE_ARCH).recipe
    pre = {"input_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5], "resize": "bilinear"}
    one = base.record({"command": "a"}, edits=[{"op": "fix", "init": "dct", "seed": 0, "layers": 1}],
                      frozen=["conv1.weight", "conv1.weight"], preprocessing=pre)
    two = one.record({"command": "b"}, edits=[{"op": "finetune", "epochs": 1, "seed": 0}])
    assert base.edits == () and base.provenance == () and base.frozen == () and base.preprocessing is None
    assert [p["command"] for p in two.provenance] == ["a", "b"]
    assert [e["op"] for e in two.edits] == ["fix", "finetune"]
    assert two.frozen == ("conv1.weight",) and two.preprocessing == pre  # kept when not given
    with pytest.raises(AttributeError):
        two.edits = ()  # frozen: a job cannot change a recipe in place


def test_json_round_trip_is_exact():
    r = load_model(FIXTURE_PT, FIXTURE_ARCH).recipe.record({"command": "x", "n": 1}, edits=[{"op": "bn-recalibrate", "batches": 2}])
    portable, files = r.portable()  # the on-disk form: the architecture file travels as arch/NAME.py
    assert list(files) == ["arch/digits_resnet.py"] and portable.arch["path"] == "arch/digits_resnet.py"
    d = portable.to_dict()
    assert d["format"] == "explainfix/1" and d["schema"] == SCHEMA_VERSION
    assert Recipe.from_dict(json.loads(json.dumps(d)), "test") == portable


def test_written_recipe_has_schema(pruned):
    d = json.loads((pruned / RECIPE_NAME).read_text())
    assert d["schema"] == SCHEMA_VERSION and [e["op"] for e in d["edits"]] == ["prune"]
    assert set(d["integrity"]) == {"model.safetensors", "arch/digits_resnet.py"}


def test_schema_1_recipe_still_loads(pruned, tmp_path):
    """A recipe as explainfix wrote it before the schema field: no ``schema`` key, no ``frozen``/``provenance``."""
    old = shutil.copytree(pruned, tmp_path / "old")
    d = json.loads((old / RECIPE_NAME).read_text())
    for key in ("schema", "frozen", "provenance"):
        del d[key]
    (old / RECIPE_NAME).write_text(json.dumps(d))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(old, trust_code=True)(x), load(pruned, trust_code=True)(x))
    r = Recipe.read(old)
    assert r.schema == SCHEMA_VERSION and r.provenance == () and r.frozen == ()
    out = tmp_path / "again"  # and it grows like a new one
    res = invoke("prune", old, "--trust-code", "--pct", "20", "--data", FIXTURE_CALIB, "-o", out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / RECIPE_NAME).read_text())["schema"] == SCHEMA_VERSION


@pytest.mark.parametrize("schema, message", [(SCHEMA_VERSION + 1, "reads schemas 1 to"), ("2", "expected an integer"),
                                             (0, "expected an integer")])
def test_bad_or_newer_schema_is_one_line(pruned, tmp_path, schema, message):
    bad = shutil.copytree(pruned, tmp_path / "bad")
    d = json.loads((bad / RECIPE_NAME).read_text())
    d["schema"] = schema
    d["field_from_the_future"] = 1
    (bad / RECIPE_NAME).write_text(json.dumps(d))
    with pytest.raises(BadInput, match=message):
        Recipe.read(bad)
    r = invoke("info", bad, "--trust-code")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------- issue 24: names torch allows, bounded inputs


def _validated(pruned, change) -> None:
    d = json.loads((pruned / RECIPE_NAME).read_text())
    change(d)
    validate_recipe(d, "test")


@pytest.mark.parametrize("name", ["trunk_output.block1.block1-0.proj.0", "stage 1.conv", "ü.ß", "a:b", "x/y", "_x.__init",
                                  "0.1", "conv+bn"])
def test_schema_accepts_every_module_name_torch_allows(pruned, name):
    """Any non-empty name without '.' is a torch module name (RegNet's ``block1-0``); the schema takes it
    for edits and frozen names alike, and torch really builds such a model."""
    root = node = torch.nn.Module()
    for part in name.split("."):
        node.add_module(part, torch.nn.Module())
        node = getattr(node, part)
    assert root.get_submodule(name) is node
    _validated(pruned, lambda d: d["edits"][0]["modules"].__setitem__(name, {"out": [0]}))
    _validated(pruned, lambda d: d.__setitem__("frozen", [f"{name}.weight"]))


@pytest.mark.parametrize("name", ["", "a..b", ".a", "a.", "__class__", "fc.__dict__", "a\nb", "a\x1b[2Jb", "a\u2028b",
                                  "x" * 501])
def test_schema_refuses_what_is_not_a_module_path(pruned, name):
    with pytest.raises(BadInput, match="not a valid explainfix recipe"):
        _validated(pruned, lambda d: d["edits"][0]["modules"].__setitem__(name, {"out": [0]}))
    with pytest.raises(BadInput, match="not a valid explainfix recipe"):
        _validated(pruned, lambda d: d.__setitem__("frozen", [name]))


@pytest.mark.parametrize("size,channels,ok", [([16384, 16384], 3, False), ([16384, 16384], 1, False), ([8192, 8192], 1, True),
                                              ([4096, 4096], 3, True), ([1, 16384], 4096, True), ([2, 16384], 4096, False)])
def test_recorded_input_size_is_bounded_by_its_values(pruned, tmp_path, size, channels, ok):
    """A tampered recipe cannot make a later command allocate 3×16384² floats per sample: channels × H × W
    ≤ MAX_INPUT_ELEMENTS (2**26)."""
    def change(d):
        d["preprocessing"].update(input_size=size, channels=channels, mean=[0.5], std=[0.5])

    assert MAX_INPUT_ELEMENTS == 2**26
    if ok:
        _validated(pruned, change)
        return
    with pytest.raises(BadInput, match="channels × H × W"):
        _validated(pruned, change)
    bad = shutil.copytree(pruned, tmp_path / "bad")
    d = json.loads((bad / RECIPE_NAME).read_text())
    change(d)
    (bad / RECIPE_NAME).write_text(json.dumps(d))
    r = run_cli("info", bad, "--trust-code")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "channels × H × W" in r.stderr, r.stderr


def test_two_identical_runs_write_identical_weights(tmp_path):
    """CI caches key on the bytes: the same prune twice (two processes) writes the same model.safetensors,
    whose header is JSON with sorted keys (safetensors itself writes its metadata in hash-map order)."""
    outs = [tmp_path / f"run{i}" for i in range(2)]
    for out in outs:
        r = run_cli("prune", *FIXTURE_ARGS, "--target-macs", "2x", "--data", FIXTURE_CALIB, "--batches", "2", "-o", out)
        assert r.returncode == 0, r.stderr
    first, second = ((out / "model.safetensors").read_bytes() for out in outs)
    assert first == second
    n = int.from_bytes(first[:8], "little")
    header = json.loads(first[8:8 + n])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    recipes = [json.loads((out / RECIPE_NAME).read_text()) for out in outs]
    for r in recipes:
        r["provenance"][-1].pop("time", None)
    assert recipes[0] == recipes[1]
    # with SOURCE_DATE_EPOCH (the reproducible-builds convention) the recipe is identical byte for byte too
    pinned = [tmp_path / f"pinned{i}" for i in range(2)]
    for out in pinned:
        r = run_cli("prune", *FIXTURE_ARGS, "--target-macs", "2x", "--data", FIXTURE_CALIB, "--batches", "2", "-o", out,
                    env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert r.returncode == 0, r.stderr
    for name in (RECIPE_NAME, "model.safetensors"):
        assert (pinned[0] / name).read_bytes() == (pinned[1] / name).read_bytes(), name
    assert json.loads((pinned[0] / RECIPE_NAME).read_text())["provenance"][-1]["time"] == "2023-11-14T22:13:20+00:00"
    assert torch.equal(next(iter(load(outs[0], trust_code=True).state_dict().values())),
                       next(iter(load(outs[1], trust_code=True).state_dict().values())))
