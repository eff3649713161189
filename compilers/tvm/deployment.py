"""The TVM deployment programs: C++ over libtvm_runtime + libtvm_ffi (host or cross-compiled for aarch64) and
Python over the apache-tvm wheel."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.deploy import quoting
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import Artifact, DeployProgram

if TYPE_CHECKING:
    from onnxsmith.targets import Target

TEMPLATES = Path(__file__).parent / "deploy"
CROSS_CXX = "aarch64-linux-gnu-g++"


def toolchain_missing(arch: str) -> str:
    """Why the C++ program for ``arch`` cannot be built (and run) here ('' when it can)."""
    from onnxsmith.compilers.tvm.targets import machine_arch

    compiler = "g++" if arch == machine_arch() else CROSS_CXX if arch == "aarch64" else ""
    if not compiler:
        return f"no cross compiler for {arch} is known to onnxsmith"
    missing = [tool for tool in ("cmake", compiler) if shutil.which(tool) is None]
    if missing:
        package = "g++" if compiler == "g++" else "g++-aarch64-linux-gnu"
        return f"{' and '.join(missing)} not installed (apt-get install cmake {package})"
    if arch != machine_arch():
        from onnxsmith.compilers.tvm import emulate

        return emulate.missing()
    return ""


def programs(artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
    from onnxsmith.compilers.tvm.common import read_io
    from onnxsmith.compilers.tvm.targets import machine_arch

    io = read_io(directory)
    arch, cuda = str(io.get("arch")), io.get("device") == "cuda"
    inputs = tuple(TensorSpec.from_json(s) for s in io["inputs"])
    loads = ("model.so",) + (("kernels.cu",) if cuda else ())
    entry = str(io.get("entry", "main"))
    variables = {"PY_ENTRY": quoting.python(entry), "CPP_ENTRY": quoting.cpp(entry), "ARCH": quoting.text(arch),
                 "TVM_DEVICE": "cuda" if cuda else "cpu"}
    native = arch == machine_arch()
    out = []
    if not cuda:
        if native:
            build = ("cmake -S . -B build", "cmake --build build")
            run = ("./build/deploy ../../artifact out @@INPUT_FILES@@",)
            checked = "the default test suite builds this program, runs it on the example input and compares its " \
                      "outputs with `onnxsmith run` (1e-5)"
        else:
            build = (f"# on the {arch} device itself (pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1):",
                     "cmake -S . -B build && cmake --build build",
                     f"# or cross-compiled on an x86-64 machine, with the {arch} runtime libraries in TVM_LIB_DIR "
                     f"(from the {arch} wheels of apache-tvm and apache-tvm-ffi):",
                     f"cmake -S . -B build -DCMAKE_CXX_COMPILER={CROSS_CXX} -DTVM_LIB_DIR=/path/to/{arch}/libs",
                     "cmake --build build")
            run = ("./build/deploy ../../artifact out @@INPUT_FILES@@",
                   f"# or, cross-compiled, under user-mode emulation on x86-64: "
                   f"qemu-{arch} -L /usr/{arch}-linux-gnu ./build/deploy ../../artifact out @@INPUT_FILES@@")
            checked = f"the default test suite cross-compiles this program with {CROSS_CXX}, runs it under " \
                      f"qemu-{arch} against the {arch} TVM runtime libraries and compares its outputs with " \
                      "`onnxsmith run` through the emulated RPC server (1e-5)"
        out.append(DeployProgram("C++", "cpp", TEMPLATES / "cpp", loads, build=build, run=run, checked=checked,
                                 variables=variables, inputs=inputs))
    py_checked = ("the default test suite runs it on the example input and compares its outputs with `onnxsmith run` "
                  "(1e-5)") if native and not cuda else (
        "generated only: it needs an NVIDIA GPU" if cuda else
        f"generated only: it needs {arch} Python wheels of apache-tvm on the device, which this machine cannot run")
    out.append(DeployProgram("Python", "python", TEMPLATES / "python", loads,
                             run=("python3 run.py ../../artifact out @@INPUT_FILES@@",), checked=py_checked,
                             variables=variables, inputs=inputs))
    return out
