"""The ONNX Runtime deployment programs (C++ over the C++ API, Python) and Triton's onnxruntime_onnx platform."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.deploy import quoting
from onnxsmith.plugin import Artifact, DeployProgram, TritonModel

if TYPE_CHECKING:
    from onnxsmith.targets import Target

TEMPLATES = Path(__file__).parent / "deploy"
NO_HEADERS = ("generated only, not built here: no PyPI or Debian package provides ONNX Runtime's C/C++ headers (the "
              "onnxruntime wheel ships libonnxruntime.so without them; Debian 12 has no onnxruntime), so build it "
              "against ONNX Runtime's release archive (include/ and lib/)")


def programs(artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
    model = artifact.files[0]
    loads = tuple(artifact.files)
    providers = [str(p) for p in artifact.options.get("providers", ["CPUExecutionProvider"])]
    variables = {"MODEL_FILE": quoting.text(model), "CPP_MODEL_FILE": quoting.cpp(model),
                 "PY_MODEL_FILE": quoting.python(model), "PY_PROVIDERS": quoting.python(providers)}
    cpu = artifact.device == "CPUExecutionProvider"
    return [
        DeployProgram("C++", "cpp", TEMPLATES / "cpp", loads,
                      build=("cmake -S . -B build -DONNXRUNTIME_ROOT=/path/to/onnxruntime-linux-x64-<version>",
                             "cmake --build build"),
                      run=("./build/deploy ../../artifact out @@INPUT_FILES@@",), checked=NO_HEADERS,
                      variables=variables),
        DeployProgram("Python", "python", TEMPLATES / "python", loads,
                      run=("python3 run.py ../../artifact out @@INPUT_FILES@@",),
                      checked="the default test suite runs it on the example input and compares its outputs with "
                              "`onnxsmith run` (1e-5)" if cpu else f"generated only: it needs {artifact.device}",
                      variables=variables),
    ]


def triton_model(artifact: Artifact) -> TritonModel:
    model = artifact.files[0]
    files = {"model.onnx": model, **{f: f for f in artifact.files[1:]}}
    return TritonModel("platform", "onnxruntime_onnx", files)
