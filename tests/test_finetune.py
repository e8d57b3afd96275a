"""finetune: frozen filters stay frozen, the recipe chain survives, and the training loop itself."""
import json
import shutil

import torch
from torch import nn

from explainfix_cli import load
from explainfix_cli.io.codec import read_safetensors
from explainfix_cli.train.finetune import TrainOptions, accuracy, finetune, predict, tensor_batches

from conftest import FIXTURES, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, cli_json, invoke

EVAL = FIXTURES / "digits" / "eval"
BASE = FIXTURE_ARGS


def test_finetune_keeps_fixed_filters_frozen(tmp_path):
    fixed = tmp_path / "fixed"
    assert invoke("fix", *BASE, "--init", "ghaar", "-o", fixed).exit_code == 0
    tuned = tmp_path / "tuned"
    report = cli_json("finetune", fixed, "--trust-code", "--data", FIXTURE_CALIB, "--eval-data", EVAL, "--epochs", "1",
                      "--batch-size", "25", "-o", tuned)
    recipe = json.loads((tuned / "explainfix.json").read_text())
    frozen = recipe["frozen"]
    assert frozen and report["fixed_spatial"] and report["frozen_unchanged"]
    before, _ = read_safetensors(fixed / "model.safetensors")
    after, _ = read_safetensors(tuned / "model.safetensors")
    for name in frozen:
        assert torch.equal(before[name], after[name]), f"frozen {name} changed"
    assert not torch.equal(before["fc.weight"], after["fc.weight"])  # the rest did train
    assert [p["command"] for p in recipe["provenance"]] == ["fix", "finetune"]
    assert [e["op"] for e in recipe["edits"]] == ["fix", "finetune"]
    (epoch,) = report["epochs"]
    assert epoch["samples"] == 100 and epoch["loss"] > 0 and 0 <= epoch["accuracy"] <= 1
    assert epoch["eval_accuracy"] is not None and report["options"]["optimizer"] == "sgd"
    assert {n for n, p in load(tuned, trust_code=True).named_parameters() if not p.requires_grad} == set(frozen)


def test_finetune_no_fixed_spatial_trains_everything(tmp_path):
    fixed = tmp_path / "fixed"
    assert invoke("fix", *BASE, "--init", "keep", "-o", fixed).exit_code == 0
    tuned = tmp_path / "tuned"
    res = invoke("finetune", fixed, "--trust-code", "--data", FIXTURE_CALIB, "--epochs", "1", "--no-fixed-spatial",
                 "--optimizer", "adamw", "-o", tuned)
    assert res.exit_code == 0, res.output
    assert json.loads((tuned / "explainfix.json").read_text())["frozen"] == []
    before, _ = read_safetensors(fixed / "model.safetensors")
    after, _ = read_safetensors(tuned / "model.safetensors")
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_finetune_after_prune_reloads_pruned_shapes(tmp_path):
    pruned, tuned = tmp_path / "pruned", tmp_path / "tuned"
    assert invoke("prune", *BASE, "--pct", "90", "--data", FIXTURE_CALIB, "-o", pruned).exit_code == 0
    res = invoke("finetune", pruned, "--trust-code", "--data", FIXTURE_CALIB, "--epochs", "1", "--batches", "2", "-o", tuned)
    assert res.exit_code == 0, res.output
    a, b = load(pruned, trust_code=True), load(tuned, trust_code=True)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert all(p.requires_grad for p in b.parameters())  # not a fixed model: nothing frozen by default


def test_finetune_unlabeled_data_is_refused(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((FIXTURE_CALIB / "0").iterdir())[:3]:
        shutil.copy(p, flat / p.name)
    res = invoke("finetune", *BASE, "--data", flat, "--epochs", "1", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "unlabeled" in res.stderr
    assert not (tmp_path / "o").exists()


def test_finetune_loop_learns_and_respects_requires_grad():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    batches, steps = tensor_batches(x, y, 32, seed=0)
    steps_seen = []
    res = finetune(model, batches, TrainOptions(epochs=5, optimizer="adamw", lr=0.05), steps_per_epoch=steps,
                   on_step=steps_seen.append)
    assert torch.equal(model[0].weight, frozen) and res.frozen_tensors == ["0.weight"]
    assert len(steps_seen) == 5 * steps and steps_seen[-1].steps == steps
    assert res.epochs[-1].loss < res.epochs[0].loss
    assert accuracy(*predict(model, [(x, y)])) > 0.9


def test_finetune_fixed_spatial_on_a_learned_model_freezes_its_filters(tmp_path):
    tuned = tmp_path / "tuned"
    res = invoke("finetune", *BASE, "--data", FIXTURE_CALIB, "--epochs", "1", "--batches", "1", "--fixed-spatial", "-o", tuned)
    assert res.exit_code == 0, res.output
    frozen = json.loads((tuned / "explainfix.json").read_text())["frozen"]
    assert frozen and all(name.endswith(".weight") for name in frozen)
    before = dict(torch.load(FIXTURE_PT, weights_only=True))
    after, _ = read_safetensors(tuned / "model.safetensors")
    assert all(torch.equal(before[n], after[n]) for n in frozen)


def test_every_epochs_eval_accuracy_is_of_the_model_with_batchnorm_re_estimated():
    """An epoch's eval accuracy is measured as the model would be written: BatchNorm statistics re-estimated on
    the training data first (mid-training running statistics read 22.7 % then 96.0 % on the fixture)."""
    import copy

    from explainfix_cli.train.finetune import recalibrate_batchnorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    batches, steps = tensor_batches(x, y, 32, seed=0)
    seen = []

    def evaluate(m):
        fresh = copy.deepcopy(m)
        recalibrate_batchnorm(fresh, batches(len(seen)))  # the epoch's own re-estimation (call 0: before training)
        seen.append(torch.allclose(m[1].running_mean, fresh[1].running_mean) and
                    torch.allclose(m[1].running_var, fresh[1].running_var))
        return 0.5

    res = finetune(model, batches, TrainOptions(epochs=3, lr=0.5), steps_per_epoch=steps, evaluate=evaluate)
    assert seen == [False, True, True, True]  # before training: the initial statistics; then every epoch's
    assert [e.eval_accuracy for e in res.epochs] == [0.5, 0.5, 0.5]
