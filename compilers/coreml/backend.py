"""Core ML compiler: ONNX -> ML Program (``model.mlpackage``) through onnx2coreml and coremltools.

Conversion, fp16 and int8 weight compression all run on Linux; predicting needs macOS (see ``runner.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import platform
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, TargetError, UnsupportedError, first_line
from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, Runner, Support
from onnxsmith.units import machine_arch

if TYPE_CHECKING:
    from onnxsmith.compilers.coreml.runner import CoreMLRunner
    from onnxsmith.model import LoadedModel
    from onnxsmith.targets import Target

PRECISIONS = ("fp32", "fp16", "int8")
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
DEPLOYMENT_TARGETS = ("ios15", "ios16", "ios17", "ios18", "macos12", "macos13", "macos14", "macos15")
_INT8_MIN_TARGET = ("ios16", "ios17", "ios18", "macos13", "macos14", "macos15")
MAIN_FILE = "model.mlpackage"
PLUGIN_REVISION = 2
"""Bumped when what this plugin writes changes (2: every package file listed, onnxsmith provenance, palettization
and W8A8), so cache entries of an older plugin are not served."""


def package_files(workdir: Path) -> tuple[str, ...]:
    """Every file of the saved package, ``Manifest.json`` first: an ``.mlpackage`` is a folder, and an artifact
    lists files (each one is checksummed in the bundle)."""
    root = workdir / MAIN_FILE
    files = sorted(p.relative_to(workdir).as_posix() for p in root.rglob("*") if p.is_file())
    first = f"{MAIN_FILE}/Manifest.json"
    return (first, *[f for f in files if f != first])


def package_path(artifact: Artifact, directory: Path) -> Path:
    """The ``.mlpackage`` folder of an artifact (bundles before the file list named the folder itself)."""
    return directory / Path(artifact.files[0]).parts[0]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' import warnings (untested sklearn/torch versions, no macOS proxies) and progress bars."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def coremltools() -> Any:
    try:
        with quiet():
            import coremltools as ct
    except ImportError as exc:
        raise MissingDependencyError("coremltools", "coreml") from exc
    return ct


def onnx2coreml() -> Any:
    coremltools()
    try:
        with quiet():
            import onnx2coreml as converter
    except ImportError as exc:
        raise MissingDependencyError("onnx2coreml", "coreml", "the 'coreml' backend converts ONNX with it") from exc
    return converter


@dataclasses.dataclass(frozen=True)
class CoreMLOptions:
    """Validated Core ML settings (target file ``[device.coreml]`` first, ``--option`` values win)."""

    compute_units: str = "all"
    minimum_deployment_target: str = "ios17"
    weight_threshold: int = 2048
    """int8: only weights with more elements than this are quantized (coremltools' default)."""
    granularity: str = "per_channel"
    fp32_ops: tuple[str, ...] = ()
    """MIL op types kept fp32 in an fp16 program (e.g. ``softmax,layer_norm``)."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fp32_ops"] = list(self.fp32_ops)
        if not self.fp32_ops:
            del data["fp32_ops"]
        return data


def parse_options(options: Mapping[str, Any], target_options: Mapping[str, Any] | None = None,
                  target_file: str = "") -> CoreMLOptions:
    allowed = ("compute_units", "minimum_deployment_target", "weight_threshold", "granularity", "fp32_ops")
    values: dict[str, Any] = {}
    for source, items in (("target", target_options or {}), ("option", options)):
        for key, value in items.items():
            if key not in allowed:
                if source == "target":
                    raise TargetError(f"invalid {target_file or 'target'}", f"key 'device.coreml.{key}' is not a "
                                      f"Core ML option (allowed: {', '.join(allowed)})")
                raise UnsupportedError(f"unknown coreml option '{key}'", f"allowed: {', '.join(allowed)}")
            values[key] = value
    where = lambda key: f"coreml option {key}={values[key]}"  # noqa: E731
    units = str(values.get("compute_units", "all")).lower()
    if units not in COMPUTE_UNITS:
        raise UnsupportedError(f"invalid {where('compute_units')}", f"allowed: {', '.join(COMPUTE_UNITS)}")
    deploy = str(values.get("minimum_deployment_target", "ios17")).lower()
    if deploy not in DEPLOYMENT_TARGETS:
        raise UnsupportedError(f"invalid {where('minimum_deployment_target')}",
                               f"allowed: {', '.join(DEPLOYMENT_TARGETS)}")
    granularity = str(values.get("granularity", "per_channel")).lower()
    if granularity not in ("per_channel", "per_tensor"):
        raise UnsupportedError(f"invalid {where('granularity')}", "allowed: per_channel, per_tensor")
    try:
        threshold = int(str(values.get("weight_threshold", 2048)))
    except ValueError:
        threshold = -1
    if threshold < 0:
        raise UnsupportedError(f"invalid {where('weight_threshold')}", "expected an integer >= 0")
    fp32_ops = values.get("fp32_ops", ())
    if isinstance(fp32_ops, str):
        fp32_ops = [op.strip() for op in fp32_ops.split(",") if op.strip()]
    return CoreMLOptions(units, deploy, threshold, granularity, tuple(fp32_ops))


def program_summary(spec: Any) -> dict[str, Any]:
    """What an ML Program computes in, read from its spec: op output types and compressed weights."""
    from coremltools.proto import MIL_pb2

    if spec.WhichOneof("Type") != "mlProgram":
        return {"ops": {}, "compute": {}, "compressed_weights": 0, "weight_dtypes": []}
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    ops: Counter[str] = Counter()
    compute: Counter[str] = Counter()
    weight_dtypes: set[str] = set()
    compressed = 0
    for op in block.operations:
        ops[op.type] += 1
        if op.type.startswith("constexpr_"):
            compressed += 1
            values = [*op.attributes.values(), *(arg.value for binding in op.inputs.values()
                                                 for arg in binding.arguments if arg.HasField("value"))]
            for value in values:
                if value.type.HasField("tensorType"):
                    name = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
                    if name.startswith(("INT", "UINT")) and name != "INT32":
                        weight_dtypes.add(name.lower())
        elif op.type not in ("const", "cast"):  # casts convert fp32 inputs/outputs at the program's edges
            for out in op.outputs:
                if out.type.HasField("tensorType"):
                    compute[MIL_pb2.DataType.Name(out.type.tensorType.dataType).lower()] += 1
    return {"ops": dict(ops), "compute": dict(compute), "compressed_weights": compressed,
            "weight_dtypes": sorted(weight_dtypes)}


def precision_from_summary(summary: Mapping[str, Any]) -> str:
    """``fp16``, ``fp32``, ``fp16+fp32`` (mixed), with ``+int8-weights`` when weights are stored compressed."""
    compute = summary.get("compute", {})
    parts = [name for key, name in (("float16", "fp16"), ("float32", "fp32")) if compute.get(key)]
    if summary.get("compressed_weights"):
        dtypes = summary.get("weight_dtypes") or ["int8"]
        parts.append("+".join(f"{d}-weights" for d in dtypes))
    return "+".join(parts) or "unknown"


class CoreMLCompiler(Compiler):
    """Core ML backend: an ML Program package for Apple devices (CPU, GPU, Neural Engine)."""

    name = "coreml"
    extra = "coreml"
    artifact_kind = "Core ML ML Program (.mlpackage)"
    options = (
        Option("compute_units", str, "all", "Core ML compute units", choices=COMPUTE_UNITS),
        Option("minimum_deployment_target", str, "ios17", "oldest OS the package runs on", choices=DEPLOYMENT_TARGETS),
        Option("weight_threshold", int, 2048, "int8: weights with fewer elements stay float", minimum=0),
        Option("granularity", str, "per_channel", "int8 weight quantization granularity",
               choices=("per_channel", "per_tensor")),
        Option("fp32_ops", list, (), "fp16: ONNX op types kept in fp32 (comma-separated)"),
    )

    def check_environment(self) -> None:
        onnx2coreml()

    def version(self) -> str:
        return f"{coremltools().__version__}+onnx2coreml-{onnx2coreml().__version__}+plugin-{PLUGIN_REVISION}"

    def devices(self) -> list[str]:
        if platform.system() != "Darwin":
            return []  # conversion works here, prediction does not
        return ["CPU", "GPU", "NeuralEngine"] if platform.machine() == "arm64" else ["CPU", "GPU"]

    def supports(self, target: Target) -> Support:
        if target.vendor.lower() == "apple" or target.requires.os in ("darwin", "ios"):
            return Support(True)
        return Support(False, f"Core ML runs only on Apple devices; {target.id} is a {target.vendor} {target.kind}",
                       "choose an apple/* target, or another --backend")

    def runs_here(self, target: Target) -> Support:
        supported = self.supports(target)
        if not supported:
            return supported
        if platform.system() != "Darwin":
            return Support(False, f"Core ML predicts only on macOS (and iOS); this machine runs {platform.system()}",
                           "copy the bundle to a Mac and profile it there")
        arch = machine_arch()
        if target.requires.arch and target.requires.arch != arch:
            return Support(False, f"{target.id} is an {target.requires.arch} device and this Mac is {arch}",
                           "run it on the device")
        return Support(True)

    def precisions(self, target: Target) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if not target.precisions or p in target.precisions)

    def needs_calibration(self, precision: str, model: LoadedModel) -> bool:
        """Core ML int8 quantizes weights only: no activation ranges, so no calibration data."""
        return False

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        converter = onnx2coreml()
        with quiet():
            report = converter.analyze(str(model.path))  # a path: its passes must not touch model.proto
        return {op: list(nodes) for op, nodes in report.unsupported.items()}

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        ct, converter = coremltools(), onnx2coreml()
        opts = parse_options(request.options, request.target.options_for("coreml"), request.target.source_file)
        precision = request.precision
        if precision not in PRECISIONS:
            raise UnsupportedError(f"coreml backend cannot compile {precision}", f"it offers {', '.join(PRECISIONS)}")
        if precision == "int8" and opts.minimum_deployment_target not in _INT8_MIN_TARGET:
            raise UnsupportedError("int8 weights need iOS16 / macOS13 or newer",
                                   f"minimum_deployment_target is {opts.minimum_deployment_target}",
                                   "give --option minimum_deployment_target=ios16 (or newer)")
        notes = []
        start = time.perf_counter()
        try:
            with quiet():
                mlmodel = converter.convert(
                    str(request.model.path), format="mlpackage",
                    minimum_deployment_target=opts.minimum_deployment_target,
                    compute_precision="fp32" if precision == "fp32" else "fp16", compute_units=opts.compute_units,
                    fp32_op_types=set(opts.fp32_ops) or None)
        except converter.UnsupportedOpError as exc:
            first = sorted(exc.missing.items())[0]
            raise UnsupportedError(f"Core ML cannot convert op {first[0]}", f"node(s) {', '.join(first[1][:3])}",
                                   "onnx2coreml has no lowering for it; register one, or use another backend") from exc
        except Exception as exc:
            raise BackendError("onnx2coreml could not convert the model", first_line(exc)) from exc
        convert_seconds = time.perf_counter() - start
        quantization: dict[str, Any] = {}
        if precision == "int8":
            mlmodel, quantization = self._quantize(ct, mlmodel, opts)
            notes.append("int8 is weight-only: weights are stored as int8 (linear symmetric, "
                         f"{opts.granularity}) and dequantized on load; activations stay fp16")
        elif precision == "fp16" and opts.fp32_ops:
            notes.append(f"fp16 with these MIL ops kept fp32: {', '.join(opts.fp32_ops)}")
        try:
            with quiet():
                mlmodel.save(str(workdir / MAIN_FILE))
        except Exception as exc:
            raise BackendError("coremltools could not write the .mlpackage", first_line(exc)) from exc
        spec = mlmodel.get_spec()
        summary = program_summary(spec)
        if platform.system() != "Darwin":
            notes.append("converted on Linux: Core ML predicts only on macOS, copy the bundle to a Mac to run it")
        package_bytes = sum(p.stat().st_size for p in (workdir / MAIN_FILE).rglob("*") if p.is_file())
        return Artifact(
            backend=self.name, backend_version=self.version(), device=opts.compute_units,
            precision=precision, precision_used=precision_from_summary(summary), files=package_files(workdir),
            options=opts.to_json(),
            metadata={
                "spec_version": spec.specificationVersion,
                "io": io_names(request.model, spec),
                "program": summary,
                "quantization": quantization,
                "convert_seconds": round(convert_seconds, 3),
                "package_mb": round(package_bytes / 2**20, 4),
                "coremltools": str(ct.__version__), "onnx2coreml": str(converter.__version__),
            },
            notes=tuple(notes),
        )

    def _quantize(self, ct: Any, mlmodel: Any, opts: CoreMLOptions) -> tuple[Any, dict[str, Any]]:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity=opts.granularity,
            weight_threshold=opts.weight_threshold))
        try:
            with quiet():
                quantized = linear_quantize_weights(mlmodel, config=config)
        except Exception as exc:
            raise BackendError("coremltools could not quantize the weights to int8", first_line(exc)) from exc
        compressed = program_summary(quantized.get_spec())["compressed_weights"]
        if not compressed:
            raise UnsupportedError("int8 quantized no weights",
                                   f"no weight tensor has more than weight_threshold={opts.weight_threshold} elements",
                                   "lower --option weight_threshold, or compile fp16")
        return quantized, {"method": "coremltools linear_quantize_weights (weight-only)", "mode": "linear_symmetric",
                           "dtype": "int8", "granularity": opts.granularity,
                           "weight_threshold": opts.weight_threshold, "quantized_weights": compressed}

    def load_emulated(self, artifact: Artifact, directory: Path, target: Target) -> Runner:
        """The saved ML Program evaluated with numpy (``milcheck``): ``validate`` on a machine without Core ML."""
        from onnxsmith.compilers.coreml.milcheck import MILProgramRunner

        coremltools()
        return MILProgramRunner(artifact, directory)

    def load(self, artifact: Artifact, directory: Path, target: Target) -> CoreMLRunner:
        from onnxsmith.compilers.coreml.runner import CoreMLRunner

        if platform.system() != "Darwin":
            raise UnsupportedError("cannot run a Core ML model here",
                                   f"Core ML predicts only on macOS (and iOS); this machine runs {platform.system()}",
                                   "copy the bundle to a Mac and run or profile it there")
        return CoreMLRunner(package_path(artifact, directory), str(artifact.options.get("compute_units", "all")),
                            artifact.metadata.get("io", {}))


def io_names(model: LoadedModel, spec: Any) -> dict[str, dict[str, str]]:
    """ONNX name -> Core ML feature name, per direction (Core ML may rename features; order is kept)."""
    return {
        "inputs": {s.name: f.name for s, f in zip(model.inputs, spec.description.input, strict=True)},
        "outputs": {s.name: f.name for s, f in zip(model.outputs, spec.description.output, strict=True)},
    }
