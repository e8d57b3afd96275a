#!/usr/bin/env python
"""INT8 on CPU: explainfix quantize against onnxruntime-only INT8, on trained Fashion-MNIST models (issue #26).

    .venv/bin/python benchmarks/int8.py             # ~35 min on 2 CPU cores (bases cached in benchmarks/results/)
    .venv/bin/python benchmarks/int8.py --quick     # 2,000 test images, 50 timed runs, compress at 2x for 1 epoch

For a ResNet-18 and a MobileNetV2 (depthwise: the hard case), both with a 1-channel stem, trained here briefly
(AdamW, one-cycle; by default 1 epoch on 10,000 training images) on Fashion-MNIST padded to 32×32, and a random-init LR-ASPP segmentation model (agreement and SNR
only), rows:

* FP32: the model as exported by ``explainfix quantize`` (``model.onnx``);
* ORT INT8: what a user writes from onnxruntime's documentation — ``quant_pre_process``, ``quantize_static`` in
  QDQ with uint8 activations, int8 weights, per-tensor (its default), MinMax, ``reduce_range`` only without VNNI —
  on the same calibration images (the anchor);
* ``explainfix quantize`` with its defaults (per-channel) and the accuracy gate of the goal (≤ 0.5 points on the
  ResNet-18, ≤ 1 on the MobileNetV2; accuracy control keeps layers in float when plain INT8 misses it);
* ``explainfix quantize --min-agreement 0.98`` on seed 0: a gate plain INT8 misses on the MobileNetV2, so
  accuracy control runs (the layers it keeps in float, and the agreement of each attempt, are recorded);
* ``explainfix prune --target-macs 2x`` (one shot, BatchNorm re-estimated; no fine-tuning) in FP32 and after
  ``explainfix quantize``;
* NNCF's ONNX post-training quantization (``nncf.quantize`` with its defaults but all the calibration images), when
  ``nncf`` is installed (``pip install -e '.[bench]'``: a benchmark peer, never a dependency);
* ``explainfix compress --target-macs 2x`` and ``4x`` ``--distill --quantize int8`` (the one command: prune →
  distil from the original on the base's own training images → FP32 ONNX → INT8 with accuracy control), FP32 and
  INT8, both seeds; on the ResNet-18 with ``--max-accuracy-drop 1`` against the original (the INT8 model gets the
  room the FP32 model left, and accuracy control runs where plain INT8 would overdraw it).

Accuracy and top-1 agreement with FP32 on the test images (two calibration seeds for the quantized rows),
latency at batch 1 and 8 in onnxruntime, every model of one network timed interleaved (5 rounds; the speed-up
is the median of same-round ratios, with its range). The commands are the real CLI, run as subprocesses.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
MEAN, STD = 0.2860, 0.3530


# ---------------------------------------------------------------------------------------- models (--arch)
def resnet18_fmnist() -> nn.Module:
    """torchvision ResNet-18 with a 1-channel 7×7 stem (37 M MACs at 32×32)."""
    from torchvision.models import resnet18

    m = resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


def mobilenet_v2_fmnist() -> nn.Module:
    """torchvision MobileNetV2 with a 1-channel stride-1 stem (the 32×32 input ends at 2×2)."""
    from torchvision.models import mobilenet_v2

    m = mobilenet_v2(num_classes=10)
    m.features[0][0] = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1, bias=False)
    return m


def lraspp_fmnist() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(num_classes=4, weights=None, weights_backbone=None)


# ------------------------------------------------------------------------------------------------ data
def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    x = np.pad((x - MEAN) / STD, ((0, 0), (2, 2), (2, 2)), constant_values=-MEAN / STD)[:, None]
    return x.astype(np.float32), y


def load_both(data_dir: Path) -> tuple[np.ndarray, ...] | None:
    """(train x, train y, test x, test y), or None (said on stderr) without the Debian package's files."""
    if not (data_dir / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"no Fashion-MNIST in {data_dir} (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return None
    return (*load(data_dir, "train"), *load(data_dir, "test"))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, bs: int = 128, lr: float = 2e-3) -> float:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    t0, k = time.perf_counter(), 0
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - bs + 1, bs):
            idx = perm[i:i + bs]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            k += 1
            if k % 50 == 0:
                print(f"\r  step {k}/{steps} loss {loss.item():.3f}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- quantize
def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "explainfix_cli", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"explainfix {' '.join(map(str, args[:2]))} failed ({r.returncode}): {r.stderr[-800:]}")
    return r


