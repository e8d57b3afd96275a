"""sweep: several budgets from one scoring pass; a table, JSON and tradeoff.png; every point exact."""
import json

import pytest
from PIL import Image

from explainfix_cli.core import gradients as grad
from explainfix_cli.jobs import BenchOptions, DataSpec, ModelSpec, Run, sweep_job
from explainfix_cli.jobs.sweep import parse_targets
from explainfix_cli import load

from conftest import FIXTURE_ARCH, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, FIXTURES, invoke

EVAL = FIXTURES / "digits" / "eval"


def test_sweep_scores_once_and_meets_every_budget(tmp_path, monkeypatch):
    passes = []
    real = grad.weight_saliency

    def counting(*args, **kwargs):  # count the calibration passes (the real function still runs)
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("explainfix_cli.prune.scoring.grad.weight_saliency", counting)
    job = sweep_job(ModelSpec(FIXTURE_PT, FIXTURE_ARCH), DataSpec(FIXTURE_CALIB, "32"), "2x,3x,4x",
                    eval_data=EVAL, timing=BenchOptions(bench_iters=5), save_models=True, out=tmp_path / "sw",
                    run=Run(device="cpu"))
    assert len(passes) == 1
    r = job.report
    assert [p["target"] for p in r["points"]] == ["2x", "3x", "4x"]
    for p in r["points"]:
        assert p["within_tolerance"] and abs(p["macs_kept"] - p["requested"]) <= 0.02 * p["requested"], p
        assert p["self_check"] == "passed" and p["latency_ms"] > 0 and 0 <= p["accuracy"] <= 1
    kept = [p["macs_kept"] for p in r["points"]]
    assert kept == sorted(kept, reverse=True)
    files = {f.name for f in job.out.iterdir()}
    assert {"sweep.json", "sweep.md", "tradeoff.png", "points"} <= files
    with Image.open(job.out / "tradeoff.png") as im:
        assert im.size[0] > 800  # two panels: MACs and latency
    md = (job.out / "sweep.md").read_text()
    assert "| 3x |" in md and "| original |" in md
    # each saved point reloads and has the MACs the table says
    from explainfix_cli.core.model import count_macs
    import torch

    model = load(job.out / "points" / "3x", trust_code=True)
    assert count_macs(model, torch.randn(1, 1, 32, 32)) == r["points"][1]["macs"]


def test_sweep_cli_json_and_one_shot_table(tmp_path):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--targets", "2x,0.4", "--no-bench", "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert [p["target"] for p in report["points"]] == ["2x", "0.4"] and report["saliency_passes"] == 1
    assert report["original"]["latency_ms"] is None and (tmp_path / "s" / "tradeoff.png").is_file()
    assert "accuracy (pruned)" not in (tmp_path / "s" / "sweep.md").read_text()  # one-shot: one accuracy column


