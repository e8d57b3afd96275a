"""Distillation: learn from the original model's outputs, from an unlabeled folder; compress --distill and --steps."""
import json
import shutil

import pytest
import torch
from torch import nn

from explainfix_cli.train.batches import tensor_batches
from explainfix_cli.train.finetune import DISTILL_LR, OPTIMIZERS, TrainOptions, finetune
from explainfix_cli.train.objectives import Distillation, DistillOptions

from conftest import FIXTURE_ARGS, FIXTURE_CALIB, FIXTURES, cli_json, invoke, sha256

EVAL = FIXTURES / "digits" / "eval"


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """The fixture's calibration images in one flat folder: no labels at all."""
    root = tmp_path_factory.mktemp("unlabeled")
    for png in sorted(FIXTURE_CALIB.rglob("*.png")):
        shutil.copy(png, root / f"{png.parent.name}_{png.name}")
    return root


@pytest.fixture
def pruned(pruned_fixture):
    return pruned_fixture("--target-macs", "3x", "--round-to", "1")


def test_finetune_distill_from_unlabeled_folder(pruned, unlabeled, tmp_path):
    out = tmp_path / "tuned"
    report = cli_json("finetune", pruned, "--trust-code", "--distill", "--data", unlabeled, "--eval-data", EVAL,
                      "--epochs", "3", "--batch-size", "20", "-o", out)
    assert report["options"]["objective"] == "distillation" and report["options"]["temperature"] == 4.0
    assert report["options"]["lr"] == report["epochs"][0]["lr_used"][0] == DISTILL_LR["sgd"]  # a distillation's own default
    losses = [e["loss"] for e in report["epochs"]]
    assert losses[-1] < losses[0], losses  # the student moves toward the teacher
    assert report["eval_accuracy_after"] > report["eval_accuracy_before"] and report["eval_fell"] is False
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["provenance"][-1]["objective"] == "distillation"
    assert report["data"]["labeled"] is False


def test_cross_entropy_on_unlabeled_folder_points_to_distill(pruned, unlabeled, tmp_path):
    res = invoke("finetune", pruned, "--trust-code", "--data", unlabeled, "-o", tmp_path / "x")
    assert res.exit_code == 2 and "unlabeled" in res.output and "--distill" in res.output
    assert not (tmp_path / "x").exists()


def test_teacher_is_checked(pruned, unlabeled, tmp_path):
    bad = invoke("finetune", pruned, "--trust-code", "--teacher", FIXTURE_ARGS[0], "--data", unlabeled, "-o", tmp_path / "x")
    assert bad.exit_code == 2 and "--teacher is only used with --distill" in bad.output
    # a copy of the pruned dir whose recorded source no longer matches its file: refused, --teacher works
    moved = tmp_path / "moved"
    shutil.copytree(pruned, moved)
    recipe = json.loads((moved / "explainfix.json").read_text())
    changed = tmp_path / "changed.pt"
    changed.write_bytes(b"not the original")
    recipe["source"]["path"] = str(changed)
    (moved / "explainfix.json").write_text(json.dumps(recipe))
    res = invoke("finetune", moved, "--trust-code", "--distill", "--data", unlabeled, "-o", tmp_path / "y")
    assert res.exit_code == 2 and "changed since the recipe was written" in res.output, res.output
    before = sha256(FIXTURE_ARGS[0])
    ok = invoke("finetune", moved, "--trust-code", "--distill", "--teacher", FIXTURE_ARGS[0], "--data", unlabeled,
                "--epochs", "1", "-o", tmp_path / "z")
    assert ok.exit_code == 0, ok.output
    assert sha256(FIXTURE_ARGS[0]) == before


def test_alpha_one_ignores_labels_and_labels_change_the_loss():
    torch.manual_seed(0)
    teacher, student = nn.Linear(5, 3), nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    unl = torch.full((8,), -1)
    only_kd = Distillation(teacher, DistillOptions(alpha=1.0))
    assert torch.allclose(only_kd(student, x, y)[0], only_kd(student, x, unl)[0])
    mixed = Distillation(teacher, DistillOptions(alpha=0.5))
    assert not torch.allclose(mixed(student, x, y)[0], mixed(student, x, unl)[0])
    # the student equal to the teacher: no distillation loss
    assert float(only_kd(teacher, x, unl)[0]) == pytest.approx(0.0, abs=1e-6)


def test_dense_outputs_are_distilled_with_mse():
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

    teacher, student = net(), net()
    x = torch.randn(32, 3, 16, 16)
    batches, steps = tensor_batches(x, None, 8)
    res = finetune(student, batches, TrainOptions(epochs=4, optimizer="adamw", lr=1e-2, recalibrate_bn=False),
                   steps_per_epoch=steps, objective=Distillation(teacher))
    losses = [e.loss for e in res.epochs]
    assert losses[-1] < losses[0] and res.epochs[-1].accuracy is None
    assert res.options["objective"] == "distillation"


