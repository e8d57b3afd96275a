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
from explainfix_cli.io.schema import SCHEMA_VERSION
from tests.conftest import FIXTURE_ARCH, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, invoke


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "p"
    r = invoke("prune", *FIXTURE_ARGS, "--pct", "60", "--data", FIXTURE_CALIB, "-o", out)
    assert r.exit_code == 0, r.output
    return out


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
