"""Coverage of `explainfix prune` over the torchvision classification zoo, next to Torch-Pruning.

    .venv/bin/python benchmarks/coverage.py [--pct 50] [--models resnet18,densenet121 | --timm | --dense] [--no-tp] [--timeout 900]
                                            [--tp-from benchmarks/results/coverage_pct90.json] [--json OUT]

Every model of ``torchvision.models.list_models(module=torchvision.models)`` is built with random init
(seed 0, eval mode) and a small input (64×64; 96 for inception_v3, 224 where the architecture fixes it),
then, each in its own subprocess:

* ours: ``prune_model(model, PruneOptions(pct=pct, criterion="magnitude"), check_inputs=x)`` on 2 random inputs. Result:
  ``pruned`` (self-check passed: pruned ≡ masked equivalent, channels removed), ``unchanged`` (self-check
  passed, no channel removable: frozen, or no kernel row entirely zeroed), ``refused`` (exit 3, with the
  reason), or ``CRASH`` (any other exception — must never happen).
* Torch-Pruning 1.6.1 (PyPI ``torch-pruning``, a *benchmark-only* dependency: ``pip install
  torch-pruning==1.6.1``; not a dependency of explainfix): ``MagnitudePruner`` at the same ratio
  (``pruning_ratio = pct/100``), final classifier ignored; ``yes`` when pruning and a forward pass both
  succeed. It has no notion of an equivalence check, so ``yes`` says nothing about correctness.

``--timm`` runs the timm CNNs of tests/test_realworld.py instead; ``--dense`` the segmentation and detection
models of tests/test_realworld_dense.py (segmentation-models-pytorch, ultralytics YOLO, torchvision
segmentation; for Torch-Pruning the output head — smp ``segmentation_head``, YOLO ``Detect``, torchvision's
last classifier conv — is ignored, and its graph is built on the sum of every output tensor).

Prints a markdown table (the one in benchmarks/README.md) and the totals. Torch-Pruning does not change
when explainfix does, and its column is the slow one (timeouts): ``--tp-from`` reuses its results from an
earlier ``--json`` file instead of running it again.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

FIXED_224 = ("vit_", "maxvit")


def input_size(name: str) -> int:
    if name.startswith(FIXED_224):
        return 224
    if name == "inception_v3":
        return 96
    return 64


TIMM = ["efficientnet_b0", "tf_efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "ghostnet_100", "rexnet_100",
        "cspresnet50", "resnetv2_50", "densenet121", "repvgg_a0", "dpn48b", "ese_vovnet19b_dw", "resnet26d", "resnet50",
        "dla34", "mobilevit_xxs", "inception_v3", "hrnet_w18_small", "res2net50_26w_4s", "vgg11_bn", "efficientnet_lite0",
        "mnasnet_100", "convnext_atto", "nf_resnet26", "tf_mobilenetv3_large_100"]


DENSE = ["smp:Unet", "smp:FPN", "smp:DeepLabV3Plus", "ultralytics:yolov8n", "ultralytics:yolo11n", "ultralytics:yolov8n-seg",
         "torchvision:segmentation.fcn_resnet50", "torchvision:segmentation.deeplabv3_mobilenet_v3_large",
         "torchvision:segmentation.lraspp_mobilenet_v3_large"]
DENSE_KWARGS = {"smp": {"encoder_name": "resnet18", "classes": 3}, "ultralytics": {},
                "torchvision": {"num_classes": 4, "weights_backbone": None}}


def build_dense(name: str):
    """As tests/test_realworld_dense.py: the allow-listed builders a shared directory may use."""
    import os

    import torch

    from explainfix_cli.io.arch import arch_spec, build_arch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    lib, _, rest = name.partition(":")
    if lib == "torchvision":
        sub, _, fn = rest.rpartition(".")
        spec = {"kind": "import", "module": f"torchvision.models.{sub}", "name": fn, "kwargs": DENSE_KWARGS[lib]}
    else:
        spec = arch_spec(name, DENSE_KWARGS[lib])
    torch.manual_seed(0)
    model = build_arch(spec).eval()
    return model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def head_of(name: str, model) -> list:
    """The output layers Torch-Pruning is told to leave alone on a dense model."""
    lib = name.partition(":")[0]
    if lib == "smp":
        return [model.segmentation_head]
    if lib == "ultralytics":
        return [model.model[-1]]
    return [m for k, m in model.named_modules() if k.startswith(("classifier", "aux_classifier")) and hasattr(m, "weight")][-2:]


def build(name: str):
    import torch
    import torchvision

    if name.partition(":")[0] in DENSE_KWARGS:
        return build_dense(name)
    torch.manual_seed(0)
    if name.startswith("timm:"):  # random init from timm's packaged config; nothing downloaded
        import os

        import timm

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = timm.create_model(name[5:], pretrained=False, num_classes=10).eval()
        s = 96 if name.endswith("inception_v3") else 64
        return model, torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    s = input_size(name)
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    return model, x


def run_ours(name: str, pct: float) -> dict:
    from explainfix_cli.core.errors import CannotProcess
    from explainfix_cli.prune.options import PruneOptions
    from explainfix_cli.prune.pruner import prune_model

    model, x = build(name)
    t0 = time.perf_counter()
    try:
        r = prune_model(model, PruneOptions(pct=pct, criterion="magnitude"), example=x[:1], check_inputs=x)
    except CannotProcess as e:
        return {"status": "refused", "reason": e.message, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - this is what the matrix must show
        return {"status": "CRASH", "reason": f"{type(e).__name__}: {str(e)[:200]}", "seconds": time.perf_counter() - t0}
    return {"status": "pruned", "check": r.check.passed, "rel": r.check.pruned_vs_masked_rel,
            "params": [r.params_before, r.params_after], "macs": [r.macs_before, r.macs_after],
            "channels_removed": r.channels_removed, "kept_whole": len(r.opaque), "seconds": time.perf_counter() - t0}


def run_tp(name: str, pct: float) -> dict:
    import torch

    try:
        import torch_pruning as tp
    except ImportError:
        return {"status": "n/a", "reason": "torch-pruning not installed"}
    from explainfix_cli.core.model import output_tensors

    model, x = build(name)
    try:
        dense = name.partition(":")[0] in DENSE_KWARGS
        last = head_of(name, model) if dense else (
            [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:] or
            [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1:])
        pruner = tp.pruner.MagnitudePruner(model, x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=pct / 100, ignored_layers=last,
                                           output_transform=lambda out: sum(t.sum() for t in output_tensors(out)))
        pruner.step()
        with torch.no_grad():
            model(x)
        return {"status": "yes", "params": sum(p.numel() for p in model.parameters())}
    except Exception as e:  # noqa: BLE001
        return {"status": "no", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}


def _child(argv: list[str]) -> None:
    which, name, pct = argv[0], argv[1], float(argv[2])
    out = run_ours(name, pct) if which == "ours" else run_tp(name, pct)
    print("RESULT " + json.dumps(out))


def _spawn(which: str, name: str, pct: float, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, __file__, "--child", which, name, str(pct)],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr.strip().splitlines() or ["?"])[-1]
    return {"status": "CRASH" if which == "ours" else "no", "reason": f"process died: {tail[:160]}"}


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    import torchvision

    ap = argparse.ArgumentParser()
    ap.add_argument("--pct", type=float, default=50)
    ap.add_argument("--models", default="")
    ap.add_argument("--no-tp", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default="")
    ap.add_argument("--timm", action="store_true", help="the 25 timm CNNs of tests/test_realworld.py instead of torchvision")
    ap.add_argument("--dense", action="store_true", help="the segmentation / detection models of tests/test_realworld_dense.py")
    ap.add_argument("--tp-from", default="", help="reuse the Torch-Pruning column of an earlier --json file")
    ap.add_argument("--render", default="", help="print the table of an earlier --json file; run nothing")
    a = ap.parse_args()
    if a.render:
        with open(a.render) as f:
            rows = json.load(f)
        print(HEADER)
        for r in rows:
            print(_row(r), flush=True)
        print(_totals(rows))
        return
    earlier = {}
    if a.tp_from:
        with open(a.tp_from) as f:
            earlier = {r["model"]: r["tp"] for r in json.load(f)}
    if a.timm:
        names = [f"timm:{n}" for n in TIMM]
    elif a.dense:
        names = DENSE
    else:
        names = a.models.split(",") if a.models else torchvision.models.list_models(module=torchvision.models)
    rows = []
    print(HEADER)
    for name in names:
        ours = _spawn("ours", name, a.pct, a.timeout)
        if name in earlier:
            tp = earlier[name]
        else:
            tp = {"status": "-"} if a.no_tp else _spawn("tp", name, a.pct, a.timeout)
        rows.append({"model": name, "ours": ours, "tp": tp})
        print(_row(rows[-1]), flush=True)
    print(_totals(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


HEADER = ("| model | input | ours | self-check | params before → after | MACs before → after | channels removed "
          "| Torch-Pruning 1.6.1 | note |\n|---|---|---|---|---|---|---|---|---|")


def _row(r: dict) -> str:
    """ours: ``pruned`` (channels removed), ``unchanged`` (self-check passed, no channel removable), or the
    failure status."""
    name, ours, tp = r["model"], r["ours"], r["tp"]
    if ours["status"] == "pruned":
        cols = ["pruned" if ours["channels_removed"] else "unchanged", "passed" if ours["check"] else "FAILED",
                f"{_m(ours['params'][0])} → {_m(ours['params'][1])}", f"{_m(ours['macs'][0])} → {_m(ours['macs'][1])}",
                str(ours["channels_removed"]), ""]
    else:
        cols = [ours["status"], "", "", "", "", ours.get("reason", "").replace("|", "/")[:140]]
    return f"| {name} | {input_size(name)} | " + " | ".join(cols[:5]) + f" | {tp['status']} | {cols[5]} |"


def _totals(rows: list[dict]) -> str:
    done = [r["ours"] for r in rows if r["ours"]["status"] == "pruned"]
    removed = sum(o["channels_removed"] > 0 for o in done)
    other = {k: sum(r["ours"]["status"] == k for r in rows) for k in ("refused", "CRASH", "timeout")}
    wrong = sum(not o["check"] for o in done)
    tp = {k: sum(r["tp"]["status"] == k for r in rows) for k in ("yes", "no", "timeout")}
    return (f"\nours ({len(rows)} models): self-check passed {len(done) - wrong} (channels removed in {removed}, "
            f"nothing removable in {len(done) - removed}), {other}, self-check failures {wrong}; "
            f"Torch-Pruning 1.6.1: {tp}")


if __name__ == "__main__":
    main()
