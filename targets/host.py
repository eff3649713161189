"""Detect this machine as the ``host`` target: ISA features, core count and an estimated peak."""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path

from onnxsmith.targets import Peak, Requirements, Target
from onnxsmith.units import machine_arch

# FLOP per cycle per core for fp32 FMA, by widest vector unit (2 FMA pipes; Zen 4 runs AVX-512 on 256-bit pipes).
_FP32_FLOP_PER_CYCLE = {"amx": 64, "avx512": 64, "avx2": 32, "sse": 8, "sve": 32, "neon": 16}
_AMX_OPS_PER_CYCLE = {"bf16": 1024, "int8": 2048}
"""Per core: one TDPBF16PS (16x16x32 bf16 -> fp32, 16,384 FLOP) or TDPBSSD (16x16x64 int8, 32,768 ops) per 16
cycles. AMX does no fp32 arithmetic, so fp32 stays the AVX-512 figure."""
_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
             "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def cpu_flags() -> frozenset[str]:
    text = _cpuinfo()
    return frozenset((_field(text, "flags") or _field(text, "Features")).split())


_ISA_NAMES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
              ("avx512_bf16", "AVX-512 BF16"), ("avx512_fp16", "AVX-512 FP16"), ("amx_bf16", "AMX-BF16"),
              ("amx_int8", "AMX-INT8"), ("asimd", "NEON"), ("asimddp", "NEON dot product"), ("i8mm", "I8MM"),
              ("bf16", "BF16"), ("sve", "SVE"), ("sve2", "SVE2"))


def isa_summary(flags: frozenset[str] | None = None) -> dict[str, object]:
    """The vector ISA this CPU has and the int8 path it implies (what int8 kernels of OpenVINO, ONNX Runtime's
    MLAS and TVM can use here): ``{"isa": [...], "int8_path": "...", "text": "..."}``."""
    flags = cpu_flags() if flags is None else flags
    isa = [name for flag, name in _ISA_NAMES if flag in flags]
    if "amx_int8" in flags:
        path = "AMX tiles (TDPBUSD, 16x16x64 int8 per instruction)"
    elif "avx512_vnni" in flags or "avx_vnni" in flags:
        path = "VNNI dot products (VPDPBUSD: u8 x s8 into int32 in one instruction)"
    elif "avx2" in flags:
        path = ("AVX2 without VNNI (VPMADDUBSW + VPMADDWD: two instructions per dot product, 16-bit saturation): "
                "int8 gains less over fp32 here than on a VNNI CPU")
    elif "i8mm" in flags:
        path = "NEON I8MM matrix multiply (SMMLA/UMMLA)"
    elif "asimddp" in flags:
        path = "NEON dot product (SDOT/UDOT)"
    elif "asimd" in flags:
        path = "NEON without dot product (widening multiplies): little int8 gain over fp32"
    else:
        path = "no SIMD int8 instructions found: int8 runs no faster than fp32"
    return {"isa": isa, "int8_path": path,
            "text": f"ISA: {', '.join(isa) or 'none detected'}; int8 path: {path}"}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _ghz(text: str) -> tuple[float, str]:
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            return int(Path(path).read_text()) / 1e6, "cpufreq max"
        except (OSError, ValueError):
            pass
    mhz = _field(text, "cpu MHz")
    if mhz:
        return float(mhz) / 1000, "/proc/cpuinfo cpu MHz"
    return 2.5, "assumed 2.5 GHz"


@functools.lru_cache(maxsize=1)
def detect_host() -> Target:
    """This machine as a :class:`Target`. Cached: detection reads /proc once per process."""
    text = _cpuinfo()
    arch = machine_arch()
    flags = cpu_flags()
    cores = _cores()
    ghz, ghz_source = _ghz(text)
    features = tuple(f for f in _FEATURES if f in flags)
    if arch == "x86_64":
        width = "amx" if "amx_tile" in flags else "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
        name = _field(text, "model name") or "x86-64 CPU"
        backends = ("openvino", "onnxruntime", "tvm")
        bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
        int8_mult = 4 if ("avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags) else 2
        mcpu = "native"
    else:
        width = "sve" if "sve" in flags else "neon"
        name = _field(text, "model name") or f"{arch} CPU"
        backends = ("tvm", "onnxruntime")
        bf16 = "bf16" in flags
        int8_mult = 4 if ("asimddp" in flags or "i8mm" in flags) else 2
        mcpu = "native"
    fp32 = cores * ghz * _FP32_FLOP_PER_CYCLE[width] / 1000
    amx = {p for p in _AMX_OPS_PER_CYCLE if f"amx_{p}" in flags} if arch == "x86_64" else set()
    tflops = {"fp32": round(fp32, 3), "int8": round(fp32 * int8_mult, 3)}
    if "int8" in amx:
        tflops["int8"] = round(cores * ghz * _AMX_OPS_PER_CYCLE["int8"] / 1000, 3)
    precisions = ["fp32", "int8"]
    if bf16:
        tflops["bf16"] = round(cores * ghz * _AMX_OPS_PER_CYCLE["bf16"] / 1000 if "bf16" in amx else fp32 * 2, 3)
        precisions.insert(1, "bf16")
    return Target(
        id="host",
        name=f"{name} ({cores} cores available)",
        vendor="host",
        kind="cpu",
        backends=backends,
        precisions=tuple(precisions),
        peak=Peak(
            tflops=tflops,
            memory_bandwidth_gbps=0.0,
            source=(f"estimated: {cores} cores x {ghz:.2f} GHz ({ghz_source}) x "
                    f"{_FP32_FLOP_PER_CYCLE[width]} fp32 FLOP/cycle ({width}); "
                    + (f"int8 {_AMX_OPS_PER_CYCLE['int8']} ops/cycle (AMX)" if "int8" in amx else f"int8 x{int8_mult}")
                    + (f"; bf16 {_AMX_OPS_PER_CYCLE['bf16']} FLOP/cycle (AMX)" if "bf16" in amx else
                       "; bf16 x2" if bf16 else "") + "; memory bandwidth not measured"),
        ),
        requires=Requirements(arch=arch, cpu_flags=features, os=platform.system().lower()),
        device_options={
            "openvino": {"device": "CPU"},
            "onnxruntime": {"providers": ["CPUExecutionProvider"]},
            "tvm": {"kind": "llvm", "mcpu": mcpu, "num-cores": cores},
        },
        cores=cores,
        description="This machine, detected at run time: " + (", ".join(features) or "no vector extensions found"),
        source_file="(detected)",
        detected=True,
    )
