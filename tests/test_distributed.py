"""torchrun with two real gloo processes on the CPU (#12): the same command, the same result, one set of files.

Every run here is ``torchrun --nproc-per-node 2`` in a subprocess; nothing of torch.distributed is mocked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FIXTURE_ARCH_FILE, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, REPO, run_cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def torchrun(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "EXPLAINFIX_DEBUG")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _same_weights(a: Path, b: Path, tol: float = 1e-5) -> None:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].shape == y[k].shape, k
        assert torch.allclose(x[k].double(), y[k].double(), rtol=tol, atol=tol), k


def test_the_sensitivity_probe_on_two_ranks_reads_what_one_reads(tmp_path):
    """The probe's image limit ends inside the data (27 images: 6 of 9 batches of 5): two processes read global
    batches 0-5 between them, as one process does, and measure the same curves."""
    worker = REPO / "tests" / "dist_probe_worker.py"
    one = subprocess.run([sys.executable, worker, tmp_path], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = torchrun(worker, tmp_path)
    assert two.returncode == 0, two.stderr
    a, b0, b1 = (torch.load(tmp_path / f) for f in ("probe0_1.pt", "probe0_2.pt", "probe1_2.pt"))
    assert b0["world"] == b1["world"] == 2 and a["world"] == 1
    assert a["curves"].keys() == b0["curves"].keys() and b0["curves"] == b1["curves"]  # every rank the same cut
    for k, v in a["curves"].items():
        assert v == pytest.approx(b0["curves"][k], rel=1e-9, abs=1e-15), k
    assert max(v[0] for v in a["curves"].values()) > 0


@pytest.mark.parametrize("rank", [[], ["--rank", "sensitivity"]])  # sensitivity: each rank probes its shard, sums reduced
def test_prune_on_two_ranks_equals_one(tmp_path, rank):
    """100 images in batches of 7: 15 batches, 8 on rank 0 and 7 on rank 1 — none lost, none used twice."""
    args = ["prune", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--target-macs", "2x", "--batch-size", "7", "--json", *rank]
    one = run_cli(*args, "-o", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun("-m", "explainfix_cli", *args, "-o", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # one JSON document: rank 1 prints nothing
    for key in ("macs_after", "params_after", "channels_removed", "groups_removed", "agreement", "accuracy_after",
                "eval_samples"):
        assert a[key] == b[key], key
    assert b["eval_samples"] == 100 and b["recalibrated"]["batches"] == a["recalibrated"]["batches"] == 15
    ra, rb = (json.loads((tmp_path / d / "explainfix.json").read_text()) for d in ("one", "two"))
    assert ra["edits"] == rb["edits"]  # the same channels removed
    _same_weights(tmp_path / "one", tmp_path / "two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one set of files, no temp dirs
    assert "error" not in two.stderr.lower()
    assert b["options"]["rank_used"] == (rank[-1] if rank else "per-cost")


def test_explain_on_two_ranks_equals_one(tmp_path):
    args = ["explain", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--batch-size", "9"]
    assert run_cli(*args, "-o", tmp_path / "one").returncode == 0
    two = torchrun("-m", "explainfix_cli", *args, "-o", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / d / "spectra.json").read_text()) for d in ("one", "two"))
    assert a["num_batches"] == b["num_batches"] == 12
    for la, lb in zip(a["layers"], b["layers"]):
        for key in ("ed", "e1", "e0"):
            if la.get(key) is not None:
                assert torch.allclose(torch.tensor(la[key]), torch.tensor(lb[key]), rtol=1e-5, atol=1e-9), (la["name"], key)


@pytest.mark.parametrize("workers", [0, 2])
def test_finetune_ddp_keeps_the_ranks_identical(tmp_path, workers):
    r = torchrun(REPO / "tests" / "dist_worker.py", tmp_path, FIXTURE_PT, FIXTURE_ARCH_FILE, FIXTURE_CALIB, workers)
    assert r.returncode == 0, r.stderr
    s0, s1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert s0["world"] == s1["world"] == 2
    assert s0["samples"] == s1["samples"] == 96  # 16 batches of 6 (+4): 8 per rank, the remainder left out
    for k, v in s0["state"].items():
        assert torch.equal(v, s1["state"][k]), k  # DDP: the same update on both ranks
    before = torch.load(FIXTURE_PT)
    assert not torch.equal(before["conv1.weight"], s0["state"]["conv1.weight"])  # it did train
    assert (tmp_path / "tuned" / "model.safetensors").is_file()  # written once, by rank 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.pt", "rank1.pt", "tuned"]


def test_a_rank_that_fails_ends_the_run(tmp_path):
    """A corrupt image that only rank 1's shard holds: rank 1 exits 2 and rank 0, waiting in a collective, is
    stopped by torchrun; the run ends non-zero, promptly, and writes nothing."""
    from explainfix_cli.io.data import Preprocessing, load_calibration

    data = tmp_path / "data"
    for d in FIXTURE_CALIB.iterdir():
        (data / d.name).mkdir(parents=True)
        for f in d.iterdir():
            (data / d.name / f.name).write_bytes(f.read_bytes())
    calib = load_calibration(data, Preprocessing(input_size=(32, 32), channels=1))
    bs = 10
    order = torch.randperm(len(calib), generator=torch.Generator().manual_seed(0)).tolist()  # prune's seeded order
    batch_of = {order[i]: i // bs for i in range(len(order))}
    victim = next(i for i in range(8, len(calib)) if batch_of[i] % 2 == 1)  # in rank 1's shard, not a check input
    calib.files[victim].write_bytes(b"not a png")
    t0 = time.monotonic()
    r = torchrun("-m", "explainfix_cli", "prune", *FIXTURE_ARGS, "--data", data, "--target-macs", "2x",
                 "--batch-size", str(bs), "-o", tmp_path / "out", timeout=240)
    assert r.returncode != 0 and time.monotonic() - t0 < 120
    assert f"error (rank 1): cannot read image {calib.files[victim]}" in r.stderr
    assert "exitcode  : 2" in r.stderr  # torchrun's summary names the rank's documented exit code
    assert not (tmp_path / "out").exists()