def ort_int8(fp32: Path, out: Path, calib: np.ndarray) -> None:
    """onnxruntime's documented recipe, as a user would write it (the anchor)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from explainfix_cli.deploy.isa import detect_isa, recommended_settings

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.it, None)

    prep = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prep))
    quantize_static(str(prep), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    reduce_range=recommended_settings(detect_isa())["reduce_range"])


def nncf_int8(fp32: Path, out: Path, calib: np.ndarray) -> str | None:
    """NNCF's ONNX post-training quantization with its defaults (the peer): None when it wrote ``out``, else why
    not (not installed, or NNCF failed on this model: recorded, the run goes on)."""
    try:
        import logging

        import nncf
        import onnx
    except ImportError:
        return "nncf not installed"
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress bars: stdout carries the table
            q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset([{"input": calib[i:i + 1]} for i in range(len(calib))]),
                              subset_size=len(calib))
        onnx.save(q, str(out))
    except Exception as e:  # noqa: BLE001  (a peer's failure is a result, not a crash of the benchmark)
        return f"nncf failed: {type(e).__name__}: {e}"[:300]
    return None


def run_onnx(path: Path, x: np.ndarray, bs: int = 250) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + bs]})[0] for i in range(0, len(x), bs)])


# ------------------------------------------------------------------------------------------------ main
def network(a, name: str, arch: str, x, y, tx, ty, gate: float, gate_compress: float | None, work: Path) -> dict:
    base = a.results / f"int8_{name}_e{a.epochs}_n{a.train_samples}.pt"  # gitignored
    build = globals()[arch.split(":")[1]]
    if not base.is_file():
        model = build()
        secs = train(model, x[: a.train_samples], y[: a.train_samples], a.epochs)
        torch.save(model.state_dict(), base)
        print(f"{name}: trained in {secs:.0f}s", file=sys.stderr)
    test_npz = work / "test.npz"
    rows, files = [], {}
    for seed in a.seeds:
        rng = np.random.default_rng(seed)
        calib = x[rng.permutation(len(x))[: a.calib]]
        calib_npz = work / f"calib-s{seed}.npz"
        np.savez(calib_npz, x=calib)
        np.savez(test_npz, x=tx, y=ty)
        q = work / f"{name}-s{seed}"
        r = cli("quantize", base, "--arch", arch, "--data", calib_npz, "--eval-data", test_npz, "--no-bench", "--seed", seed,
                "--max-accuracy-drop", gate, "--calib-images", a.calib, "-o", q, "--force", "--json")
        rep = json.loads(r.stdout) if r.returncode == 0 else None
        fp32 = q / "model.onnx" if rep else _export_only(base, arch, work, calib_npz)
        files.setdefault("FP32", fp32)
        ort_int8(fp32, work / f"{name}-ort-s{seed}.onnx", calib)
        files[f"ORT INT8 (s{seed})"] = work / f"{name}-ort-s{seed}.onnx"
        nncf_error = nncf_int8(fp32, work / f"{name}-nncf-s{seed}.onnx", calib)
        if nncf_error is None:
            files[f"NNCF INT8 (s{seed})"] = work / f"{name}-nncf-s{seed}.onnx"
        if rep:
            files[f"explainfix INT8 (s{seed})"] = q / "model.int8.onnx"
            rows.append({"seed": seed, "float_layers": [n.get("module") or n["name"] for n in rep["float_layers"]
                                                        if n["why"].startswith("accuracy control")],
                         "control": rep["accuracy_control"] is not None})
        else:
            rows.append({"seed": seed, "failed": r.stderr.strip().splitlines()[-1]})
        rows[-1]["nncf"] = nncf_error or "ok"
    calib_npz = work / f"calib-s{a.seeds[0]}.npz"  # the control run and the prune use seed 0's images
    control = None
    if a.control_agreement and rows[0].get("failed") is None:  # a gate plain INT8 misses: accuracy control keeps layers in float (in-process API)
        import explainfix_cli as ef

        job = ef.quantize(work / f"{name}-s{a.seeds[0]}" / "model.onnx", calib_npz, eval_data=test_npz, bench=False,
                          min_agreement=a.control_agreement, calib_images=a.calib, seed=a.seeds[0],
                          out=work / f"{name}-control", force=True)
        ac = job.report["accuracy_control"] or {}
        control = {"min_agreement": a.control_agreement, "passed": job.passed, "kept_float": ac.get("kept_float"),
                   "tried": [{k: t[k] for k in ("float_layers", "agreement", "accuracy_drop_pts", "passed")}
                             for t in ac.get("tried", [])]}
        if job.written:
            files["explainfix INT8, accuracy control"] = work / f"{name}-control" / "model.int8.onnx"
    pruned = work / f"{name}-2x"
    cli("prune", base, "--arch", arch, "--target-macs", "2x", "--data", calib_npz, "-o", pruned, "--force")
    pq = work / f"{name}-2x-int8"
    r = cli("quantize", pruned, "--trust-code", "--data", calib_npz, "--eval-data", test_npz, "--no-bench",
            "--max-accuracy-drop", gate, "-o", pq, "--force")
    if r.returncode == 0:  # a failed gate writes nothing
        files["prune 2x FP32"] = pq / "model.onnx"
        files["prune 2x INT8"] = pq / "model.int8.onnx"
    compress = compress_rows(a, name, base, arch, x, y, test_npz, gate_compress, work, files)
    return {"quantize_runs": rows, "control": control, "compress": compress, **measure(a, files, tx, ty)}


def compress_rows(a, name: str, base: Path, arch: str, x, y, test_npz: Path, gate: float | None, work: Path,
                  files: dict) -> list[dict]:
    """``compress --target-macs B --distill --quantize int8`` per budget and seed; adds its two ONNX files."""
    train_npz = work / "train.npz"  # the base's own training images (labels kept: KD plus cross-entropy)
    np.savez(train_npz, x=x[: a.train_samples], y=y[: a.train_samples])
    runs = []
    for budget in a.compress:
        for seed in a.seeds:
            out = work / f"{name}-compress-{budget}-s{seed}"
            t0 = time.perf_counter()
            try:
                r = cli("compress", base, "--arch", arch, "--target-macs", budget, "--distill", "--finetune-epochs",
                        a.ft_epochs, "--data", train_npz, "--eval-data", test_npz, "--batches", 16, "--quantize", "int8",
                        *(("--max-accuracy-drop", gate) if gate is not None else ()), "--no-bench", "--seed", seed,
                        "-o", out, "--force", "--json")
            except RuntimeError as e:  # one run's failure is a result: recorded, the others go on
                runs.append({"budget": budget, "seed": seed, "failed": str(e)[-500:]})
                continue
            rep = json.loads(r.stdout)
            runs.append({"budget": budget, "seed": seed, "seconds": time.perf_counter() - t0, "passed": rep.get("passed"),
                         "gates": [{k: g[k] for k in ("name", "threshold", "value", "passed")} for g in rep.get("gates", [])],
                         "int8_float_layers": [n.get("module") or n["name"] for n in (rep.get("int8") or {}).get("float_layers", [])
                                               if n["why"].startswith("accuracy control")]})
            failed = "" if rep.get("passed") else ", gate failed"  # compress writes its outputs even then (CI keeps them)
            for kind, fname in (("FP32", "model.onnx"), ("INT8", "model.int8.onnx")):
                if (out / fname).is_file():
                    files[f"compress {budget} distill {kind}{failed} (s{seed})"] = out / fname
    return runs


def _export_only(base: Path, arch: str, work: Path, calib_npz: Path) -> Path:
    cli("export", base, "--arch", arch, "--data", calib_npz, "-o", work / "fp32", "--force")
    return work / "fp32" / "model.onnx"


def measure(a, files: dict[str, Path], tx, ty) -> dict:
    from explainfix_cli.deploy.bench import BenchTarget, bench_interleaved, compare_bench

    ref = run_onnx(files["FP32"], tx)
    out = {"rows": {}}
    for label, path in files.items():
        logits = ref if label == "FP32" else run_onnx(path, tx)
        pred = logits.reshape(len(tx), logits.shape[1], -1).argmax(1)
        out["rows"][label] = {"accuracy": float((pred[:, 0] == ty).mean()) if logits.ndim == 2 else None,
                              "agreement": float((pred == ref.reshape(len(tx), ref.shape[1], -1).argmax(1)).mean())}
    timed = [k for k in files if "s1)" not in k]  # one seed's files: the timing does not depend on the seed
    for b in (1, 8):
        rows = compare_bench(bench_interleaved([BenchTarget(files[k], tuple(tx.shape[1:]), label=k) for k in timed],
                                               batch_size=b, threads=a.threads, iters=a.iters, rounds=5, warmup=5))
        for row in rows:
            out["rows"][row["label"]][f"b{b}"] = {"p50_ms": row["p50_ms"], "speedup": 1 / row["latency_ratio"],
                                                  "range": [1 / row["latency_ratio_max"], 1 / row["latency_ratio_min"]]
                                                  if row["latency_ratio_min"] else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=10000, help="base training images (MobileNetV2 trains slowly on CPU)")
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--control-agreement", type=float, default=0.98,
                   help="also quantize seed 0 with this --min-agreement gate (accuracy control; 0: skip)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--compress", nargs="*", default=["2x", "4x"], help="compress --distill --quantize int8 budgets")
    p.add_argument("--ft-epochs", type=int, default=2, help="compress: distillation epochs on the base's training images")
    p.add_argument("--networks", nargs="+", default=["resnet18", "mobilenet_v2", "lraspp"])
    p.add_argument("--work", type=Path, default=Path("/tmp/explainfix-int8-bench"))
    a = p.parse_args(argv)
    if a.quick:
        a.test_samples, a.iters, a.compress, a.ft_epochs = 2000, 50, a.compress[:1], 1
    torch.set_num_threads(a.threads)
    if (splits := load_both(a.data_dir)) is None:
        return 2
    x, y, tx, ty = splits
    tx, ty = tx[: a.test_samples], ty[: a.test_samples]
    a.work.mkdir(parents=True, exist_ok=True)
    from explainfix_cli.deploy.isa import detect_isa
    import onnxruntime

    try:
        import nncf
    except ImportError:
        nncf = None
    result = {"isa": detect_isa().to_json(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
              "nncf": getattr(nncf, "__version__", None),
              "args": {k: str(v) for k, v in vars(a).items()}, "networks": {}}
    arches = {"resnet18": (f"{HERE}:resnet18_fmnist", 0.5, 1.0), "mobilenet_v2": (f"{HERE}:mobilenet_v2_fmnist", 1.0, None)}
    for name in a.networks:
        t0 = time.perf_counter()
        if name == "lraspp":
            result["networks"][name] = segmentation(a, tx)
        else:
            arch, gate, gate_compress = arches[name]
            result["networks"][name] = network(a, name, arch, x, y, tx, ty, gate, gate_compress, a.work)
        result["networks"][name]["seconds"] = time.perf_counter() - t0
        out = a.results / ("int8_quick.json" if a.quick else "int8.json")
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(markdown(result))
    return 0


def segmentation(a, tx) -> dict:
    """Random-init LR-ASPP on 3-channel copies of the test images at 64×64: per-pixel agreement and SNR only."""
    work = a.work / "lraspp"
    work.mkdir(exist_ok=True)
    torch.manual_seed(0)
    ckpt = work / "lraspp.pt"
    torch.save(lraspp_fmnist().state_dict(), ckpt)
    img = torch.nn.functional.interpolate(torch.from_numpy(tx[:600]).repeat(1, 3, 1, 1), size=64).numpy()
    np.savez(work / "calib.npz", x=img[:256])
    np.savez(work / "eval.npz", x=img[256:])
    r = cli("quantize", ckpt, "--arch", f"{HERE}:lraspp_fmnist", "--data", work / "calib.npz", "--eval-data",
            work / "eval.npz", "--bench-iters", a.iters, "-o", work / "q", "--force", "--json")
    rep = json.loads(r.stdout)
    return {"comparison": rep["comparison"], "float_layers": sorted({n["op_type"] for n in rep["float_layers"]}),
            "bench": {str(b["batch_size"]): {"speedup": b["speedup"], "range": b["speedup_range"]} for b in rep["bench"]["batches"]},
            "verdict": rep["bench"]["verdict"]}


def markdown(r: dict) -> str:
    lines = [f"ISA {r['isa']['name']} ({r['isa']['cpu_model']}), onnxruntime {r['onnxruntime']}, NNCF {r.get('nncf')}", ""]
    for name, n in r["networks"].items():
        if name == "lraspp":
            c = n["comparison"]
            lines.append(f"{name}: per-pixel agreement {100 * c['agreement']:.2f} %, SNR {c['outputs'][0]['snr_db']:.1f} dB, "
                         f"float ops {n['float_layers']}, {n['verdict']}")
            continue
        lines += [f"### {name}", "", "| model | accuracy | agreement | batch 1 | batch 8 |", "|---|---:|---:|---:|---:|"]
        for label, row in n["rows"].items():
            def sp(k):
                v = row.get(k)
                return "" if not v else f"{v['speedup']:.2f}×" + (f" ({v['range'][0]:.2f}–{v['range'][1]:.2f})" if v["range"] else "")
            acc = "" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f} %"
            lines.append(f"| {label} | {acc} | {100 * row['agreement']:.2f} % | {sp('b1')} | {sp('b8')} |")
        lines += ["", f"quantize runs: {n['quantize_runs']}", f"accuracy control: {n.get('control')}",
                  f"compress runs: {n.get('compress')}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
