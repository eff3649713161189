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
from typing import Any

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


_CUDA_NOTE: list[str] = []
"""Why CUDA's runtime could not be asked (set by :func:`nvidia_gpus`; empty when it answered)."""


def _cuda_error_text(cudart: Any, err: Any) -> str:
    """``cudaErrorInsufficientDriver (35): CUDA driver version is insufficient...``, as far as the binding says."""
    try:
        name = cudart.cudaGetErrorName(err)[1]
        text = cudart.cudaGetErrorString(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        return f"{name} ({int(err.value)}): {text}"
    except Exception:
        return f"CUDA error {getattr(err, 'value', err)}"


def _from_cudart() -> list[GpuInfo] | None:
    """The GPUs CUDA's runtime sees, or ``None`` when it cannot be asked (not installed, or it errors: a
    cuda-python built for a newer CUDA than the driver, no driver), with the reason in :data:`_CUDA_NOTE`."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    try:
        err, count = cudart.cudaGetDeviceCount()
        if err.value:
            _CUDA_NOTE.append(f"cuda-python {_binding_version()} could not query the GPUs: "
                              f"{_cuda_error_text(cudart, err)}")
            return None
        err, driver = cudart.cudaDriverGetVersion()
        driver_text = f"CUDA {driver // 1000}.{driver % 1000 // 10}" if not err.value else ""
        gpus = []
        for index in range(count):
            err, prop = cudart.cudaGetDeviceProperties(index)
            if err.value:
                continue
            name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
            gpus.append(GpuInfo(index, name, f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem) >> 20,
                                driver_text))
        return gpus
    except Exception as exc:  # a binding that cannot load its CUDA runtime raises instead of returning an error
        _CUDA_NOTE.append(f"cuda-python {_binding_version()} could not query the GPUs: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
        return None


def _binding_version() -> str:
    from importlib import metadata

    for name in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "?"


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
    """The NVIDIA GPUs CUDA programs see here (empty without a GPU or driver). Cached per process.

    CUDA's runtime first; when cuda-python is missing or its query errors (e.g. cuda-python 13 on a driver older
    than R580 returns ``cudaErrorInsufficientDriver``), ``nvidia-smi``; :func:`cuda_query_note` says which error."""
    del _CUDA_NOTE[:]
    found = _from_cudart()
    if found is None:
        found = _from_nvidia_smi()
    return tuple(found)


def cuda_query_note() -> str:
    """Why CUDA's runtime could not list the GPUs (and ``nvidia-smi`` was asked instead), or ``""``."""
    nvidia_gpus()
    if not _CUDA_NOTE:
        return ""
    return _CUDA_NOTE[-1] + ("; its CUDA major must match the driver's: install onnxsmith[tensorrt] (CUDA 12) or "
                             "onnxsmith[tensorrt-cu13] (CUDA 13, driver R580+)")


def gpu(index: int = 0) -> GpuInfo | None:
    gpus = nvidia_gpus()
    return gpus[index] if 0 <= index < len(gpus) else None


def matches(info: GpuInfo, wanted_name: str, wanted_cc: str = "") -> Support:
    """Whether ``info`` is the GPU a target asks for (whole-word name match, case-insensitive; compute capability)."""
    from onnxsmith.host import gpu_name_matches

    if wanted_name and not gpu_name_matches(wanted_name, info.name):
        return Support(False, f"this machine's GPU {info.index} is an {info.name}, the target needs an NVIDIA "
                              f"{wanted_name}",
                       "build and run on the target GPU, or compile with --option hardware_compatibility=ampere_plus "
                       "for an engine that runs on any Ampere or newer GPU")
    if wanted_cc and wanted_cc != info.compute_capability:
        return Support(False, f"this machine's {info.name} has compute capability {info.compute_capability}, the "
                              f"target needs {wanted_cc}", "build and run on a GPU of the target's architecture")
    return Support(True)
