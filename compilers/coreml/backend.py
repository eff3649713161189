"""Core ML compiler: ONNX -> ML Program (``model.mlpackage``) through onnx2coreml and coremltools.

Conversion, fp16 and int8 weight compression all run on Linux; predicting needs macOS (see ``runner.py``). The
plugin class is here; its parts are ``options`` (settings and what they refuse), ``conversion`` (ONNX -> ML
Program, provenance, the program's summary), ``compression`` (int8 / palettized weights, W8A8 activations),
``common`` (lazy imports, the package's files), ``runner``, ``milcheck`` (numpy evaluation) and ``deployment``.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.coreml import compression, conversion
from onnxsmith.compilers.coreml.common import MAIN_FILE, coremltools, onnx2coreml, package_files, package_path, quiet
from onnxsmith.compilers.coreml.options import (
    ACTIVATIONS,
    COMPUTE_UNITS,
    DEPLOYMENT_TARGETS,
    PALETTE_BITS,
    PRECISIONS,
    W8A8_MIN_TARGET,
    check_compile,
    parse_options,
)
from onnxsmith.errors import UnsupportedError
from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, DeployProgram, Runner, Support, Variant
from onnxsmith.units import machine_arch

if TYPE_CHECKING:
    from onnxsmith.compilers.coreml.runner import CoreMLRunner
    from onnxsmith.model import LoadedModel
    from onnxsmith.targets import Target

_OS_NAMES = {"ios": "iOS", "darwin": "macOS", "linux": "Linux"}
PLUGIN_REVISION = 2
"""Bumped when what this plugin writes changes (2: every package file listed, onnxsmith provenance, palettization
and W8A8), so cache entries of an older plugin are not served."""


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
        Option("fp32_ops", list, (), "fp16: MIL op types kept in fp32 (comma-separated, e.g. softmax,layer_norm)"),
        Option("palettize_bits", int, None, "fp16/int8: palettize weights to a k-means look-up table of 2**bits "
               "values (1, 2, 3, 4, 6 or 8)", choices=PALETTE_BITS),
        Option("activations", str, "float", "int8: int8 also quantizes activations (W8A8, iOS17/macOS14+; needs "
               "--calibration)", choices=ACTIVATIONS),
        Option("keep_fp32", list, (), "int8 or palettized weights: ONNX node names whose weights stay float (op "
               "selectors; a keep-list from 'onnxsmith debug precision')"),
    )

    def keep_fp32_option(self, target: Target) -> str | None:
        return "keep_fp32"

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
        wanted = target.requires.os
        if wanted and wanted != "darwin":
            return Support(False, f"{target.id} runs {_OS_NAMES.get(wanted, wanted)} and this machine runs macOS: "
                           "Core ML would run here, but its figures would be this Mac's, not the target's",
                           "run the bundle on the device (in an app, or Xcode's Core ML performance report)")
        arch = machine_arch()
        if target.requires.arch and target.requires.arch != arch:
            return Support(False, f"{target.id} is an {target.requires.arch} device and this Mac is {arch}",
                           "run it on the device")
        return Support(True)

    def precisions(self, target: Target) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if not target.precisions or p in target.precisions)

    def dynamic_shapes(self, model: LoadedModel, target: Target) -> Support:
        """No: onnx2coreml 1.1 builds every MIL input with a fixed shape (its ``_static_shape`` raises on a dynamic
        dim), so neither a range (``ct.RangeDim``) nor enumerated shapes can reach the converted program."""
        return Support(False, "onnx2coreml, the ONNX converter this backend uses, builds Core ML programs with fixed "
                       "input shapes only (no RangeDim or EnumeratedShapes)",
                       "give one shape with --shape NAME=DIMS (one bundle per shape), or compile the range with "
                       "onnxruntime/openvino")

    def needs_calibration(self, precision: str, model: LoadedModel) -> bool:
        """Core ML int8 quantizes weights only by default: no activation ranges, so no calibration data (W8A8,
        ``--option activations=int8``, asks for it when compiling)."""
        return False

    def ladder_variants(self, target: Target, precision: str) -> list[Variant]:
        """int8: linear int8 weights, 4-bit palettized weights, and W8A8 where the target's OS has it."""
        if precision != "int8":
            return [Variant()]
        variants = [Variant(change="int8 weights (linear, per channel)"),
                    Variant({"palettize_bits": 4}, "4-bit palettized weights (k-means look-up table)")]
        opts = parse_options({}, target.options_for("coreml"), target.source_file)
        if opts.minimum_deployment_target in W8A8_MIN_TARGET:
            variants.append(Variant({"activations": "int8"}, "W8A8: int8 activations too, same calibration set"))
        return variants

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        converter = onnx2coreml()
        with quiet():
            report = converter.analyze(str(model.path))  # a path: its passes must not touch model.proto
        return {op: list(nodes) for op, nodes in report.unsupported.items()}

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        ct, converter = coremltools(), onnx2coreml()
        opts = parse_options(request.options, request.target.options_for("coreml"), request.target.source_file)
        precision = request.precision
        check_compile(opts, precision, request.calibration is not None)
        notes = []
        mlmodel, convert_seconds = conversion.convert(converter, request, opts)
        quantization: dict[str, Any] = {}
        if opts.activations == "int8":
            mlmodel, quantization["activations"] = compression.quantize_activations(mlmodel, request, workdir)
            notes.append("W8A8: activations quantized to int8 (linear symmetric) from ranges measured on "
                         f"{quantization['activations']['samples']} calibration sample(s) by evaluating the MIL "
                         "program with numpy (coremltools' own calibration predicts, which only macOS can)")
        keep = compression.keep_weights(request.model.proto, opts.keep_fp32)
        if opts.palettize_bits is not None:
            mlmodel, quantization["weights"] = compression.palettize(mlmodel, opts, keep)
            notes.append(f"weights palettized: {opts.palettize_bits}-bit k-means look-up tables, computed in fp16")
        elif precision == "int8":
            mlmodel, quantization["weights"] = compression.quantize_weights(mlmodel, opts, keep)
            if opts.activations != "int8":
                notes.append("int8 is weight-only: weights are stored as int8 (linear symmetric, "
                             f"{opts.granularity}) and dequantized on load; activations stay fp16")
        if keep and opts.palettize_bits is None and precision != "int8":
            notes.append("keep_fp32 has no effect: no weights are compressed (it applies to int8 or palettized "
                         "weights)")
        elif keep and opts.activations == "int8":
            notes.append(f"keep_fp32 keeps the weights of {', '.join(opts.keep_fp32)} float; their activations "
                         "are still quantized (W8A8)")
        if opts.fp32_ops:
            notes.append(f"these MIL ops kept fp32: {', '.join(opts.fp32_ops)}" if precision != "fp32" else
                         "fp32_ops has no effect on an fp32 program")
        conversion.stamp_provenance(mlmodel, request)
        conversion.save(mlmodel, workdir / MAIN_FILE)
        spec = mlmodel.get_spec()
        summary = conversion.program_summary(spec)
        if platform.system() != "Darwin":
            notes.append("converted on Linux: Core ML predicts only on macOS, copy the bundle to a Mac to run it")
        package_bytes = sum(p.stat().st_size for p in (workdir / MAIN_FILE).rglob("*") if p.is_file())
        return Artifact(
            backend=self.name, backend_version=self.version(), device=opts.compute_units,
            precision=precision, precision_used=conversion.precision_from_summary(summary),
            files=package_files(workdir), options=opts.to_json(),
            metadata={
                "spec_version": spec.specificationVersion,
                "io": conversion.io_names(request.model, spec),
                "program": summary,
                "quantization": quantization,
                "convert_seconds": round(convert_seconds, 3),
                "package_mb": round(package_bytes / 2**20, 4),
                "coremltools": str(ct.__version__), "onnx2coreml": str(converter.__version__),
            },
            notes=tuple(notes),
        )

    def deploy_programs(self, artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
        from onnxsmith.compilers.coreml.deployment import programs

        return programs(artifact, directory, target)

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

