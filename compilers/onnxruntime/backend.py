"""ONNX Runtime compiler and runner."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, first_line
from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, DeployProgram, Support, TritonModel, Variant
from onnxsmith.check.reference import GRAPH_LEVELS, OnnxRuntimeRunner, available_providers, import_ort, session_options

if TYPE_CHECKING:
    from collections.abc import Mapping

    from onnxsmith.model import LoadedModel
    from onnxsmith.profiles import Profile
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
    exposes_layers = True  # load_layers: the tensors as extra outputs of the artifact's own graph
    options = (Option("threads", int, None, "intra-op threads (default: the profile's runtime.threads, else ONNX "
                      "Runtime's choice)", minimum=1),
               Option("graph_optimization_level", str, None, "graph optimizations applied when the session loads "
                      "(default: all; the saved model is optimized at 'extended' already)", choices=("disable", "basic", "extended", "all")),
               Option("execution_mode", str, None, "run independent branches of the graph in parallel (default: "
                      "sequential)", choices=("sequential", "parallel")))

    value_types = frozenset({"string", "sequence", "optional"})

    def runtime_knobs(self, target: Target, profile: Profile, options: Mapping[str, Any]) -> list[Variant]:
        """Intra-op threads (half the cores: on a shared machine fewer threads can wait less), the load-time graph
        optimization level one step down (extended instead of all: the layout changes of 'all' do not always pay),
        and the parallel execution mode (for graphs with independent branches). Under either objective a single
        session is timed, so the same knobs apply."""
        import os

        cores = target.cores or os.cpu_count() or 1
        threads = int(options.get("threads") or profile.threads or 0) or cores
        knobs = []
        if threads > 1:
            fewer = max(1, threads // 2)
            knobs.append(Variant({"threads": fewer}, f"intra-op threads {threads} -> {fewer}"))
        level = options.get("graph_optimization_level") or "all"
        if level == "all":
            knobs.append(Variant({"graph_optimization_level": "extended"}, "graph optimization level all -> extended"))
        if (options.get("execution_mode") or "sequential") == "sequential":
            knobs.append(Variant({"execution_mode": "parallel"}, "execution mode sequential -> parallel"))
        return knobs

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
        from onnxsmith.host import host_matches

        if target.kind == "gpu":
            from onnxsmith.host import gpu_matches
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

    def dynamic_shapes(self, model: LoadedModel, target: Target) -> Support:
        """ONNX Runtime runs the model's symbolic dims as they are: the artifact takes any shape in the range
        (the core checks the bounds before each run)."""
        return Support(True)

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
        level = request.options.get("graph_optimization_level") or "all"
        mode = request.options.get("execution_mode") or "sequential"
        used = graph_precision(request.model.proto)
        notes = () if used == "fp32" else (f"the ONNX graph itself is {used} (an ONNX pass transformed it); ONNX "
                                           "Runtime runs it as given",)
        return Artifact(
            backend=self.name, backend_version=self.version(), device=providers[0], precision="fp32",
            precision_used=used, files=tuple(files), notes=notes,
            options={"providers": providers,
                     "graph_optimization_level": f"ORT_ENABLE_EXTENDED offline, {GRAPH_LEVELS[level]} at load",
                     "load_graph_level": level, "execution_mode": mode,
                     "threads": int(request.options.get("threads", request.profile.threads or 0))},
            metadata={"optimize_seconds": round(time.perf_counter() - start, 3),
                      **({"dynamic_shapes": "the ONNX graph keeps its symbolic dims; any shape in the range runs"}
                         if request.model.shape_ranges else {})},
        )

    def deploy_programs(self, artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
        from onnxsmith.compilers.onnxruntime.deployment import programs

        return programs(artifact, directory, target)

    def triton_model(self, artifact: Artifact, target: Target) -> TritonModel | None:
        from onnxsmith.compilers.onnxruntime.deployment import triton_model

        return triton_model(artifact)

    def load(self, artifact: Artifact, directory: Path, target: Target) -> OnnxRuntimeRunner:
        providers = list(artifact.options.get("providers", ["CPUExecutionProvider"]))
        have = available_providers()
        providers = [p for p in providers if p in have] or ["CPUExecutionProvider"]
        return OnnxRuntimeRunner(directory / artifact.files[0], providers, int(artifact.options.get("threads", 0)),
                                 str(artifact.options.get("load_graph_level", "all")),
                                 str(artifact.options.get("execution_mode", "sequential")))

    def load_layers(self, artifact: Artifact, directory: Path, target: Target, tensors: list[str]
                    ) -> OnnxRuntimeRunner | None:
        """The artifact's own graph with ``tensors`` as extra outputs: float tensors as they are, tensors the
        offline optimizer turned into int8 (``T_QuantizeLinear_Output`` of a fused QLinearConv/QGemm...)
        through a DequantizeLinear with their own scale, so a QDQ artifact shows the values its int8 kernels
        produce."""
        import onnx

        from onnxsmith.check.layers import ort_runner_for

        proto = onnx.load(str(directory / artifact.files[0]))
        exposed = expose_tensors(proto, tensors)
        if not exposed:
            return None
        have = available_providers()
        providers = [p for p in artifact.options.get("providers", []) if p in have] or ["CPUExecutionProvider"]
        return ort_runner_for(proto, int(artifact.options.get("threads", 0)), providers)


_SCALE_INPUTS = {"QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QGemm": (7, 8),
                 "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QLinearConcat": (0, 1), "QLinearSigmoid": (3, 4),
                 "QLinearLeakyRelu": (3, 4), "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4)}
_PASS_THROUGH = {"Reshape", "Flatten", "Transpose", "MaxPool", "Squeeze", "Unsqueeze", "Identity", "Slice",
                 "Gather", "Split", "Resize", "SpaceToDepth", "DepthToSpace"}


def expose_tensors(proto: Any, tensors: list[str]) -> list[str]:
    """Add ``tensors`` to ``proto``'s outputs where the graph holds them (in place); returns those added.

    A tensor kept as float is exposed as it is; one that only exists quantized (ONNX Runtime's QDQ naming,
    ``T_QuantizeLinear_Output``) is exposed through a DequantizeLinear with the scale and zero point of the node
    that wrote it."""
    import onnx

    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    present = {o.name for o in graph.output}
    inferred = onnx.shape_inference.infer_shapes(proto) if proto.ByteSize() < 1_800_000_000 else proto
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*graph.output, *graph.input]})
    added = []

    def qparams(name: str, depth: int = 0) -> tuple[str, str] | None:
        node = producer.get(name)
        if node is None or depth > 8:
            return None
        if node.op_type in _SCALE_INPUTS:
            scale, zero = _SCALE_INPUTS[node.op_type]
            if len(node.input) > zero:
                return node.input[scale], node.input[zero]
        if node.op_type in _PASS_THROUGH and node.input:
            return qparams(node.input[0], depth + 1)
        return None

    for name in tensors:
        if name in present:
            added.append(name)
            continue
        if name in producer and types.get(name, 1) in (1, 10, 11, 16):
            graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, 1), None))
        elif f"{name}_QuantizeLinear_Output" in producer:
            params = qparams(f"{name}_QuantizeLinear_Output")
            if params is None:
                continue
            graph.node.append(onnx.helper.make_node("DequantizeLinear", [f"{name}_QuantizeLinear_Output", *params],
                                                    [name], name=f"{name}_onnxsmith_exposed"))
            graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
        else:
            continue
        present.add(name)
        added.append(name)
    return added


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
