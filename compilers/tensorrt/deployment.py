"""The TensorRT deployment programs (C++ over nvinfer + the CUDA runtime, Python over tensorrt + cuda-python) and
Triton's tensorrt_plan platform. Neither program is built or run here: TensorRT is not installable on this machine
(see the README's "What runs where")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.plugin import Artifact, DeployProgram, TritonModel

if TYPE_CHECKING:
    from onnxsmith.targets import Target

TEMPLATES = Path(__file__).parent / "deploy"
NOT_BUILT = ("generated only, not built or run here: TensorRT cannot be installed on this machine (NVIDIA's wheels "
             "download from NVIDIA's own index) and there is no GPU; the test suite checks that it opens the bundle's "
             "artifact files")


def programs(artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
    loads = ("model.engine",)
    return [
        DeployProgram("C++", "cpp", TEMPLATES / "cpp", loads,
                      build=("cmake -S . -B build -DTENSORRT_ROOT=/path/to/TensorRT", "cmake --build build"),
                      run=("./build/deploy ../../artifact out @@INPUT_FILES@@",), checked=NOT_BUILT),
        DeployProgram("Python", "python", TEMPLATES / "python", loads,
                      run=("python3 run.py ../../artifact out @@INPUT_FILES@@",), checked=NOT_BUILT),
    ]


def triton_model(artifact: Artifact) -> TritonModel:
    return TritonModel("platform", "tensorrt_plan", {"model.plan": "model.engine"})
