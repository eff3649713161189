"""The Core ML deployment programs: Swift (Core ML framework, a SwiftPM package) and Python (coremltools). Both
need macOS: neither is built or run here."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.deploy import quoting
from onnxsmith.plugin import Artifact, DeployProgram

if TYPE_CHECKING:
    from onnxsmith.targets import Target

TEMPLATES = Path(__file__).parent / "deploy"
SWIFT_UNITS = {"all": "all", "cpu_only": "cpuOnly", "cpu_and_gpu": "cpuAndGPU", "cpu_and_ne": "cpuAndNeuralEngine"}


def not_built() -> str:
    swift = "swift is not installed here" if shutil.which("swift") is None else "swift is installed here"
    return (f"generated only, not built or run here: the Core ML framework exists only on Apple platforms ({swift}; "
            "on Linux there is no CoreML module to import); the test suite checks that it opens the bundle's "
            "artifact files")


def programs(artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
    signature = artifact.metadata.get("io", {})
    ins, outs = dict(signature.get("inputs", {})), dict(signature.get("outputs", {}))
    units = str(artifact.options.get("compute_units", "all"))
    units = units if units in SWIFT_UNITS else "all"  # an enum member in both programs: only the known ones
    loads = ("model.mlpackage",)

    return [
        DeployProgram("Swift", "swift", TEMPLATES / "swift", loads, build=("swift build -c release",),
                      run=(".build/release/deploy ../../artifact out @@INPUT_FILES@@",), checked=not_built(),
                      variables={"COMPUTE_UNITS": SWIFT_UNITS[units],
                                 "SWIFT_FEATURES": ", ".join(f"{quoting.swift(k)}: {quoting.swift(v)}"
                                                             for k, v in {**ins, **outs}.items() if k != v) or ":"}),
        DeployProgram("Python", "python", TEMPLATES / "python", loads,
                      run=("python3 run.py ../../artifact out @@INPUT_FILES@@",),
                      checked=not_built().replace("the Core ML framework exists only on Apple platforms",
                                                  "coremltools predicts only on macOS"),
                      variables={"CT_COMPUTE_UNITS": units.upper(),
                                 "PY_FEATURES": quoting.python({"inputs": ins, "outputs": outs})}),
    ]
