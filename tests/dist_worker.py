"""Run by tests/test_distributed.py under torchrun (real processes, gloo): the library's finetune job on
every rank, then each rank saves what it ended with so the test can compare the ranks."""
import sys
from pathlib import Path

import torch

from explainfix_cli import jobs
from explainfix_cli.core import dist
from explainfix_cli.train.finetune import TrainOptions

out, model_path, arch, calib = map(Path, sys.argv[1:5])
job = jobs.finetune_job(jobs.ModelSpec(model_path, str(arch) + ":DigitsResNet"),
                        jobs.DataSpec(calib, input_size="32", batch_size=6, workers=int(sys.argv[5])),
                        TrainOptions(epochs=1), out=out / "tuned", device="cpu", seed=1)
torch.save({"state": job.model.state_dict(), "samples": job.result.epochs[-1].samples, "world": dist.world()},
           out / f"rank{dist.rank()}.pt")
