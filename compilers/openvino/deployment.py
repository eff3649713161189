"""The OpenVINO deployment programs (C++ against the wheel's headers and CMake config, Python) and Triton's
native OpenVINO backend."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.deploy import quoting
from onnxsmith.plugin import Artifact, DeployProgram, TritonModel

if TYPE_CHECKING:
    from onnxsmith.targets import Target

TEMPLATES = Path(__file__).parent / "deploy"
OPENVINO_DIR = '"$(python3 -c \'import openvino, os; print(os.path.dirname(openvino.__file__))\')/cmake"'


def toolchain_missing() -> str:
    """Why the C++ program cannot be built here ('' when it can)."""
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install cmake g++)"
    if importlib.util.find_spec("openvino") is None:
        return "the openvino wheel (headers, libraries, CMake config) is not installed"
    return ""


def programs(artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
    device = artifact.device
    config = {str(k): str(v) for k, v in artifact.options.items()}
    loads = tuple(f for f in ("model.blob", "model.xml", "model.bin") if f in artifact.files)
    variables = {"PY_DEVICE": quoting.python(device), "CPP_DEVICE": quoting.cpp(device),
                 "PY_CONFIG": quoting.python(config),
                 "CPP_CONFIG": ", ".join(f"{{{quoting.cpp(k)}, {quoting.cpp(v)}}}" for k, v in config.items())}
    here = "the default test suite builds this program and runs it on the example input, and compares its outputs " \
           "with `onnxsmith run` (1e-5)" if device == "CPU" else \
           f"generated only: onnxsmith's tests run it on CPU bundles, and this one is for {device}"
    return [
        DeployProgram("C++", "cpp", TEMPLATES / "cpp", loads,
                      build=(f"cmake -S . -B build -DOpenVINO_DIR={OPENVINO_DIR}", "cmake --build build"),
                      run=("./build/deploy ../../artifact out @@INPUT_FILES@@",), checked=here, variables=variables),
        DeployProgram("Python", "python", TEMPLATES / "python", loads,
                      run=("python3 run.py ../../artifact out @@INPUT_FILES@@",),
                      checked=here.replace("builds this program and runs", "runs"), variables=variables),
    ]


def triton_model(artifact: Artifact) -> TritonModel:
    """Triton's OpenVINO backend reads the IR (``model.xml``/``model.bin``) from the version folder."""
    parameters = {k: str(v) for k, v in artifact.options.items() if k in ("PERFORMANCE_HINT", "NUM_STREAMS",
                                                                          "INFERENCE_NUM_THREADS")}
    return TritonModel("backend", "openvino", {"model.xml": "model.xml", "model.bin": "model.bin"}, parameters)