class TrainHead(nn.Module):
    """As a detection head: raw maps while training, decoded (N, A, C) predictions in eval mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        maps = self.body(x)
        return [maps] if self.training else maps.flatten(2).transpose(1, 2).sigmoid()


def test_a_head_with_training_mode_outputs_is_distilled_on_them():
    torch.manual_seed(0)
    teacher, student = TrainHead(), TrainHead()
    teacher.eval()
    stats = teacher.body[1].running_mean.clone()
    x = torch.randn(32, 3, 16, 16)
    batches, steps = tensor_batches(x, None, 8)
    objective = Distillation(teacher)
    res = finetune(student, batches, TrainOptions(epochs=4, optimizer="adamw", lr=1e-2, recalibrate_bn=False),
                   steps_per_epoch=steps, objective=objective)
    losses = [e.loss for e in res.epochs]
    assert objective.mirror and losses[-1] < losses[0]
    assert not teacher.training and torch.equal(teacher.body[1].running_mean, stats)  # its BN never trained


@pytest.mark.parametrize("bad, message", [
    (["--temperature", "0"], "--temperature must be a positive number"),
    (["--distill-alpha", "1.5"], "--distill-alpha is a weight in [0, 1]"),
])
def test_bad_distill_values(pruned, unlabeled, tmp_path, bad, message):
    res = invoke("finetune", pruned, "--trust-code", "--distill", *bad, "--data", unlabeled, "-o", tmp_path / "x")
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "x").exists()


def test_compress_steps_with_distillation_on_unlabeled_data(unlabeled, tmp_path):
    out = tmp_path / "c"
    report = cli_json("compress", *FIXTURE_ARGS, "--target-macs", "2x", "--steps", "2", "--round-to", "1",
                      "--finetune-epochs", "1", "--distill", "--data", unlabeled, "--eval-data", EVAL, "--no-bench", "-o", out)
    assert report["steps"] == 2 and len(report["rounds"]) == 2 and report["distill"]["temperature"] == 4.0
    budget = report["budget"]
    # the fixture's channel groups are coarse (3.2M MACs in all): the last round lands near, not always within 2 %
    assert budget["requested"] == 0.5 and abs(budget["achieved"] - 0.5) <= 0.025, budget
    # the verdict is the measured one, and a miss says where both rounds ended (an empty note only when met)
    assert budget["within_tolerance"] == (abs(budget["achieved"] - 0.5) <= 0.02 * 0.5), budget
    if budget["within_tolerance"]:
        assert budget["note"] == ""
    else:
        assert budget["note"].startswith(f"after 2 rounds {budget['achieved']:.3f} is kept (asked 0.500)"), budget
    assert report["rounds"][0]["macs_kept"] > 0.6  # the first round goes part of the way (√0.5 ≈ 0.71)
    assert report["compressed"]["macs"] / report["original"]["macs"] == pytest.approx(budget["achieved"])
    recipe = json.loads((out / "explainfix.json").read_text())
    ops = [e["op"] for e in recipe["edits"]]
    assert ops.count("prune") == 2 and ops.count("finetune") == 2
    assert report["finetune"]["options"]["objective"] == "distillation"
    assert report["finetune"]["options"]["lr"] == DISTILL_LR["sgd"]


def test_distillation_has_its_own_default_lr_and_an_explicit_lr_wins():
    assert TrainOptions().resolved().lr == OPTIMIZERS["sgd"][0] == 0.01
    assert TrainOptions().resolved(distill=True).lr == DISTILL_LR["sgd"] == 0.003
    assert TrainOptions(lr=0.02).resolved(distill=True).lr == 0.02
    assert TrainOptions(optimizer="adamw").resolved(distill=True).lr == OPTIMIZERS["adamw"][0]  # no other rate measured
    torch.manual_seed(0)
    teacher, student = nn.Linear(5, 3), nn.Linear(5, 3)
    batches, steps = tensor_batches(torch.randn(16, 5), None, 8)
    res = finetune(student, batches, TrainOptions(epochs=1, schedule="constant", recalibrate_bn=False),
                   steps_per_epoch=steps, objective=Distillation(teacher))
    assert res.options["lr"] == res.epochs[0].lr_used[0] == DISTILL_LR["sgd"]


@pytest.mark.parametrize("args, message", [
    (["--pct", "50", "--steps", "2"], "--steps needs a budget"),
    (["--target-macs", "2x", "--distill"], "--distill trains the pruned model: give --finetune-epochs"),
    (["--target-macs", "2x", "--steps", "0"], "--steps must be an integer in [1, 20]"),
    (["--target-macs", "2x", "--finetune-epochs", "1"], "--finetune-epochs needs labeled --data"),
])
def test_compress_bad_step_and_distill_values(unlabeled, tmp_path, args, message):
    res = invoke("compress", *FIXTURE_ARGS, *args, "--data", unlabeled, "-o", tmp_path / "x")
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_compress_steps_decide_the_rank_on_the_whole_budget(unlabeled, tmp_path):
    """--steps 2 to 10x is two rounds of about 3.2x each; --rank auto decides on the 10x asked (l1-per-layer),
    not on a round's share of it, and the report says so."""
    report = cli_json("compress", *FIXTURE_ARGS, "--target-macs", "10x", "--steps", "2", "--round-to", "1",
                      "--data", unlabeled, "--no-bench", "-o", tmp_path / "c")
    assert report["rank"] == "auto" and report["rank_used"] == "l1-per-layer", report
    assert "10× fewer MACs is beyond 8×" in report["rank_why"]
    assert len(report["rounds"]) == 2
