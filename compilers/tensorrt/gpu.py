"""Which NVIDIA GPUs this machine has, without importing TensorRT.

TensorRT engines are specific to the GPU (compute capability) they were built on, so the backend needs the GPU's
name and compute capability before building and when loading. We ask CUDA's runtime through ``cuda-python`` when it
is installed (it honours ``CUDA_VISIBLE_DEVICES``, like TensorRT does), else ``nvidia-smi``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import shutil
import subprocess

from onnxsmith.plugin import Support


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as CUDA numbers it."""

    index: int
    name: str
    compute_capability: str
    """``major.minor``, e.g. ``9.0`` for Hopper."""
    memory_mb: int = 0
    driver: str = ""

    @property
    def sm(self) -> str:
        """``sm_90`` style architecture name."""
        return "sm_" + self.compute_capability.replace(".", "")

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv,noheader``."""
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if len(row) < 3 or not row[0].strip().isdigit():
            continue
        memory = row[3].strip() if len(row) > 3 else ""
        gpus.append(GpuInfo(index=int(row[0]), name=row[1].strip(), compute_capability=row[2].strip(),
                            memory_mb=int(memory) if memory.isdigit() else 0,
                            driver=row[4].strip() if len(row) > 4 else ""))
    return gpus


def visible_indices(env: str | None, count: int) -> list[int]:
    """Physical GPU indices CUDA exposes under ``CUDA_VISIBLE_DEVICES`` (numeric lists only; UUIDs: all)."""
    if env is None:
        return list(range(count))
    wanted = []
    for part in env.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            return list(range(count)) if part else wanted
        value = int(part)
        if value < 0 or value >= count:
            break  # CUDA stops at the first invalid entry
        wanted.append(value)
    return wanted


def _from_cudart() -> list[GpuInfo] | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    err, count = cudart.cudaGetDeviceCount()
    if err.value:
        return []
    err, driver = cudart.cudaDriverGetVersion()
    driver_text = f"CUDA {driver // 1000}.{driver % 1000 // 10}" if not err.value else ""
    gpus = []
    for index in range(count):
        err, prop = cudart.cudaGetDeviceProperties(index)
        if err.value:
            continue
        name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        gpus.append(GpuInfo(index, name, f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem) >> 20, driver_text))
    return gpus


def _from_nvidia_smi() -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=index,name,compute_cap,memory.total,driver_version",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    gpus = parse_nvidia_smi(proc.stdout)
    keep = visible_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), len(gpus))
    return [dataclasses.replace(gpus[physical], index=logical) for logical, physical in enumerate(keep)
            if physical < len(gpus)]


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[GpuInfo, ...]:
    """The NVIDIA GPUs CUDA programs see here (empty without a GPU or driver). Cached per process."""
    found = _from_cudart()
    if found is None:
        found = _from_nvidia_smi()
    return tuple(found)


def gpu(index: int = 0) -> GpuInfo | None:
    gpus = nvidia_gpus()
    return gpus[index] if 0 <= index < len(gpus) else None


def matches(info: GpuInfo, wanted_name: str, wanted_cc: str = "") -> Support:
    """Whether ``info`` is the GPU a target asks for (whole-word name match, case-insensitive; compute capability)."""
    from onnxsmith.hostcheck import gpu_name_matches

    if wanted_name and not gpu_name_matches(wanted_name, info.name):
        return Support(False, f"this machine's GPU {info.index} is an {info.name}, the target needs an NVIDIA "
                              f"{wanted_name}",
                       "build and run on the target GPU, or compile with --option hardware_compatibility=ampere_plus "
                       "for an engine that runs on any Ampere or newer GPU")
    if wanted_cc and wanted_cc != info.compute_capability:
        return Support(False, f"this machine's {info.name} has compute capability {info.compute_capability}, the "
                              f"target needs {wanted_cc}", "build and run on a GPU of the target's architecture")
    return Support(True)
