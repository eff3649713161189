"""TensorRT compiler: ONNX -> serialized engine (``model.engine``) for one NVIDIA GPU, and its runner."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.tensorrt.gpu import GpuInfo, cuda_query_note, gpu, matches, nvidia_gpus
from onnxsmith.compilers.tensorrt.options import DECLARED, BuildOptions, parse_options, profile_copies

from onnxsmith.errors import BundleError, DataError, MissingDependencyError, UnsupportedError, UserInputError
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, DeployProgram, Support, TritonModel
from onnxsmith.units import machine_arch

if TYPE_CHECKING:
    import onnx
    from onnxsmith.compilers.tensorrt.runner import TensorRTRunner
    from onnxsmith.targets import Target

    from onnxsmith.model import LoadedModel

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _trt() -> Any:
    from onnxsmith.compilers.tensorrt.engine import import_tensorrt

    return import_tensorrt()


class TensorRTCompiler(Compiler):
    """TensorRT backend: builds an engine on the GPU it will run on (NVIDIA GPUs only)."""

    name = "tensorrt"
    extra = "tensorrt"
    artifact_kind = "TensorRT engine (specific to the GPU architecture and TensorRT version) + layer report"
    options = DECLARED

    def check_environment(self) -> None:
        _trt()

    def version(self) -> str:
        return str(_trt().__version__)

    def devices(self) -> list[str]:
        note = cuda_query_note()
        return [f"cuda:{g.index} {g.name} (sm {g.compute_capability})" + (" (found by nvidia-smi: " + note + ")"
                                                                          if note else "") for g in nvidia_gpus()]

    def supports(self, target: Target) -> Support:
        if target.vendor.lower() == "nvidia" and target.kind in ("gpu", "soc"):
            return Support(True)
        return Support(False, f"TensorRT compiles only for NVIDIA GPUs; {target.id} is a {target.vendor} {target.kind}",
                       "choose an nvidia/* target, or another --backend for this target")

    def builds_on_device(self, target: Target) -> bool:
        """An engine is specific to the GPU and the TensorRT version that built it."""
        return True

    def runs_here(self, target: Target) -> Support:
        supported = self.supports(target)
        if not supported:
            return supported
        req = target.requires
        arch = machine_arch()
        if req.arch and req.arch != arch:
            return Support(False, f"{target.id} is an {req.arch} device and this machine is {arch}",
                           "copy the bundle to the device and run it there")
        opts = parse_options({}, target.options_for("tensorrt"), target.source_file)
        gpus = nvidia_gpus()
        if not gpus:
            note = cuda_query_note()
            return Support(False, "this machine has no NVIDIA GPU (or its driver is not loaded)" +
                           (f"; {note}" if note else ""), "run on a machine with the target's GPU")
        if opts.device_id >= len(gpus):
            return Support(False, f"GPU {opts.device_id} does not exist here ({len(gpus)} GPU(s))")
        found = matches(gpus[opts.device_id], req.gpu, opts.compute_capability)
        if not found:
            return found
        for check in (_trt, _cudart):
            try:
                check()
            except MissingDependencyError as exc:
                return Support(False, f"{exc.what}: {exc.why}", exc.hint)
        note = cuda_query_note()
        if note:  # the GPU was found through nvidia-smi: the runner's own CUDA calls would fail the same way
            return Support(False, f"CUDA's runtime does not work here: {note}", "install the cuda-python of the "
                           "driver's CUDA major (pip install 'onnxsmith[tensorrt]' for CUDA 12)")
        return Support(True)

    def precisions(self, target: Target) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if not target.precisions or p in target.precisions)

    def dynamic_shapes(self, model: LoadedModel, target: Target) -> Support:
        """Optimization profiles: every ranged input's MIN:OPT:MAX (kernels tuned at OPT); the runner sets each
        request's shapes with ``set_input_shape``."""
        return Support(True)

    def keep_fp32_option(self, target: Target) -> str | None:
        return "keep_fp32"

    def needs_calibration(self, precision: str, model: LoadedModel) -> bool:
        """int8 needs calibration data unless the model already carries Q/DQ nodes (explicit quantization)."""
        return precision == "int8" and not any(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.proto.graph.node)

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        from onnxsmith.compilers.tensorrt.engine import unsupported_nodes

        return unsupported_nodes(_trt(), model.path, model.proto)

    # ---- compile ----------------------------------------------------------------------------------------------

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        from onnxsmith.compilers.tensorrt import engine as eng
        from onnxsmith.compilers.tensorrt.precision import layer_precisions, summarize_precision

        trt = _trt()
        target = request.target
        opts = parse_options(request.options, target.options_for("tensorrt"), target.source_file)
        if opts.max_batch is not None:
            # every dynamic dim reaching here is a range the core passed (--shape MIN:OPT:MAX, --batch), which sets
            # the profile; the batch options alone would do nothing, so they are refused rather than ignored
            low, best = opts.min_batch or 1, opts.opt_batch or opts.max_batch
            why = ("the shape range given with --shape/--batch sets the optimization profile"
                   if request.model.shape_ranges else "the model's batch dim was fixed when it was loaded, so no "
                   "optimization profile would use them")
            raise UserInputError("--option max_batch/min_batch/opt_batch cannot set the profile", why,
                                 f"compile with --batch {low}..{opts.max_batch}@{best} instead (the same range, for "
                                 "every batch input)")
        if request.precision not in PRECISIONS:
            raise UnsupportedError(f"tensorrt backend cannot compile {request.precision}",
                                   f"it offers {', '.join(PRECISIONS)}")
        weak_ok = eng.weak_typing_available(trt)
        if opts.typing == "weak" and not weak_ok:
            raise UnsupportedError(f"TensorRT {trt.__version__} has no weak typing",
                                   "TensorRT 11 removed the precision builder flags; networks are strongly typed",
                                   "drop --option typing=weak")
        strong = strongly_typed(opts, request.precision, weak_ok)
        device = _build_gpu(target, opts)
        if opts.device_id:
            from onnxsmith.compilers.tensorrt import cuda

            cuda.set_device(opts.device_id)
        notes: list[str] = []
        metadata: dict[str, Any] = {"tensorrt_version": str(trt.__version__), "gpu": device.to_json(),
                                    "typing": "strong" if strong else "weak"}
        logger = eng.make_logger(trt)
        with tempfile.TemporaryDirectory(prefix="onnxsmith-trt-") as tmp:
            source, proto, flags, calibrator = self._prepare(trt, request, opts, strong, device, Path(tmp), workdir,
                                                             notes, metadata)
            builder, network, _parser = eng.parse_onnx(trt, logger, source, proto, strong)
            ranges = request.model.shape_ranges
            copies = profile_copies(request.profile.streams or 2)
            config, profile = eng.configure(trt, builder, network, opts, flags, ranges, copies)
            if profile is not None and ranges:
                metadata["optimization_profile"] = {
                    "inputs": {k: v.to_json() for k, v in ranges.items()}, "copies": copies,
                    "why_copies": "identical profiles, one per execution context alive at once (run, parallel "
                                  "requests, layer profile): TensorRT lets one live context select a profile"}
            elif profile is not None:
                metadata["optimization_profile"] = {"min_batch": opts.min_batch or 1,
                                                    "opt_batch": opts.opt_batch or opts.max_batch,
                                                    "max_batch": opts.max_batch, "copies": copies}
            if calibrator is not None:
                config.int8_calibrator = calibrator
                if profile is not None:
                    config.set_calibration_profile(profile)
            cache_path = eng.timing_cache_path(str(trt.__version__), device) if opts.timing_cache else None
            if cache_path is not None:
                metadata["timing_cache"] = {"path": str(cache_path),
                                            "loaded": eng.attach_timing_cache(config, cache_path)}
            start = time.perf_counter()
            try:
                data = eng.build_serialized(builder, network, config, logger, calibrator)
            finally:
                if calibrator is not None:
                    calibrator.free()
            metadata["build_seconds"] = round(time.perf_counter() - start, 3)
            if calibrator is not None:
                metadata["int8"]["batches_fed"] = calibrator.batches_fed
                metadata["int8"]["calibration_cache"] = {"path": str(calibrator.cache_path),
                                                         "reused": calibrator.cache_reused}
                if calibrator.cache_path.is_file():
                    shutil.copyfile(calibrator.cache_path, workdir / "calibration.cache")
            if cache_path is not None:
                eng.save_timing_cache(config, cache_path)
        (workdir / "model.engine").write_bytes(data)
        _runtime, engine = eng.deserialize(trt, logger, data)
        info = eng.engine_information(trt, engine)
        (workdir / "layers.json").write_text(json.dumps(info, indent=1))
        counts = layer_precisions(info)
        used = summarize_precision(counts)
        if not used:
            used = "unknown"
            notes.append("TensorRT's engine inspector reported no layer precisions")
        if opts.tf32 and "fp32" in used:
            notes.append("TF32 was allowed: fp32 convolutions and matrix multiplies may round inputs to 10-bit "
                         "mantissas")
        metadata.update(layers=engine.num_layers, layer_precisions=dict(counts), io=eng.io_tensors(trt, engine),
                        engine_mb=round(len(data) / 2**20, 3),
                        warnings=[w for w in logger.warnings()[-10:]])
        files = ["model.engine", "layers.json"] + (["calibration.cache"] if (workdir / "calibration.cache").is_file()
                                                   else [])
        streams = request.profile.streams or 2
        return Artifact(
            backend=self.name, backend_version=str(trt.__version__), device=f"cuda:{opts.device_id}",
            precision=request.precision, precision_used=used, files=tuple(files),
            options={**opts.to_json(), "builder_flags": flags, "parallel_requests": streams},
            metadata=metadata, notes=tuple(notes),
        )

    def _prepare(self, trt: Any, request: CompileRequest, opts: BuildOptions, strong: bool, device: GpuInfo,
                 tmp: Path, workdir: Path, notes: list[str], metadata: dict[str, Any]
                 ) -> tuple[Path, onnx.ModelProto, list[str], Any]:
        """The ONNX file to parse, its proto, the builder flags and a legacy calibrator (or None) for the precision."""
        from onnxsmith.compilers.tensorrt import precision as prec

        from onnxsmith.model.saving import save_model

        source, proto, precision = request.model.path, request.model.proto, request.precision
        fallback = ["FP16"] if opts.int8_fallback == "fp16" else []
        if precision == "bf16" and float(device.compute_capability) < 8.0:
            raise UnsupportedError(f"{device.name} has no bf16", f"compute capability {device.compute_capability}; "
                                   "bf16 needs 8.0 (Ampere) or newer", "choose --precision fp16")
        if precision in ("fp16", "bf16"):
            if not strong:
                return source, proto, [precision.upper()], None
            proto = prec.to_float16(proto) if precision == "fp16" else prec.to_bfloat16(proto)
            notes.append(f"strongly typed build: the ONNX was converted to {precision} by ONNX Runtime's float16 "
                         f"converter (inputs/outputs stay fp32; {', '.join(prec.FP32_KEEP_OPS)} stay fp32)")
            return save_model(proto, tmp / f"model.{precision}.onnx"), proto, [], None
        if precision != "int8":
            return source, proto, [], None
        counts = prec.count_qdq(proto)
        if any(counts.values()):
            metadata["int8"] = {"method": "explicit: Q/DQ nodes already in the model",
                                **{k.lower(): v for k, v in counts.items()}}
            if strong:
                return (*self._strong_qdq(source, proto, opts, tmp, notes, metadata), [], None)
            return source, proto, ["INT8", *fallback], None
        from onnxsmith.compilers.tensorrt.calibrator import CalibrationFeeder, make_entropy_calibrator
        from onnxsmith.compilers.tensorrt.engine import legacy_calibration_available

        if request.calibration is None:
            raise DataError("int8 needs calibration data", "the model has no Q/DQ nodes to take scales from",
                            "pass --calibration calib.npz, or compile a model quantized with Q/DQ nodes")
        method = "qdq" if opts.int8_method == "auto" else opts.int8_method  # implicit int8 is deprecated since 10.1
        feeder = CalibrationFeeder(request.calibration, request.model.inputs_at("opt"), opts.calibration_batches,
                                   known_batch=request.model.batch_inputs)
        if feeder.dropped_samples:
            notes.append(f"calibration used {feeder.num_batches * feeder.batch_size} of "
                         f"{feeder.num_batches * feeder.batch_size + feeder.dropped_samples} samples "
                         f"(whole batches of {feeder.batch_size})")
        if opts.keep_fp32 and method != "qdq":
            raise UnsupportedError("keep_fp32 needs explicit quantization",
                                   "TensorRT's calibrator picks precisions per layer itself",
                                   "add --option int8_method=qdq")
        if method == "qdq":
            output = tmp / "model.qdq.onnx"
            metadata["int8"] = {"method": "explicit: Q/DQ nodes written by onnxsmith",
                                **prec.quantize_qdq(source, output, feeder, opts.calibration_method,
                                                    opts.keep_fp32)}
            import onnx

            notes.append("int8 by explicit quantization: Q/DQ (symmetric, per-channel weights) on Conv/MatMul/Gemm "
                         "inputs, calibrated with ONNX Runtime")
            written = onnx.load(str(output))
            if strong:
                return (*self._strong_qdq(output, written, opts, tmp, notes, metadata), [], None)
            return output, written, ["INT8", *fallback], None
        if strong or not legacy_calibration_available(trt):
            raise UnsupportedError(f"TensorRT {trt.__version__} has no implicit int8 calibration",
                                   "IInt8EntropyCalibrator2 works only with weakly typed networks in TensorRT 10",
                                   "use --option int8_method=qdq (explicit quantization)")
        _cudart()
        from onnxsmith.compilers.tensorrt.calibrator import calibration_cache_path

        cache = calibration_cache_path(str(trt.__version__), request.model.fingerprint,
                                       request.calibration.fingerprint(), feeder)
        calibrator = make_entropy_calibrator(trt, feeder, cache)
        metadata["int8"] = {"method": "implicit: TensorRT IInt8EntropyCalibrator2", "batches": feeder.num_batches,
                            "batch_size": feeder.batch_size}
        notes.append("int8 by TensorRT's legacy entropy calibrator (implicit quantization, deprecated since "
                     "TensorRT 10.1 and removed in 11); --option int8_method=qdq gives explicit quantization")
        return source, proto, ["INT8", *fallback], calibrator

    def _strong_qdq(self, path: Path, proto: onnx.ModelProto, opts: BuildOptions, tmp: Path, notes: list[str],
                    metadata: dict[str, Any]) -> tuple[Path, onnx.ModelProto]:
        """A Q/DQ network for a strongly typed build: with ``int8_fallback=fp16`` everything between the Q/DQ pairs
        is rewritten to fp16 (fp16 scales), so the engine is int8+fp16 as a TensorRT 10 weakly typed one was;
        TensorRT itself would run those layers in fp32 and ignore the fallback."""
        from onnxsmith.compilers.tensorrt import precision as prec

        from onnxsmith.model.saving import save_model

        if opts.int8_fallback != "fp16":
            notes.append("int8 with strong typing: layers outside the Q/DQ pairs run in fp32 (int8_fallback=fp32)")
            return path, proto
        converted = prec.qdq_to_float16(proto, keep_nodes=opts.keep_fp32)  # the keep-list stays fp32, not fp16
        metadata["int8"]["fallback"] = {"precision": "fp16", "kept_fp32": list(prec.FP32_KEEP_OPS),
                                        **({"kept_fp32_nodes": list(opts.keep_fp32)} if opts.keep_fp32 else {})}
        kept = f"; the keep_fp32 nodes {', '.join(opts.keep_fp32)} stay fp32 too" if opts.keep_fp32 else ""
        notes.append("int8 with strong typing: the layers outside the Q/DQ pairs were rewritten to fp16 (Q/DQ "
                     f"scales fp16, opset >= {prec.QDQ_FP16_OPSET}; {', '.join(prec.FP32_KEEP_OPS)} stay fp32{kept})")
        return save_model(converted, tmp / "model.qdq.fp16.onnx"), converted

    # ---- load -------------------------------------------------------------------------------------------------

    def deploy_programs(self, artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
        from onnxsmith.compilers.tensorrt.deployment import programs

        return programs(artifact, directory, target)

    def triton_model(self, artifact: Artifact, target: Target) -> TritonModel | None:
        from onnxsmith.compilers.tensorrt.deployment import triton_model

        return triton_model(artifact)

    def load(self, artifact: Artifact, directory: Path, target: Target) -> TensorRTRunner:
        from onnxsmith.compilers.tensorrt.runner import TensorRTRunner

        trt = _trt()
        built = str(artifact.metadata.get("tensorrt_version") or artifact.backend_version)
        if built != str(trt.__version__):
            raise BundleError(f"this engine was built with TensorRT {built}",
                              f"this machine has TensorRT {trt.__version__}; engines load only in the version that "
                              "built them", "compile the bundle again here")
        device_id = int(artifact.options.get("device_id", 0))
        here = gpu(device_id)
        if here is None:
            raise UnsupportedError("cannot load a TensorRT engine here", f"no NVIDIA GPU {device_id} on this machine",
                                   "run on a machine with the target's GPU")
        compat = str(artifact.options.get("hardware_compatibility", "none"))
        built_cc = str(artifact.metadata.get("gpu", {}).get("compute_capability", ""))
        if compat == "ampere_plus":
            if float(here.compute_capability) < 8.0:
                raise UnsupportedError("cannot load this TensorRT engine here", f"it needs an Ampere or newer GPU; "
                                       f"{here.name} has compute capability {here.compute_capability}")
        elif built_cc and built_cc != here.compute_capability:
            raise UnsupportedError("cannot load this TensorRT engine here",
                                   f"it was built for compute capability {built_cc} "
                                   f"({artifact.metadata.get('gpu', {}).get('name', '?')}), this {here.name} has "
                                   f"{here.compute_capability}",
                                   "compile again on this GPU, or build with --option hardware_compatibility="
                                   "ampere_plus")
        from onnxsmith.compilers.tensorrt.timing import TimingSettings

        timing = TimingSettings(cuda_graph=bool(artifact.options.get("cuda_graph", True)),
                                spin_wait=bool(artifact.options.get("spin_wait", False)))
        return TensorRTRunner(directory / artifact.files[0], device_id,
                              int(artifact.options.get("parallel_requests", 2)), timing)


def strongly_typed(opts: BuildOptions, precision: str, weak_ok: bool) -> bool:
    """Whether the network is built strongly typed: always in TensorRT 11 (no weak typing), when asked, and for
    int8 through Q/DQ nodes on 10.x too (NVIDIA's guidance: Q/DQ networks strongly typed, no precision flags)."""
    if opts.typing == "strong" or not weak_ok:
        return True
    return opts.typing == "auto" and precision == "int8" and opts.int8_method != "calibrator"


def _cudart() -> Any:
    from onnxsmith.compilers.tensorrt.cuda import cudart

    return cudart()


def _build_gpu(target: Target, opts: BuildOptions) -> GpuInfo:
    """The GPU to build on; it must be the target's GPU unless the engine is built hardware-compatible."""
    gpus = nvidia_gpus()
    if not gpus:
        raise UnsupportedError(f"cannot build a TensorRT engine for {target.id} here",
                               "TensorRT builds (and times) engines on an NVIDIA GPU, and this machine has none",
                               "compile on a machine with the target's GPU")
    if opts.device_id >= len(gpus):
        raise UnsupportedError(f"no GPU {opts.device_id} here", f"this machine has {len(gpus)} NVIDIA GPU(s)",
                               "choose --option device_id=0")
    device = gpus[opts.device_id]
    if opts.hardware_compatibility == "ampere_plus":
        if float(device.compute_capability) < 8.0:
            raise UnsupportedError("cannot build an Ampere-plus compatible engine here",
                                   f"{device.name} has compute capability {device.compute_capability} (needs 8.0+)")
        return device
    # same_compute_capability: the engine runs on any GPU of the target's compute capability, so only that counts
    wanted_name = "" if opts.hardware_compatibility == "same_compute_capability" and opts.compute_capability \
        else target.requires.gpu
    found = matches(device, wanted_name, opts.compute_capability)
    if not found:
        raise UnsupportedError(f"cannot build a TensorRT engine for {target.id} here", found.reason, found.hint)
    return device
