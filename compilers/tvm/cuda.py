"""CUDA specifics: TVM 0.27 keeps CUDA C source in the library and compiles it when the library is loaded.

So a CUDA artifact needs NVRTC (``pip install cuda-bindings``) or nvcc on the GPU machine, and a kernel that
does not compile would only show up there. At compile time the kernels are written to ``kernels.cu`` and, where
nvcc is installed, compiled for the target's ``arch`` as a check (no GPU needed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from onnxsmith.errors import BackendError

KERNELS_FILE = "kernels.cu"


def kernel_source(executable: Any) -> str:
    """The CUDA C source of every CUDA module imported by the built executable."""
    sources: list[str] = []

    def walk(module: Any) -> None:
        if module.kind == "cuda":
            sources.append(str(module.inspect_source()))
        for child in module.imports:
            walk(child)

    walk(executable.mod)
    return "\n".join(sources)


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = Path(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda")
    return str(home / "bin" / "nvcc") if (home / "bin" / "nvcc").is_file() else None


def check_kernels(source_file: Path, sm: int) -> str:
    """Compile ``source_file`` with nvcc for ``sm_<sm>``; returns what was checked, '' when nvcc is absent."""
    nvcc = find_nvcc()
    if nvcc is None:
        return ""
    with tempfile.TemporaryDirectory(prefix="onnxsmith-nvcc-") as tmp:
        command = [nvcc, f"-arch=sm_{sm}", "-cubin", "-w", "-o", str(Path(tmp) / "kernels.cubin"), str(source_file)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError("nvcc could not check the CUDA kernels", str(exc)) from exc
    if proc.returncode != 0:
        error = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:300])
        raise BackendError(f"the generated CUDA kernels do not compile for sm_{sm}", error,
                           "report the model; try --precision fp32 or another --backend")
    return f"nvcc -arch=sm_{sm}"


def load_time_compiler() -> str:
    """Make TVM compile CUDA source at load with what is installed: NVRTC if cuda-bindings is, else nvcc."""
    if os.environ.get("TVM_CUDA_COMPILE_MODE"):
        return os.environ["TVM_CUDA_COMPILE_MODE"]
    if importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None:
        return "nvrtc"
    if find_nvcc():
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
        return "nvcc"
    return ""


LOAD_NOTE = ("the CUDA kernels are compiled for the GPU when the library is loaded (TVM keeps CUDA C source): "
             "the GPU machine needs 'pip install cuda-bindings' (NVRTC) or nvcc")
