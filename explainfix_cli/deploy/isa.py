"""Which integer instructions this CPU has, and the INT8 settings onnxruntime prescribes for it.

    isa = detect_isa()          # Isa(name="avx512-vnni+amx", vnni=True, …, cpu_model="Intel(R) Xeon(R) …")
    recommended_settings(isa)   # {"activation_type": "uint8", "reduce_range": False, "why": "…"}

The guidance is onnxruntime's own (``quantize_static``'s docstring, "Choosing parameters for CPU inference",
and https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html): QDQ format; x86 without
VNNI: uint8 activations, int8 weights, ``reduce_range`` (7-bit weights against the saturation of the U8S8
``vpmaddubsw`` path); x86 with VNNI (AVX-512 VNNI, AVX-VNNI, AMX): uint8/int8 without ``reduce_range``; ARM:
int8 (symmetric) activations and weights.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

_X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Isa:
    """What the CPU offers for 8-bit matrix products (``name`` is the short label reports show)."""

    name: str  # avx512-vnni+amx | avx512-vnni | avx-vnni | avx512 | avx2 | arm64 | other
    arch: str  # platform.machine()
    cpu_model: str
    vnni: bool = False
    amx: bool = False
    avx2: bool = False
    avx512: bool = False
    arm: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def detect_isa(cpuinfo: str | None = None, machine: str | None = None) -> Isa:
    """Read ``/proc/cpuinfo`` (Linux; else only the platform's architecture is known). ``cpuinfo`` and
    ``machine`` replace what is read, for tests and other hosts."""
    machine = (machine or platform.machine() or "unknown").lower()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields = _first_cpu(cpuinfo)
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or platform.processor() or machine
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return Isa("arm64" if "64" in machine else "arm", machine, model, arm=True,
                   vnni="asimddp" in flags)  # the ARM dot-product extension plays VNNI's part
    have = {f: f in flags for f in _X86_FLAGS}
    vnni = have["avx512_vnni"] or have["avx_vnni"]
    amx = have["amx_int8"]
    avx512 = have["avx512f"]
    if avx512 and have["avx512_vnni"]:
        name = "avx512-vnni+amx" if amx else "avx512-vnni"
    elif have["avx_vnni"]:
        name = "avx-vnni"
    elif avx512:
        name = "avx512"
    elif have["avx2"]:
        name = "avx2"
    else:
        name = "other"
    return Isa(name, machine, model, vnni=vnni, amx=amx, avx2=have["avx2"], avx512=avx512)


def recommended_settings(isa: Isa) -> dict:
    """onnxruntime's prescription for this CPU: activation type, ``reduce_range``, and why."""
    if isa.arm:
        return {"activation_type": "int8", "reduce_range": False,
                "why": "ARM: onnxruntime recommends symmetric int8 activations and weights (S8S8)"}
    if isa.vnni:
        return {"activation_type": "uint8", "reduce_range": False,
                "why": f"x86 with VNNI ({isa.name}): uint8 activations, int8 weights (U8S8); 8-bit products "
                       "accumulate without saturation, so no reduce_range"}
    return {"activation_type": "uint8", "reduce_range": True,
            "why": f"x86 without VNNI ({isa.name}): uint8 activations, int8 weights with reduce_range (7-bit "
                   "weights) against the saturation of the U8S8 path, as onnxruntime prescribes"}


def _first_cpu(cpuinfo: str) -> dict[str, str]:
    """The ``key: value`` lines of the first processor block (every core of a Linux host reports the same)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields.get("flags") or fields.get("features"):
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields
