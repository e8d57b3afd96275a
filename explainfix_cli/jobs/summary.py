"""The markdown summary of a compress report (for ``$GITHUB_STEP_SUMMARY``)."""
from __future__ import annotations

from pathlib import Path

from ..core.fmt import human, pct, pruned_how, ratio


def _pct2(x: float | None) -> str:
    return pct(x, digits=2)


QUALITY_FLAGS = ("--max-accuracy-drop", "--min-agreement")


def checks_ran(gates: list[dict]) -> str:
    """Which checks a compress ran, in words, and whether a quality gate was set: "passed" with only the ONNX
    check is not a statement about accuracy."""
    ran = "checks run: " + ", ".join(f"{g['name']} ({g['flag']})" for g in gates)
    if not any(g["flag"] in QUALITY_FLAGS for g in gates):
        ran += "; no quality gate was set (--max-accuracy-drop PTS, --min-agreement F): accuracy was measured, not checked"
    return ran


NOT_HELD_OUT = ("measured on the calibration data the model was pruned and tuned on, not held out: pass a disjoint "
                "--eval-data DIR")


def summary_markdown(report: dict) -> str:
    """A GitHub-flavoured markdown summary (for ``$GITHUB_STEP_SUMMARY``) of a compress report."""
    o, c = report["original"], report["compressed"]
    status = "✅ PASSED" if report["passed"] else "❌ FAILED"
    if report["passed"] and not any(g["flag"] in QUALITY_FLAGS for g in report["gates"]):
        status = "✅ ONNX check passed · no quality gate set"
    lines = [
        f"### explainfix compress · `{Path(report['model']).name}` · {pruned_how(report['pct'], report['criterion'], report['budget'], report.get('rank_used'))} — {status}",
        "",
        "| | original | compressed | change |",
        "|---|---:|---:|---:|",
        f"| params | {human(o['params'])} | {human(c['params'])} | {ratio(c['params'], o['params'])} |",
        f"| MACs (1 input) | {human(o['macs'])} | {human(c['macs'])} | {ratio(c['macs'], o['macs'])} |",
    ]
    b = report.get("bench")
    if b:
        rows = {r["label"]: r for r in b["rows"]}
        lo, lc = rows["original"]["p50_ms"], rows["compressed"]["p50_ms"]
        lines.append(f"| latency p50 (onnxruntime CPU, batch 1, {b['threads']} threads) | {lo:.3f} ms | {lc:.3f} ms | "
                     f"{ratio(lc, lo)} |")
    drop = "—" if o["accuracy"] is None or c["accuracy"] is None else f"{100 * (c['accuracy'] - o['accuracy']):+.2f} pts"
    if c["agreement"] is not None:  # a classifier (other outputs have no top-1)
        lines += [
            f"| accuracy ({report['eval_samples']} {'eval samples' if report['held_out'] else 'calibration samples, not held out'}) | {_pct2(o['accuracy'])} | {_pct2(c['accuracy'])} | {drop} |",
            f"| top-1 agreement with original | 100% | {_pct2(c['agreement'])} | |",
        ]
    q = report.get("int8")
    if q:  # the INT8 model beside the FP32 one
        qc = q["comparison"]
        speed = next((f"{b['speedup']:.2f}× at batch {b['batch_size']}" for b in (q.get("bench") or {}).get("batches", [])), "not timed")
        acc = "—" if qc.get("accuracy_int8") is None else _pct2(qc["accuracy_int8"])
        lines += [f"| INT8 `model.int8.onnx`: accuracy | | {acc} | vs FP32 {_pct2(qc.get('accuracy_fp32'))} |",
                  f"| INT8: agreement with FP32 · speed-up over FP32 | | {_pct2(qc.get('agreement'))} | {speed} |"]
    lines += [
        f"| ONNX verification | | {'PASSED' if report['verify']['passed'] else 'FAILED'} | |",
        "",
        "| gate | needs | value | result |",
        "|---|---|---|---|",
    ]
    for g in report["gates"]:
        lines.append(f"| {g['name']} (`{g['flag']}`) | {g['threshold']} | {g['value']} | {'✅ pass' if g['passed'] else '❌ fail'} |")
    ft = report.get("finetune")
    notes = [f"pruned by {report['prune']['criterion']} on {report['data']['samples']} samples of `{report['data']['source']}`"]
    if ft:
        opt = ft["options"]
        notes.append(f"fine-tuned {opt['epochs']} epoch(s), {opt['optimizer']} lr {opt['lr']:g}")
    notes.append(f"accuracy after pruning only: {_pct2(c['accuracy_after_prune'])}")
    lines += ["", "; ".join(notes) + ".", "", checks_ran(report["gates"]) + ".", "", f"`{report['verify_summary']}`", ""]
    return "\n".join(lines)