def test_sweep_by_magnitude_reports_no_saliency_pass(tmp_path, monkeypatch):
    passes = []
    real = grad.weight_saliency
    monkeypatch.setattr("explainfix_cli.prune.scoring.grad.weight_saliency",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--targets", "2x", "--rank", "l1-per-layer",
                 "--no-bench", "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    assert passes == []  # no backward pass ran
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["saliency_passes"] == 0 and report["points"][0]["rank_used"] == "l1-per-layer"
    assert "no saliency pass" in (tmp_path / "s" / "sweep.md").read_text()


def test_sweep_with_distillation_per_point(tmp_path):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--eval-data", EVAL, "--targets", "2x",
                 "--finetune-epochs", "1", "--distill", "--no-bench", "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    (point,) = report["points"]
    assert point["finetune"]["options"]["objective"] == "distillation" and report["distill"]["alpha"] == 0.9
    assert "accuracy (pruned)" in (tmp_path / "s" / "sweep.md").read_text()


@pytest.mark.parametrize("targets, message", [
    ("", "--targets needs at least one budget"),
    ("2x,2x", "a budget is given twice"),
    ("2x,abc", "--targets must be a fraction in (0, 1) or a factor"),
    ("2x,1.5", "a fraction kept must be in (0, 1)"),
])
def test_bad_targets(tmp_path, targets, message):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--targets", targets, "-o", tmp_path / "x")
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_parse_targets_orders_by_size():
    assert [label for label, _ in parse_targets("10x,2x,0.3")] == ["2x", "0.3", "10x"]


def test_sweep_compare_torch_pruning_same_budget_same_recovery(tmp_path):
    from matplotlib.lines import Line2D

    from explainfix_cli.explain.figures import tradeoff_figure

    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--eval-data", EVAL, "--targets", "2x,4x",
                 "--finetune-epochs", "1", "--compare", "torch-pruning", "--no-bench", "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["compare"] == "torch-pruning"
    for p in report["points"]:
        c = p["compare"]
        assert c["tool"] == "torch-pruning" and c["importance"] == "l1" and "error" not in c, c
        assert c["macs_kept"] <= p["requested"] * 1.02 and c["within_budget"] and 0 < c["ratio"] < 1, c
        assert 0 <= c["accuracy_after_prune"] <= 1 and 0 <= c["accuracy"] <= 1 and 0 <= c["agreement"] <= 1, c
    assert report["points"][0]["compare"]["macs_kept"] > report["points"][1]["compare"]["macs_kept"]
    fig = tradeoff_figure(report)
    labels = [line.get_label() for line in fig.axes[0].get_children() if isinstance(line, Line2D)]
    assert "Torch-Pruning L1 (uniform) + same recovery" in labels, labels
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "| 2x Torch-Pruning L1 |" in md and "| 4x Torch-Pruning L1 |" in md
    assert not (tmp_path / "s" / "points").exists()  # the peer's models are never written


HARD_CODED_VIEW = """
import torch
from torch import nn


class HardCodedView(nn.Module):
    \"\"\"conv → BN → ReLU → conv, then a reshape that names the second conv's 32 channels by a literal.\"\"\"

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.reshape(x.shape[0], 32, -1).mean(-1))


class TrainingOnly(HardCodedView):
    \"\"\"The literal only in training mode: a pruned model that runs in eval mode fails in its first training pass.\"\"\"

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        pooled = x.reshape(x.shape[0], 32, -1).mean(-1) if self.training else x.mean((2, 3))
        return self.fc(pooled)
"""


@pytest.mark.parametrize("cls,why", [
    ("HardCodedView", "Torch-Pruning failed on this model: RuntimeError: "),  # its own eval forward fails
    ("TrainingOnly", "Torch-Pruning's pruned model failed to recover or run: RuntimeError: "),  # BatchNorm pass fails
])
def test_sweep_compare_records_a_peer_failure_and_goes_on(tmp_path, cls, why):
    # a real failure of the peer: Torch-Pruning cuts conv2, whose 32 channels the forward names by a literal, and
    # its pruned model no longer runs; explainfix's engine keeps those channels (frozen) and prunes conv1's
    pytest.importorskip("torch_pruning")
    (tmp_path / "hcv.py").write_text(HARD_CODED_VIEW)
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("hcv", tmp_path / "hcv.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    torch.save(getattr(mod, cls)().state_dict(), tmp_path / "hcv.pt")
    job = sweep_job(ModelSpec(tmp_path / "hcv.pt", f"{tmp_path / 'hcv.py'}:{cls}", trust_code=True),
                    DataSpec(FIXTURE_CALIB, "32"), "2x", compare="torch-pruning", save_models=True,
                    timing=BenchOptions(bench=False), out=tmp_path / "sw", run=Run(device="cpu"))
    (point,) = job.report["points"]
    assert point["self_check"] == "passed" and point["accuracy"] is not None  # explainfix's point is unaffected
    assert point["compare"]["error"].startswith(why), point["compare"]
    assert "\n" not in point["compare"]["error"]
    assert "| 2x Torch-Pruning L1 | failed: " in (job.out / "sweep.md").read_text()
    pruned = load(job.out / "points" / "2x", trust_code=True)  # what the sweep wrote loads back
    assert pruned.conv2.out_channels == 32 and pruned.conv1.out_channels < 16  # the literal's space kept, conv1 cut
    pruned.train()(torch.randn(2, 1, 32, 32))


def test_sweep_compare_unknown_peer_is_bad_input(tmp_path):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--targets", "2x", "--compare", "foo", "-o", tmp_path / "x")
    assert res.exit_code == 2, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == [
        "error: --compare must be one of: torch-pruning; got 'foo'"], res.output
    assert not (tmp_path / "x").exists()


def test_sweep_compare_without_torch_pruning_says_which_extra(tmp_path):
    import subprocess
    import sys

    args = ["explainfix", "sweep", *map(str, FIXTURE_ARGS), "--data", str(FIXTURE_CALIB), "--targets", "2x",
            "--compare", "torch-pruning", "-o", str(tmp_path / "x")]
    code = ("import sys; sys.modules['torch_pruning'] = None; sys.argv = " + repr(args) +
            "; from explainfix_cli.cli import main; main()")  # as if Torch-Pruning were not installed
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "explainfix-cli[compare]" in lines[0], p.stderr
    assert not (tmp_path / "x").exists()


def test_one_pass_serves_budgets_on_both_sides_of_the_auto_crossover(tmp_path, monkeypatch):
    """--rank auto picks per-cost at 2x and l1-per-layer at 10x; the one saliency pass serves both points, and each
    point says which rank ran and why."""
    passes = []
    real = grad.weight_saliency

    def counting(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("explainfix_cli.prune.scoring.grad.weight_saliency", counting)
    job = sweep_job(ModelSpec(FIXTURE_PT, FIXTURE_ARCH), DataSpec(FIXTURE_CALIB, "32"), "2x,10x",
                    timing=BenchOptions(bench=False), out=tmp_path / "sw", run=Run(device="cpu"))
    assert len(passes) == 1
    assert job.report["rank"] == "auto"
    (two, ten) = job.report["points"]
    assert (two["rank_used"], ten["rank_used"]) == ("per-cost", "l1-per-layer")
    assert "beyond 8×" in ten["rank_why"] and "within 8×" in two["rank_why"]
    assert all(p["self_check"] == "passed" for p in (two, ten))  # the fixture is coarse: 10x lands near, not always within 2 %

