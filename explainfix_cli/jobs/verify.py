"""``explainfix verify``: an ONNX file against a loadable torch model, on calibration or seeded random inputs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import BadInput
from ..deploy.verify import check_tolerances
from .result import JobResult
from .common import DataSpec, ModelSpec, open_inputs
from .export import VERIFY_SAMPLES, verification_inputs


@dataclass
class VerifyJob(JobResult):
    result: Any  # deploy.verify.VerifyResult
    report: dict

    @property
    def passed(self) -> bool:
        return self.result.passed

    def failure_message(self) -> str:
        return f"ONNX output differs from the reference. {self.result.summary_line()}"


def verify_job(onnx_path: Path, reference: ModelSpec, data: DataSpec, atol: float = 1e-4, rtol: float = 1e-3,
               seed: int = 0) -> VerifyJob:
    """Compare an ONNX file with a loadable model on calibration (or seeded random) inputs."""
    from ..deploy.verify import verify_onnx

    if not Path(onnx_path).is_file():
        raise BadInput(f"ONNX file {onnx_path} does not exist")
    check_tolerances(atol, rtol)
    opened = open_inputs(reference, data, "cpu", purpose="verify")
    inputs = verification_inputs(opened.calib, opened.pre, data.batch_size, VERIFY_SAMPLES, seed)
    result = verify_onnx(onnx_path, opened.model, inputs, atol=atol, rtol=rtol)
    return VerifyJob(result, {"command": "verify", "onnx": str(onnx_path), "reference": str(reference.path),
                              **result.to_json(), "summary": result.summary_line()})


