"""INT8 against its FP32 model, both in onnxruntime with the same session options, on held-out data.

    cmp = compare_onnx("model.onnx", "model.int8.onnx", eval_set.batches(16), threads=2)
    cmp.agreement, cmp.accuracy_fp32, cmp.accuracy_int8   # top-1 (classifiers) or per-pixel argmax agreement
    cmp.outputs[0]                                        # {"name", "snr_db", "cosine", "pixel_agreement"}
    gates = int8_gates(cmp, max_accuracy_drop=1.0, min_agreement=0.98)

Statistics are accumulated batch by batch (memory holds one batch of both models' outputs). Accuracies come
with a 95 % Wilson score interval. For every output: the signal-to-quantization-noise ratio
``10·log10(Σ fp32² / Σ (int8 − fp32)²)`` and the cosine of the two flattened outputs; for an (N, C, …)
output with C > 1 also the per-position argmax agreement (dense models: the share of pixels labelled alike).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import BadInput, first_line
from .verify import open_session

Z95 = 1.959963984540054


@dataclass
class Gate:
    name: str  # accuracy drop | agreement
    flag: str
    threshold: str
    value: str
    passed: bool
    detail: str = ""

    def failure_line(self) -> str:
        return f"{self.name} {self.value} (needs {self.threshold}, {self.flag}){': ' + self.detail if self.detail else ''}"


@dataclass
class Int8Comparison:
    samples: int = 0
    source: str = ""
    classifier: bool = False  # first output is (N, classes) logits
    dense: bool = False  # first output is (N, C, …) with C > 1 and spatial axes
    labeled: bool = False
    agreement: float | None = None  # top-1 (classifier) or per-pixel argmax (dense), first output
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    accuracy_fp32_ci: list[float] | None = None
    accuracy_int8_ci: list[float] | None = None
    outputs: list[dict] = field(default_factory=list)
    threads: int | None = None

    @property
    def accuracy_drop_pts(self) -> float | None:
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return 100 * (self.accuracy_fp32 - self.accuracy_int8)

    def brief(self) -> str:
        parts = []
        if self.agreement is not None:
            parts.append(f"{'top-1' if self.classifier else 'per-pixel'} agreement {self.agreement:.4f}")
        if self.accuracy_drop_pts is not None:
            parts.append(f"accuracy {100 * self.accuracy_fp32:.2f}% → {100 * self.accuracy_int8:.2f}%")
        if self.outputs:
            parts.append(f"SNR {self.outputs[0]['snr_db']:.1f} dB")
        return ", ".join(parts) + f" on {self.samples} samples of {self.source}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["accuracy_drop_pts"] = self.accuracy_drop_pts
        return d


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a proportion (95 % by default); None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


class _OutputStats:
    def __init__(self, name: str):
        self.name = name
        self.signal = self.noise = self.dot = self.norm_a = self.norm_b = 0.0
        self.pixels = self.pixels_agree = 0
        self.shape: list[int] | None = None

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        r, c = ref.astype(np.float64, copy=False), cand.astype(np.float64, copy=False)
        self.shape = list(ref.shape[1:]) if ref.ndim else []
        self.signal += float(np.sum(r * r))
        self.noise += float(np.sum((c - r) ** 2))
        self.dot += float(np.sum(r * c))
        self.norm_a += float(np.sum(r * r))
        self.norm_b += float(np.sum(c * c))
        if ref.ndim >= 3 and ref.shape[1] > 1:
            same = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
            self.pixels += int(same.size)
            self.pixels_agree += int(same.sum())

    def to_json(self) -> dict:
        snr = math.inf if self.noise == 0 else 10 * math.log10(max(self.signal, 1e-30) / self.noise)
        cos = self.dot / math.sqrt(self.norm_a * self.norm_b) if self.norm_a > 0 and self.norm_b > 0 else None
        return {"name": self.name, "shape": self.shape, "snr_db": snr if math.isfinite(snr) else 999.0, "cosine": cos,
                "pixel_agreement": self.pixels_agree / self.pixels if self.pixels else None}


def compare_onnx(fp32_path: str | Path, int8_path: str | Path, batches: Iterable, *, threads: int | None = 2,
                 source: str = "", sessions: tuple | None = None) -> Int8Comparison:
    """Run both models on every (x, y) batch and compare (see the module docstring). ``y < 0``: unlabeled.
    ``sessions`` reuses already-open (fp32, int8) sessions."""
    fp32, int8 = sessions or (open_session(fp32_path, threads), open_session(int8_path, threads))
    name = fp32.get_inputs()[0].name
    out_names = [o.name for o in fp32.get_outputs()]
    stats = [_OutputStats(n) for n in out_names]
    cmp = Int8Comparison(source=source, threads=threads)
    agree = correct_a = correct_b = labeled_n = 0
    all_labeled = True
    for x, y in batches:
        feed = {name: np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)}
        try:
            ref, cand = fp32.run(None, feed), int8.run(None, feed)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise BadInput(f"onnxruntime cannot run the models on input {list(feed[name].shape)}: {first_line(exc)}",
                           hint="check --input-size against the model") from None
        for s, r, c in zip(stats, ref, cand):
            s.add(np.asarray(r), np.asarray(c))
        first_r, first_c = np.asarray(ref[0]), np.asarray(cand[0])
        cmp.samples += len(feed[name])
        if first_r.ndim == 2 and first_r.shape[1] > 1:
            cmp.classifier = True
            pa, pb = first_r.argmax(1), first_c.argmax(1)
            agree += int((pa == pb).sum())
            labels = np.asarray(y.numpy() if hasattr(y, "numpy") else y)
            if len(labels) and (labels >= 0).all() and labels.max() < first_r.shape[1]:
                correct_a += int((pa == labels).sum())
                correct_b += int((pb == labels).sum())
                labeled_n += len(labels)
            else:
                all_labeled = False
        elif first_r.ndim >= 3 and first_r.shape[1] > 1:
            cmp.dense = True
    cmp.outputs = [s.to_json() for s in stats]
    if cmp.classifier and cmp.samples:
        cmp.agreement = agree / cmp.samples
        if all_labeled and labeled_n == cmp.samples:
            cmp.labeled = True
            cmp.accuracy_fp32, cmp.accuracy_int8 = correct_a / labeled_n, correct_b / labeled_n
            cmp.accuracy_fp32_ci, cmp.accuracy_int8_ci = wilson(correct_a, labeled_n), wilson(correct_b, labeled_n)
    elif cmp.dense:
        cmp.agreement = cmp.outputs[0]["pixel_agreement"]
    return cmp


def check_gate_values(max_accuracy_drop: float | None, min_agreement: float | None) -> None:
    if max_accuracy_drop is not None and not (max_accuracy_drop >= 0 and math.isfinite(max_accuracy_drop)):
        raise BadInput(f"--max-accuracy-drop must be ≥ 0 percentage points, got {max_accuracy_drop:g}")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise BadInput(f"--min-agreement is a fraction in [0, 1], got {min_agreement:g}", hint="e.g. --min-agreement 0.98")


def int8_gates(cmp: Int8Comparison, max_accuracy_drop: float | None = None,
               min_agreement: float | None = None) -> list[Gate]:
    """The gates asked for, with the numbers (accuracy drop in percentage points, agreement as a fraction)."""
    gates = []
    where = f"on {cmp.samples} samples of {cmp.source}"
    if max_accuracy_drop is not None:
        drop = cmp.accuracy_drop_pts
        if drop is None:
            raise BadInput(f"--max-accuracy-drop needs labeled (N, classes) evaluation data; {cmp.source} gives none",
                           hint="pass --eval-data with class subfolders, or gate with --min-agreement")
        ci = cmp.accuracy_int8_ci
        gates.append(Gate("accuracy drop", "--max-accuracy-drop", f"≤ {max_accuracy_drop:g} pts", f"{drop:.2f} pts",
                          drop <= max_accuracy_drop + 1e-9,
                          f"FP32 {100 * cmp.accuracy_fp32:.2f}% → INT8 {100 * cmp.accuracy_int8:.2f}% "
                          f"(95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%) {where}"))
    if min_agreement is not None:
        if cmp.agreement is None:
            raise BadInput(f"--min-agreement compares top-1 classes or per-pixel labels; the model's first output on "
                           f"{cmp.source} is neither", hint="gate on the SNR in report.json instead")
        what = "top-1 agreement" if cmp.classifier else "per-pixel agreement"
        gates.append(Gate(what, "--min-agreement", f"≥ {min_agreement:g}", f"{cmp.agreement:.4f}",
                          cmp.agreement >= min_agreement - 1e-12, where))
    return gates


def measure_int8(fp32: Path, int8: Path, plain: Path | None, shape: tuple[int, ...], float_nodes: list[dict],
                 macs: dict[str, int], *, threads: int = 2, iters: int = 50, rounds: int = 5, seed: int = 0,
                 batch_sizes: tuple[int, ...] = (1, 8)) -> dict:
    """FP32 and INT8 (and ``plain``: the INT8 model before layers were kept in float) timed interleaved
    (deploy/bench.py) at each batch size, with the CPU, ISA and onnxruntime version, a plain verdict and
    what each float layer costs (the measured INT8 − plain difference, shared by MACs: an estimate)."""
    import onnxruntime

    from .bench import BenchTarget, bench_interleaved, compare_bench
    from .isa import detect_isa

    isa = detect_isa()
    targets = [BenchTarget(fp32, shape, label="FP32"), BenchTarget(int8, shape, label="INT8")]
    if plain is not None:
        targets.append(BenchTarget(plain, shape, label="INT8, nothing in float"))
    per_batch = []
    for b in batch_sizes:
        rows = compare_bench(bench_interleaved(targets, batch_size=b, threads=threads, iters=iters, rounds=rounds,
                                               seed=seed))
        r = rows[1]
        lo = r["latency_ratio_min"] if r["latency_ratio_min"] is not None else r["latency_ratio"]
        hi = r["latency_ratio_max"] if r["latency_ratio_max"] is not None else r["latency_ratio"]
        state = "faster" if hi < 1.0 else "slower" if lo >= 1.0 else "unclear"
        per_batch.append({"batch_size": b, "rows": rows, "speedup": 1 / r["latency_ratio"],
                          "speedup_range": [1 / hi, 1 / lo], "faster": state == "faster", "state": state})
    verdict, recommend = _verdict(per_batch)
    return {"threads": threads, "iters": iters, "rounds": rounds, "cpu": isa.cpu_model, "isa": isa.name,
            "onnxruntime": onnxruntime.__version__, "batches": per_batch, "verdict": verdict, "recommend": recommend,
            "float_cost": _float_cost(per_batch[0]["rows"], float_nodes, macs) if plain is not None else None}


def _verdict(per_batch: list[dict]) -> tuple[str, str]:
    """One plain sentence and the file to deploy: INT8 only where every interleaved round measured it faster."""
    def desc(p: dict) -> str:
        return f"batch {p['batch_size']}: {p['speedup']:.2f}× ({p['speedup_range'][0]:.2f}–{p['speedup_range'][1]:.2f})"

    states = {p["state"] for p in per_batch}
    every = "; ".join(desc(p) for p in per_batch)
    if states == {"faster"}:
        return f"INT8 is faster than FP32 on this CPU in every round ({every})", "model.int8.onnx"
    if "faster" not in states:
        how = "slower than" if states == {"slower"} else "not measurably faster than"
        return f"INT8 is {how} FP32 on this CPU ({every}); deploy the FP32 model.onnx here", "model.onnx"
    fast = [p for p in per_batch if p["faster"]]
    rest = [p for p in per_batch if not p["faster"]]
    return (f"INT8 is faster at {', '.join(desc(p) for p in fast)}, but not measurably at "
            f"{', '.join(desc(p) for p in rest)} (speed-up per round, min–max): choose by the batch size you deploy with",
            "depends on the batch size")


def _float_cost(rows: list[dict], float_nodes: list[dict], macs: dict[str, int]) -> dict:
    """What keeping layers in float costs at the first batch size: measured in total, shared by MACs."""
    final, plain = rows[1], rows[2]
    extra = final["p50_ms"] - plain["p50_ms"]
    weighted = {n["name"]: macs.get(n["name"], 0) for n in float_nodes}
    total = sum(weighted.values()) or 1
    return {"extra_ms": extra, "ratio_to_all_int8": final["latency_ratio"] / plain["latency_ratio"],
            "per_layer_ms_estimate": {name: extra * m / total for name, m in weighted.items()},
            "how": "INT8 timed against the same model with nothing kept in float (interleaved); the difference "
                   "shared among the float layers by their MACs"}
