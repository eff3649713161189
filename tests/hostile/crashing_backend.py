"""A real backend plugin for the hostile suite whose vendor library "crashes": ``--option crash=abort`` calls
``os.abort()`` and ``crash=segv`` reads address 0 inside ``compile()``; ``crash=sleep`` hangs there (for the signal
tests); ``crash=load`` compiles (the model is copied, ONNX Runtime runs it) and segfaults when the bundle is
loaded, as a broken engine would in ``profile``. Each writes a partial file into its work directory first, as a
vendor compiler does before it dies."""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from pathlib import Path
from typing import Any

from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, Support


class CrashingCompiler(Compiler):
    name = "crashy"
    artifact_kind = "onnx"
    options = (Option("crash", str, "abort", "how the compiler dies", choices=("abort", "segv", "sleep",
                                                                               "load")),)

    def check_environment(self) -> None:
        return None

    def version(self) -> str:
        return "1.0"

    def devices(self) -> list[str]:
        return ["cpu"]

    def supports(self, target: Any) -> Support:
        return Support(True)

    def runs_here(self, target: Any) -> Support:
        return Support(True)

    def precisions(self, target: Any) -> tuple[str, ...]:
        return ("fp32",)

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        how = request.options.get("crash", "abort")
        (workdir / "partial.bin").write_bytes(b"\0" * 4096)
        if request.progress:
            request.progress(f"crashing by {how}")
        if how == "abort":
            os.abort()
        if how == "segv":
            ctypes.string_at(0)
        if how == "sleep":
            time.sleep(120)
        (workdir / "partial.bin").unlink()
        shutil.copyfile(request.model.path, workdir / "model.onnx")
        return Artifact(backend=self.name, backend_version=self.version(), device="cpu", precision="fp32",
                        precision_used="fp32", files=("model.onnx",), options={"crash": how})

    def load(self, artifact: Artifact, directory: Path, target: Any) -> Any:
        if artifact.options.get("crash") == "load":
            ctypes.string_at(0)
        from onnxsmith.check.reference import OnnxRuntimeRunner

        return OnnxRuntimeRunner(directory / "model.onnx", ["CPUExecutionProvider"])
