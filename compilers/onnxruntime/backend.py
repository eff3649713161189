"""ONNX Runtime compiler and runner."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, first_line
from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, Support
from onnxsmith.reference import OnnxRuntimeRunner, available_providers, import_ort, session_options

if TYPE_CHECKING:
    from onnxsmith.targets import Target

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def providers_for(target: Target) -> list[str]:
    wanted = list(target.options_for("onnxruntime").get("providers", []))
    if not wanted:
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if target.kind == "gpu" else ["CPUExecutionProvider"]
    return wanted


class OnnxRuntimeCompiler(Compiler):
    """ONNX Runtime backend: optimizes the graph offline and runs it with the CPU or CUDA provider."""

    name = "onnxruntime"
    extra = "onnxruntime"
    artifact_kind = "ONNX model (optimized offline by ONNX Runtime)"
    options = (Option("threads", int, None, "intra-op threads (default: the profile's runtime.threads, else ONNX "
                      "Runtime's choice)", minimum=1),)
    value_types = frozenset({"string", "sequence", "optional"})

    def check_environment(self) -> None:
        import_ort()

    def version(self) -> str:
        return str(import_ort().__version__)

    def devices(self) -> list[str]:
        providers = available_providers()
        return ["CPU"] + (["CUDA"] if "CUDAExecutionProvider" in providers else [])

    def supports(self, target: Target) -> Support:
        if target.kind in ("cpu", "gpu"):
            return Support(True)
        return Support(False, f"ONNX Runtime has no provider here for {target.kind} targets")

    def runs_here(self, target: Target) -> Support:
        from onnxsmith.hostcheck import host_matches

        if target.kind == "gpu":
            from onnxsmith.hostcheck import gpu_matches
            from onnxsmith.units import machine_arch

            arch = machine_arch()
            if target.requires.arch and target.requires.arch != arch:
                return Support(False, f"{target.id} is an {target.requires.arch} device and this machine is {arch}",
                               "run the bundle on the device")
            if "CUDAExecutionProvider" not in available_providers():
                return Support(False, "ONNX Runtime's CUDA provider is not available",
                               "pip install onnxruntime-gpu on a machine with an NVIDIA GPU")
            return gpu_matches(target)
        return host_matches(target)

    def precisions(self, target: Target) -> tuple[str, ...]:
        return ("fp32",)

    def onnx_pass_precisions(self, target: Target) -> dict[str, str]:
        """fp16 and int8 come from onnxsmith's ONNX passes (float16 conversion, QDQ quantization); ONNX Runtime
        runs the transformed graph as given."""
        return {"fp16": "fp16", "int8": "int8_qdq"}

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        ort = import_ort()
        src = request.model.path
        shutil.copyfile(src, workdir / "model.onnx")
        for extra in src.parent.glob(src.name + ".data"):
            shutil.copyfile(extra, workdir / extra.name)
        opts = session_options(int(request.options.get("threads", request.profile.threads or 0)))
        # The saved file stays portable (extended level); sessions apply the hardware-specific layouts at load.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(workdir / "model.optimized.onnx")
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(workdir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendError("ONNX Runtime could not optimize the model", first_line(exc)) from exc
        files = ["model.optimized.onnx"] if (workdir / "model.optimized.onnx").exists() else ["model.onnx"]
        if files[0] != "model.onnx":
            (workdir / "model.onnx").unlink()
        files += [p.name for p in workdir.glob("*.data")]
        providers = providers_for(request.target)
        used = graph_precision(request.model.proto)
        notes = () if used == "fp32" else (f"the ONNX graph itself is {used} (an ONNX pass transformed it); ONNX "
                                           "Runtime runs it as given",)
        return Artifact(
            backend=self.name, backend_version=self.version(), device=providers[0], precision="fp32",
            precision_used=used, files=tuple(files), notes=notes,
            options={"providers": providers, "graph_optimization_level": "ORT_ENABLE_EXTENDED offline, ORT_ENABLE_ALL at load",
                     "threads": int(request.options.get("threads", request.profile.threads or 0))},
            metadata={"optimize_seconds": round(time.perf_counter() - start, 3)},
        )

    def load(self, artifact: Artifact, directory: Path, target: Target) -> OnnxRuntimeRunner:
        providers = list(artifact.options.get("providers", ["CPUExecutionProvider"]))
        have = available_providers()
        providers = [p for p in providers if p in have] or ["CPUExecutionProvider"]
        return OnnxRuntimeRunner(directory / artifact.files[0], providers, int(artifact.options.get("threads", 0)))


_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
             "DynamicQuantizeLinear"}


def graph_precision(proto: Any) -> str:
    """The compute precision an ONNX graph carries: ``int8`` (QDQ or integer ops), ``fp16`` (fp16 weights) or fp32.

    Mixed graphs read ``int8+fp32`` / ``fp16+fp32`` when some weights stay fp32 (an fp16 overflow guard keeps ops
    in fp32, a quantizer excludes some)."""
    from onnx import TensorProto

    ops = {node.op_type for node in proto.graph.node}
    floats = [t.data_type for t in proto.graph.initializer
              if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(t.dims) >= 2]
    if ops & _INT8_OPS:
        return "int8"
    if TensorProto.FLOAT16 in floats:
        return "fp16+fp32" if TensorProto.FLOAT in floats else "fp16"
    return "fp32"
