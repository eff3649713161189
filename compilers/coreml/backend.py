"""Core ML compiler: ONNX -> ML Program (``model.mlpackage``) through onnx2coreml and coremltools.

Conversion, fp16 and int8 weight compression all run on Linux; predicting needs macOS (see ``runner.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import platform
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, DataError, MissingDependencyError, TargetError, UnsupportedError, first_line
from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, DeployProgram, Runner, Support, Variant
from onnxsmith.units import machine_arch

if TYPE_CHECKING:
    from onnxsmith.compilers.coreml.runner import CoreMLRunner
    from onnxsmith.model import LoadedModel
    from onnxsmith.targets import Target

PRECISIONS = ("fp32", "fp16", "int8")
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
DEPLOYMENT_TARGETS = ("ios15", "ios16", "ios17", "ios18", "macos12", "macos13", "macos14", "macos15")
_INT8_MIN_TARGET = ("ios16", "ios17", "ios18", "macos13", "macos14", "macos15")
_W8A8_MIN_TARGET = ("ios17", "ios18", "macos14", "macos15")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
ACTIVATIONS = ("float", "int8")
PROVENANCE_URL = "https://github.com/onnxsmith/onnxsmith"
_OS_NAMES = {"ios": "iOS", "darwin": "macOS", "linux": "Linux"}
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


@contextlib.contextmanager
def openable_package(package: Path) -> Iterator[Path]:
    """``package``, or a private copy with the empty folders its ``Manifest.json`` names recreated.

    A program whose weights all fit inline leaves ``Data/com.apple.CoreML/weights`` empty; a bundle lists files,
    so the copy in a bundle lacks that folder and coremltools refuses the package ("Item does not exist"). The
    bundle itself is never written to."""
    import json
    import shutil
    import tempfile

    try:
        items = json.loads((package / "Manifest.json").read_text()).get("itemInfoEntries", {}).values()
        missing = [str(item["path"]) for item in items if not (package / "Data" / str(item["path"])).exists()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        missing = []
    if not missing:
        yield package
        return
    with tempfile.TemporaryDirectory(prefix="onnxsmith-mlpackage-") as tmp:
        copy = Path(tmp) / package.name
        shutil.copytree(package, copy)
        for path in missing:
            if ".." not in Path(path).parts and not Path(path).is_absolute():
                (copy / "Data" / path).mkdir(parents=True, exist_ok=True)
        yield copy


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
    palettize_bits: int | None = None
    """fp16/int8: weights palettized (k-means look-up table of 2**bits values) instead of stored as they are or as
    linear int8."""
    activations: str = "float"
    """int8: ``int8`` also quantizes activations (W8A8, iOS17 / macOS14+), calibrated on the calibration set."""
    keep_fp32: tuple[str, ...] = ()
    """int8 or palettized weights: ONNX node names whose weights stay float (op selectors of coremltools'
    ``linear_quantize_weights`` / ``palettize_weights``)."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fp32_ops"] = list(self.fp32_ops)
        data["keep_fp32"] = list(self.keep_fp32)
        for key, empty in (("fp32_ops", []), ("palettize_bits", None), ("keep_fp32", [])):
            if data[key] == empty:
                del data[key]
        return data


def parse_options(options: Mapping[str, Any], target_options: Mapping[str, Any] | None = None,
                  target_file: str = "") -> CoreMLOptions:
    allowed = ("compute_units", "minimum_deployment_target", "weight_threshold", "granularity", "fp32_ops",
               "palettize_bits", "activations", "keep_fp32")
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
    bits = values.get("palettize_bits")
    if bits is not None:
        try:
            bits = int(str(bits))
        except ValueError:
            bits = -1
        if bits not in PALETTE_BITS:
            raise UnsupportedError(f"invalid {where('palettize_bits')}",
                                   f"allowed: {', '.join(map(str, PALETTE_BITS))}")
    activations = str(values.get("activations", "float")).lower()
    if activations not in ACTIVATIONS:
        raise UnsupportedError(f"invalid {where('activations')}", f"allowed: {', '.join(ACTIVATIONS)}")
    keep = values.get("keep_fp32", ())
    if isinstance(keep, str):
        keep = [n.strip() for n in keep.split(",") if n.strip()]
    return CoreMLOptions(units, deploy, threshold, granularity, tuple(fp32_ops), bits, activations, tuple(keep))


