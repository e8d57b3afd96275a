"""One module per command: open the inputs, call the stage packages, write outputs atomically, return a result.

Jobs never print; the CLI renders their results. They are also the API for scripts that want the CLI's
behaviour without a shell."""
from .bench import BenchOptions, bench_job
from .common import DataSpec, ModelSpec, Run
from .compress import compress_job
from .explain import explain_job
from .export import export_job
from .finetune import finetune_job
from .fix import fix_job
from .info import info_job
from .prune import prune_job
from .sweep import sweep_job
from .verify import verify_job

__all__ = ["BenchOptions", "DataSpec", "ModelSpec", "Run", "bench_job", "compress_job", "explain_job", "export_job",
           "finetune_job", "fix_job", "info_job", "prune_job", "sweep_job", "verify_job"]