def check_fp32_ops(names: tuple[str, ...]) -> None:
    """Every ``fp32_ops`` name is a MIL op type (what onnx2coreml's op selector compares with), with a close match
    as hint: an ONNX name (``Softmax``) or a typo would silently keep nothing in fp32."""
    import difflib

    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    known = sorted(SSAOpRegistry.core_ops)
    for name in names:
        if name in known:
            continue
        spelled = "_".join(part.lower() for part in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name))
        close = difflib.get_close_matches(spelled or name.lower(), known, n=1, cutoff=0.6)
        raise UnsupportedError(f"invalid coreml option fp32_ops: '{name}' is not a MIL op type",
                               "fp32_ops names the MIL ops of the converted program (lowercase, e.g. softmax, "
                               "layer_norm, reduce_mean), not ONNX op types",
                               f"did you mean '{close[0]}'?" if close else "'onnxsmith compile' notes list the "
                               "program's op types in the manifest (metadata.program.ops)")


def keep_weights(proto: Any, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The initializers (weights) of the ONNX nodes in ``nodes``; a name the model lacks is refused."""
    if not nodes:
        return ()
    initializers = {t.name for t in proto.graph.initializer}
    by_name = {n.name: n for n in proto.graph.node}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise UnsupportedError(f"keep_fp32 names {', '.join(missing)}, which the model does not have",
                               "the keep-list holds ONNX node names", "list them with 'onnxsmith inspect'")
    return tuple(i for n in nodes for i in by_name[n].input if i in initializers)


def _const_ops(mlmodel: Any, weights: tuple[str, ...]) -> set[str]:
    """MIL const op names holding those ONNX weights (onnx2coreml names them after the initializer, with a
    ``_to_fp16`` suffix in fp16 programs): the op selectors that keep them float."""
    program = mlmodel._mil_program
    consts = {op.name for fn in program.functions.values() for op in fn.find_ops(op_type="const")}
    wanted = set(weights)
    return {c for c in consts if c in wanted or any(c.startswith(w + "_to_") for w in wanted)}


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
            named = {**dict(op.attributes), **{key: arg.value for key, binding in op.inputs.items()
                                               for arg in binding.arguments if arg.HasField("value")}}
            if op.type == "constexpr_lut_to_dense" and "lut" in named:
                # palettized: the look-up table's entries give the index width (2**bits of them)
                dims = [int(d.constant.size) for d in named["lut"].type.tensorType.dimensions]
                entries = dims[-1] if op.attributes.get("lut") is not None or len(dims) < 2 else dims[-2]
                weight_dtypes.add(f"lut{max(1, int(entries).bit_length() - 1)}")
                continue
            for key, value in named.items():
                if key != "shape" and value.type.HasField("tensorType"):
                    name = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
                    if name.startswith(("INT", "UINT")) and name not in ("INT32", "UINT32"):
                        weight_dtypes.add(name.lower())
        elif op.type not in ("const", "cast"):  # casts convert fp32 inputs/outputs at the program's edges
            for out in op.outputs:
                if out.type.HasField("tensorType"):
                    compute[MIL_pb2.DataType.Name(out.type.tensorType.dataType).lower()] += 1
    return {"ops": dict(ops), "compute": dict(compute), "compressed_weights": compressed,
            "weight_dtypes": sorted(weight_dtypes)}


def precision_from_summary(summary: Mapping[str, Any]) -> str:
    """``fp16``, ``fp32``, ``fp16+fp32`` (mixed), with ``+int8-weights`` (or ``+lut4-weights``: palettized with a
    16-entry table) when weights are stored compressed, and a leading ``int8`` when activations are quantized."""
    compute = summary.get("compute", {})
    parts = [name for key, name in (("float16", "fp16"), ("float32", "fp32")) if compute.get(key)]
    if summary.get("ops", {}).get("quantize"):
        parts.insert(0, "int8")  # W8A8: activations quantized to int8 between ops
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
        if opts.minimum_deployment_target in _W8A8_MIN_TARGET:
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
        if precision not in PRECISIONS:
            raise UnsupportedError(f"coreml backend cannot compile {precision}", f"it offers {', '.join(PRECISIONS)}")
        if precision == "int8" and opts.minimum_deployment_target not in _INT8_MIN_TARGET:
            raise UnsupportedError("int8 weights need iOS16 / macOS13 or newer",
                                   f"minimum_deployment_target is {opts.minimum_deployment_target}",
                                   "give --option minimum_deployment_target=ios16 (or newer)")
        if opts.fp32_ops:
            check_fp32_ops(opts.fp32_ops)
        if opts.palettize_bits is not None and precision == "fp32":
            raise UnsupportedError("palettized weights are computed in fp16 here",
                                   "palettize_bits applies to --precision fp16 or int8", "compile fp16 or int8")
        if opts.activations == "int8":
            if precision != "int8":
                raise UnsupportedError("int8 activations need --precision int8",
                                       f"--precision {precision} with --option activations=int8")
            if opts.minimum_deployment_target not in _W8A8_MIN_TARGET:
                raise UnsupportedError("int8 activations (W8A8) need iOS17 / macOS14 or newer",
                                       f"minimum_deployment_target is {opts.minimum_deployment_target}",
                                       "give --option minimum_deployment_target=ios17 (or newer)")
            if request.calibration is None:
                raise DataError("int8 activations need calibration data",
                                "W8A8 takes each activation's range from real inputs",
                                "pass --calibration calib.npz (the calibration set int8 uses for every backend)")
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
        if opts.activations == "int8":
            mlmodel, quantization["activations"] = self._quantize_activations(mlmodel, request, opts, workdir)
            notes.append("W8A8: activations quantized to int8 (linear symmetric) from ranges measured on "
                         f"{quantization['activations']['samples']} calibration sample(s) by evaluating the MIL "
                         "program with numpy (coremltools' own calibration predicts, which only macOS can)")
        keep = keep_weights(request.model.proto, opts.keep_fp32)
        if opts.palettize_bits is not None:
            mlmodel, quantization["weights"] = self._palettize(mlmodel, opts, keep)
            notes.append(f"weights palettized: {opts.palettize_bits}-bit k-means look-up tables, computed in fp16")
        elif precision == "int8":
            mlmodel, quantization["weights"] = self._quantize(ct, mlmodel, opts, keep)
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
        self._stamp_provenance(mlmodel, request)
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

    def _stamp_provenance(self, mlmodel: Any, request: CompileRequest) -> None:
        """onnxsmith's provenance in the package's metadata, replacing what onnx2coreml stamps (its own author,
        URL and licence) on every model it converts."""
        from onnxsmith import __version__

        model = request.model
        mlmodel.author = "onnxsmith"
        mlmodel.license = ""
        mlmodel.short_description = (f"{Path(model.path).name} compiled by onnxsmith {__version__} for "
                                     f"{request.target.id} ({request.precision})")
        mlmodel.version = ""
        meta = mlmodel.user_defined_metadata
        for key, value in {"onnxsmith.version": __version__, "onnxsmith.url": PROVENANCE_URL,
                           "onnxsmith.target": request.target.id, "onnxsmith.precision": request.precision,
                           "onnxsmith.source_model": Path(model.path).name,
                           "onnxsmith.source_sha256": str(getattr(model, "fingerprint", "") or "")}.items():
            meta[key] = value

    def _palettize(self, mlmodel: Any, opts: CoreMLOptions, keep: tuple[str, ...] = ()
                   ) -> tuple[Any, dict[str, Any]]:
        from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

        kept = _const_ops(mlmodel, keep) if keep else set()
        config = OptimizationConfig(global_config=OpPalettizerConfig(
            mode="kmeans", nbits=opts.palettize_bits, granularity="per_tensor",
            weight_threshold=opts.weight_threshold), op_name_configs={name: None for name in kept})
        try:
            with quiet():
                palettized = palettize_weights(mlmodel, config=config)
        except Exception as exc:
            raise BackendError("coremltools could not palettize the weights", first_line(exc)) from exc
        compressed = program_summary(palettized.get_spec())["compressed_weights"]
        if not compressed:
            raise UnsupportedError("palettization compressed no weights",
                                   f"no weight tensor has more than weight_threshold={opts.weight_threshold} elements",
                                   "lower --option weight_threshold")
        return palettized, {**({"kept_float": sorted(kept)} if keep else {}),
                            "method": "coremltools palettize_weights (OpPalettizerConfig)", "mode": "kmeans",
                            "nbits": opts.palettize_bits, "granularity": "per_tensor",
                            "weight_threshold": opts.weight_threshold, "palettized_weights": compressed}

    def _quantize_activations(self, mlmodel: Any, request: CompileRequest, opts: CoreMLOptions, workdir: Path
                              ) -> tuple[Any, dict[str, Any]]:
        """W8A8's activation half: coremltools' ``linear_quantize_activations`` with the ranges measured by
        evaluating the float program with numpy on the calibration set (coremltools measures them with
        ``predict``, which needs macOS)."""
        import tempfile
        from unittest import mock

        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig
        from coremltools.optimize.coreml import _post_training_quantization as ptq

        from onnxsmith.compilers.coreml.milcheck import activation_ranges

        calibration = request.calibration
        assert calibration is not None
        with tempfile.TemporaryDirectory(prefix=".w8a8-", dir=workdir.parent) as tmp:
            float_package = Path(tmp) / MAIN_FILE
            with quiet():
                mlmodel.save(str(float_package))
            io = io_names(request.model, mlmodel.get_spec())
            ranges, samples = activation_ranges(float_package, io, calibration.batches())
        if not ranges:
            raise DataError("int8 activations found no activation to calibrate", "the program has no float "
                            "intermediate values")
        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        in_names = io["inputs"]
        sample_data = [{in_names[k]: v for k, v in feeds.items() if k in in_names}
                       for feeds in calibration.batches()][:1]
        try:
            # the public entry point, with its range measurement (MLModel.predict) replaced by ours
            with quiet(), mock.patch.object(ptq, "_get_activation_calibration_stats",
                                            lambda *args, **kwargs: {k: dict(v) for k, v in ranges.items()}):
                quantized = ptq.linear_quantize_activations(mlmodel, config, sample_data)
        except Exception as exc:
            raise BackendError("coremltools could not quantize the activations", first_line(exc)) from exc
        pairs = program_summary(quantized.get_spec())["ops"].get("quantize", 0)
        if not pairs:
            raise UnsupportedError("int8 activations quantized nothing",
                                   "coremltools found no op pattern it quantizes (conv, linear, matmul, add...)",
                                   "compile int8 weights only (drop --option activations=int8)")
        return quantized, {"method": "coremltools linear_quantize_activations, ranges from a numpy evaluation of "
                           "the MIL program", "mode": "linear_symmetric", "dtype": "int8", "samples": samples,
                           "quantize_ops": pairs}

    def _quantize(self, ct: Any, mlmodel: Any, opts: CoreMLOptions, keep: tuple[str, ...] = ()
                  ) -> tuple[Any, dict[str, Any]]:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        kept = _const_ops(mlmodel, keep) if keep else set()
        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity=opts.granularity,
            weight_threshold=opts.weight_threshold), op_name_configs={name: None for name in kept})
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
        return quantized, {**({"kept_float": sorted(kept)} if keep else {}),
                           "method": "coremltools linear_quantize_weights (weight-only)", "mode": "linear_symmetric",
                           "dtype": "int8", "granularity": opts.granularity,
                           "weight_threshold": opts.weight_threshold, "quantized_weights": compressed}

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


def io_names(model: LoadedModel, spec: Any) -> dict[str, dict[str, str]]:
    """ONNX name -> Core ML feature name, per direction (Core ML may rename features; order is kept)."""
    return {
        "inputs": {s.name: f.name for s, f in zip(model.inputs, spec.description.input, strict=True)},
        "outputs": {s.name: f.name for s, f in zip(model.outputs, spec.description.output, strict=True)},
    }
