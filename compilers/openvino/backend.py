"""OpenVINO compiler: ONNX -> OpenVINO IR (NNCF int8 when asked) -> compiled blob for the device."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.openvino.common import (
    CAPABILITY, capabilities, core, device_available, device_for, full_device_name, inference_precision, ov,
    read_property, require_device, supported_properties, valid_device_name, vendor_why,
)
from onnxsmith.compilers.openvino.config import OPTIONS, filter_supported, settings_for
from onnxsmith.errors import BackendError, UnsupportedError
from onnxsmith.plugin import PRECISIONS, Artifact, CompileRequest, Compiler, DeployProgram, Support, TritonModel, Variant
from onnxsmith.precisions import precision_parts

if TYPE_CHECKING:
    from onnxsmith.compilers.openvino.runner import OpenVINORunner
    from onnxsmith.model import LoadedModel
    from onnxsmith.model.shapes import ShapeRange
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target

IR_FILES = ("model.xml", "model.bin")
BLOB = "model.blob"
CONFIG_FILE = "openvino_config.json"
"""The applied properties in ``benchmark_app -load_config`` format, so the IR can be run by hand the same way."""
READ_BACK = ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
             "OPTIMAL_NUMBER_OF_INFER_REQUESTS", "EXECUTION_DEVICES", "ENABLE_CPU_PINNING")
_STATIC_PRECISIONS = {"gpu": ("fp32", "fp16", "int8"), "npu": ("fp16", "int8")}
_HINTS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVINOCompiler(Compiler):
    """OpenVINO backend: Intel/AMD x86 CPUs, Intel GPUs and NPUs; int8 through NNCF post-training quantization."""

    name = "openvino"
    extra = "openvino"
    artifact_kind = "OpenVINO IR (model.xml/.bin) + compiled blob for the device (model.blob)"
    exposes_layers = True  # load_layers: the tensors as extra outputs of the IR
    options = OPTIONS

    def keep_fp32_option(self, target: Target) -> str | None:
        return "keep_fp32"

    def ladder_variants(self, target: Target, precision: str) -> list[Variant]:
        """int8: NNCF with its defaults; on this machine's CPU when it has AVX2 but no VNNI, also NNCF's overflow fix
        on every layer (7-bit weights, so U8S8's VPMADDUBSW cannot saturate: NNCF's advice for such CPUs)."""
        variants = [Variant(change="NNCF, same calibration set" if precision == "int8" else "")]
        if precision == "int8" and target.detected:
            from onnxsmith.optimize.ladder_steps import avx2_without_vnni

            if avx2_without_vnni():
                variants.append(Variant({"overflow_fix": "enable"}, "NNCF, overflow fix on every layer (7-bit "
                                        "weights: this CPU has AVX2 without VNNI)"))
        return variants

    def runtime_knobs(self, target: Target, profile: Profile, options: Mapping[str, Any]) -> list[Variant]:
        """CPU knobs for the profile's objective. Latency (one request at a time): inference threads halved and
        CPU pinning off (on a shared machine a pinned thread waits for its core). Throughput (parallel requests):
        streams set to one per core instead of the hint's choice, the latency hint instead of the throughput
        hint, and pinning off. Other devices have none of these."""
        import os

        if target.kind != "cpu":
            return []
        cores = target.cores or os.cpu_count() or 1
        knobs = []
        pinned = str(options.get("pinning", "on")).lower() not in ("0", "false", "off", "no")
        hint = str(options.get("performance_hint") or profile.performance_hint)
        if hint == "throughput":
            streams = int(options.get("num_streams") or profile.streams or 0)
            if streams != cores:
                knobs.append(Variant({"num_streams": cores}, f"streams {streams or 'auto'} -> {cores} (one per core)"))
            knobs.append(Variant({"performance_hint": "latency"}, "performance hint throughput -> latency"))
        else:
            threads = int(options.get("num_threads") or profile.threads or 0) or cores
            if threads > 1:
                knobs.append(Variant({"num_threads": max(1, threads // 2)},
                                     f"inference threads {threads} -> {max(1, threads // 2)}"))
        if pinned:
            knobs.append(Variant({"pinning": False}, "CPU pinning on -> off"))
        return knobs

    def check_environment(self) -> None:
        ov()
        try:
            core()
        except Exception as exc:
            raise UnsupportedError("OpenVINO cannot start", vendor_why(exc), "reinstall openvino") from exc

    def version(self) -> str:
        return str(ov().__version__)

    def devices(self) -> list[str]:
        return [str(d) for d in core().available_devices]

    def portable_across_versions(self, artifact: Artifact) -> bool:
        """An artifact with its IR loads in any later OpenVINO: the IR (model.xml/.bin) is read by later releases,
        and the compiled blob beside it, which is version-specific, is skipped when it does not import (the IR is
        compiled at load instead). So a bundle survives an OpenVINO upgrade, never a downgrade."""
        if "model.xml" not in artifact.files:
            return False
        have, built = _release(self.version()), _release(artifact.backend_version)
        return bool(have and built) and have >= built

    def supports(self, target: Target) -> Support:
        device = device_for(target)
        if target.kind == "cpu":
            if target.requires.arch not in ("", "x86_64"):
                return Support(False, f"onnxsmith drives OpenVINO on x86-64 CPUs; {target.id} is "
                               f"{target.requires.arch}", "use the tvm or onnxruntime backend for this target")
            if device != "CPU":
                return Support(False, f"{target.id} is a CPU target but names OpenVINO device '{device}'",
                               "set device = \"CPU\" under [device.openvino]")
            return Support(True)
        if target.kind in ("gpu", "npu"):
            named = "device" in target.options_for("openvino")
            if target.vendor.lower() != "intel" and not named:
                return Support(False, f"OpenVINO runs on Intel GPUs and NPUs; {target.id} is a {target.vendor} "
                               f"{target.kind}", "use the target's own backend (tensorrt, onnxruntime, coreml)")
            if not valid_device_name(device) or device == "CPU":
                return Support(False, f"{target.id} is a {target.kind} target but names OpenVINO device '{device}'",
                               f"set device = \"{target.kind.upper()}\" under [device.openvino]")
            return Support(True)
        return Support(False, f"OpenVINO has no device for {target.kind} targets", "choose another --backend")

    def runs_here(self, target: Target) -> Support:
        device = device_for(target)
        if target.kind == "cpu":
            from onnxsmith.host import host_matches

            return host_matches(target)
        if not valid_device_name(device):
            return Support(False, f"'{device}' is not an OpenVINO device onnxsmith drives",
                           "use CPU, GPU, GPU.N or NPU")
        if not device_available(device):
            return Support(False, f"OpenVINO sees no {device} device here (available: "
                           f"{', '.join(core().available_devices) or 'none'})",
                           "run on a machine with the Intel device and its driver installed")
        return Support(True)

    def precisions(self, target: Target) -> tuple[str, ...]:
        if self.supports(target) and self.runs_here(target):
            caps = capabilities(device_for(target))
            offered = [p for p in PRECISIONS if CAPABILITY[p] in caps]
        elif target.kind == "cpu":
            offered = ["fp32", "bf16", "int8"] + (["fp16"] if "amx_fp16" in target.requires.cpu_flags else [])
        else:
            offered = list(_STATIC_PRECISIONS.get(target.kind, ()))
        if "int8" in offered and importlib.util.find_spec("nncf") is None:
            offered.remove("int8")
        return tuple(p for p in PRECISIONS if p in offered)

    def dynamic_shapes(self, model: LoadedModel, target: Target) -> Support:
        """Bounded dynamic dims (``PartialShape`` of ``Dimension(min, max)``) on CPU and GPU; the NPU plugin
        compiles static shapes only."""
        if target.kind == "npu":
            return Support(False, "OpenVINO's NPU plugin compiles static shapes only",
                           "give one shape with --shape NAME=DIMS (one bundle per shape)")
        return Support(True)

    def unsupported_ops(self, model: LoadedModel, target: Target) -> dict[str, list[str]]:
        from onnxsmith.compilers.openvino.ops import device_unsupported_ops, unconverted_ops

        found = unconverted_ops(model)
        if not found and target.kind != "cpu" and self.supports(target):
            found = device_unsupported_ops(model.path, device_for(target))
        return found

    def compile(self, request: CompileRequest, workdir: Path) -> Artifact:
        openvino = ov()
        target, precision = request.target, request.precision
        if precision not in PRECISIONS:
            raise UnsupportedError(f"unknown precision '{precision}'", f"OpenVINO offers {', '.join(PRECISIONS)}")
        support = self.supports(target)
        if not support:
            raise UnsupportedError(f"OpenVINO cannot compile for {target.id}", support.reason, support.hint)
        device = device_for(target)
        if target.kind != "cpu":
            require_device(device, target.id)
        local = bool(self.runs_here(target))
        settings = settings_for(request, device, target.detected)
        notes = list(settings.notes)
        metadata: dict[str, Any] = {"inputs": [s.name for s in request.model.inputs],
                                    "outputs": [s.name for s in request.model.outputs]}
        if settings.threads_source:
            metadata["threads_source"] = settings.threads_source
        properties = settings.properties
        if local:
            caps = capabilities(device)
            metadata.update(device_full_name=full_device_name(device), optimization_capabilities=list(caps))
            _check_capabilities(device, caps, precision, properties)
            properties, dropped = filter_supported(properties, supported_properties(device), device)
            notes += dropped
        else:
            notes.append(f"compiled for {target.id}, which is not this machine ({self.runs_here(target).reason}): "
                         "the bundle holds the OpenVINO IR only; OpenVINO compiles it for the device when loaded "
                         "there, and reads the precision back then")

        start = time.perf_counter()
        try:
            model = core().read_model(str(request.model.path))
        except Exception as exc:
            raise BackendError("OpenVINO could not convert the ONNX model", vendor_why(exc),
                               "run 'onnxsmith inspect' to list ops OpenVINO cannot convert") from exc
        if request.model.shape_ranges:
            metadata["dynamic_shapes"] = _bound_inputs(model, request.model.shape_ranges)
        metadata["convert_seconds"] = round(time.perf_counter() - start, 3)
        fake_quantize = 0
        if precision == "int8":
            from onnxsmith.compilers.openvino.quantcache import cached_quantize

            result = cached_quantize(model, request, settings.subset_size, settings.model_type, settings.keep_fp32,
                                     self.version(), settings.overflow_fix)
            model = result.model
            metadata["quantization"] = result.metadata
            fake_quantize = int(result.metadata["fake_quantize_nodes"])
            notes += result.notes
        try:
            openvino.save_model(model, str(workdir / IR_FILES[0]), compress_to_fp16=False)
        except Exception as exc:
            raise BackendError("OpenVINO could not write the IR", vendor_why(exc)) from exc
        files = list(IR_FILES)
        (workdir / CONFIG_FILE).write_text(json.dumps({device: properties}, indent=2) + "\n")
        files.append(CONFIG_FILE)

        if local:
            precision_used, blob = self._compile_on_device(model, device, properties, precision, fake_quantize,
                                                           metadata, notes)
            if blob is not None:
                (workdir / BLOB).write_bytes(blob)
                files.insert(0, BLOB)
                metadata["blob_bytes"] = len(blob)
        else:
            metadata["precision_read_back"] = False
            hint = _HINTS.get(properties.get("INFERENCE_PRECISION_HINT", ""), "")
            precision_used = f"int8+{hint}" if precision == "int8" and hint else precision
        return Artifact(backend=self.name, backend_version=self.version(), device=device, precision=precision,
                        precision_used=precision_used, files=tuple(files), options=properties, metadata=metadata,
                        notes=tuple(notes))

    def _compile_on_device(self, model: Any, device: str, properties: dict[str, str], precision: str,
                           fake_quantize: int, metadata: dict[str, Any], notes: list[str]) -> tuple[str, bytes | None]:
        """Compile for ``device``, read back what it really applied, export the blob."""
        start = time.perf_counter()
        try:
            compiled = core().compile_model(model, device, properties)
        except Exception as exc:
            raise BackendError(f"OpenVINO could not compile the model for {device}", vendor_why(exc)) from exc
        metadata["device_compile_seconds"] = round(time.perf_counter() - start, 3)
        read_back = {key: read_property(compiled, key) for key in READ_BACK}
        metadata["read_back"] = read_back
        metadata["precision_read_back"] = True
        for key in ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS"):
            if key in properties and read_back[key] is not None and str(read_back[key]) != properties[key]:
                notes.append(f"asked OpenVINO for {key}={properties[key]}, it applied {read_back[key]}")
        computed = inference_precision(compiled)
        if precision == "int8":
            precision_used = f"int8+{computed}" if fake_quantize else computed
        else:
            precision_used = computed
            if computed != precision:
                notes.append(f"requested {precision}, but OpenVINO compiled {computed} on {device} "
                             f"(INFERENCE_PRECISION_HINT read back as {computed})")
        blob = None
        if "EXPORT_IMPORT" in metadata.get("optimization_capabilities", ()):
            try:
                blob = compiled.export_model()
                blob = blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)
            except Exception as exc:
                notes.append(f"OpenVINO could not export the compiled model ({vendor_why(exc)}); the bundle "
                             "holds the IR, compiled again when loaded")
            differs = _blob_differs(compiled, blob, device, properties) if blob is not None else None
            if differs:
                blob = None
                notes.append(f"the exported blob computes differently from the compiled model ({differs}); the "
                             "bundle holds the IR, compiled again when loaded")
        else:
            notes.append(f"OpenVINO's {device} device cannot export compiled models; the IR is compiled when loaded")
        return precision_used, blob

    def deploy_programs(self, artifact: Artifact, directory: Path, target: Target) -> list[DeployProgram]:
        from onnxsmith.compilers.openvino.deployment import programs

        return programs(artifact, directory, target)

    def triton_model(self, artifact: Artifact, target: Target) -> TritonModel | None:
        from onnxsmith.compilers.openvino.deployment import triton_model

        return triton_model(artifact)

    def ovms_model(self, artifact: Artifact, target: Target) -> tuple[str, ...]:
        """OVMS serves the IR (``model.xml`` + ``model.bin``), which every OpenVINO bundle keeps."""
        return IR_FILES

    def load(self, artifact: Artifact, directory: Path, target: Target) -> OpenVINORunner:
        from onnxsmith.compilers.openvino.runner import OpenVINORunner

        device = artifact.device
        require_device(device, target.id)
        properties = {str(k): str(v) for k, v in artifact.options.items()}
        notes: list[str] = []
        compiled, loaded_from = None, "IR"
        blob = directory / BLOB
        if self.version() != artifact.backend_version:  # a blob is for the OpenVINO build that exported it
            notes.append(f"built with OpenVINO {artifact.backend_version}, loaded with {self.version()}: compiled the "
                         "IR here instead of importing the blob")
        elif BLOB in artifact.files and blob.is_file():
            try:
                compiled = core().import_model(blob.read_bytes(), device, properties)
                loaded_from = "blob"
            except Exception as exc:  # another OpenVINO build or CPU: the IR still compiles
                notes.append(f"the compiled blob did not import here ({vendor_why(exc)}); compiled the IR instead")
        else:
            notes.append("the bundle holds no compiled blob for this machine; compiled the IR on the device")
        ir = directory / IR_FILES[0]
        if compiled is None:
            try:
                compiled = core().compile_model(str(ir), device, properties)
            except Exception as exc:
                raise BackendError(f"OpenVINO could not compile '{ir.name}' for {device}", vendor_why(exc)) from exc
        runner = OpenVINORunner(compiled, device, properties, ir, list(artifact.metadata.get("inputs", [])),
                                list(artifact.metadata.get("outputs", [])), tuple(notes), loaded_from)
        expected = precision_parts(artifact.precision_used)[-1]
        if runner.precision_used != expected:
            runner.notes += (f"{artifact.precision_used} in the manifest, but {device} computes in "
                             f"{runner.precision_used} here (INFERENCE_PRECISION_HINT read back at load)",)
        return runner

    def load_layers(self, artifact: Artifact, directory: Path, target: Target, tensors: list[str]
                    ) -> OpenVINORunner | None:
        """The IR with every op output that carries one of ``tensors``' ONNX names (OpenVINO keeps them as tensor
        names, NNCF's FakeQuantize nodes included) added as a model output, compiled with the bundle's
        properties."""
        from onnxsmith.compilers.openvino.runner import OpenVINORunner

        require_device(artifact.device, target.id)
        model = core().read_model(str(directory / IR_FILES[0]))
        wanted = set(tensors)
        outputs = list(artifact.metadata.get("outputs", []))
        exposed: list[str] = []
        ports = []
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Result", "Parameter", "Constant"):
                continue
            for port in op.outputs():
                names = [n for n in port.get_names() if n in wanted and n not in exposed and n not in outputs]
                if names:
                    ports.append(port)
                    exposed.append(names[0])
        if not ports:
            return None
        model.add_outputs(ports)
        properties = {str(k): str(v) for k, v in artifact.options.items()}
        try:
            compiled = core().compile_model(model, artifact.device, properties)
        except Exception as exc:
            raise BackendError("OpenVINO could not compile the IR with per-layer outputs", vendor_why(exc)) from exc
        return OpenVINORunner(compiled, artifact.device, properties, directory / IR_FILES[0],
                              list(artifact.metadata.get("inputs", [])), outputs + exposed, (), "IR")


def _bound_inputs(model: Any, ranges: Mapping[str, ShapeRange]) -> dict[str, str]:
    """Reshape the ranged inputs of the OpenVINO model to bounded dims, ``Dimension(min, max)`` (OpenVINO's
    plugins pick kernels for the bounds; OPT has no OpenVINO counterpart)."""
    openvino = ov()
    shapes, applied = {}, {}
    for port in model.inputs:
        name = next((n for n in port.get_names() if n in ranges), None)
        if name is None:
            continue
        bounds = ranges[name]
        shapes[port] = openvino.PartialShape([openvino.Dimension(lo, hi) if lo != hi else openvino.Dimension(lo)
                                              for lo, hi in zip(bounds.min, bounds.max)])
        applied[name] = str(shapes[port])
    missing = sorted(set(ranges) - set(applied))
    if missing:
        raise BackendError("OpenVINO could not bound the input shapes", f"the converted model has no input named "
                           f"{', '.join(missing)}", "report it with the model")
    try:
        model.reshape(shapes)
    except Exception as exc:
        raise BackendError("OpenVINO could not keep the input shapes dynamic", vendor_why(exc),
                           "the model may hard-code its batch (a Reshape to a constant shape); export it with a "
                           "dynamic batch, or give one shape with --shape NAME=DIMS") from exc
    return applied


def _blob_differs(compiled: Any, blob: bytes, device: str, properties: Mapping[str, str]) -> str | None:
    """Why the blob, imported again, does not compute what ``compiled`` does on one generated input (None: it does).

    OpenVINO 2026.4's CPU export loses part of some ops (ONNX RotaryEmbedding: half the outputs differ after
    export + import), so a blob is kept only when it reproduces the compiled model. Integer inputs get ones; a
    model with a scalar or 1-d integer input (a shape, a Range delta: generated values could divide by zero, which
    kills the process with SIGFPE inside OpenVINO) is not checked."""
    import numpy as np

    feeds = []
    rng = np.random.default_rng(0)
    for port in compiled.inputs:
        shape = port.get_partial_shape()
        if not shape.is_static:
            return None  # nothing to generate: keep the blob as exported
        try:
            dtype = np.dtype(port.get_element_type().to_dtype())
        except Exception:  # bf16 and other types numpy lacks
            return None
        dims = tuple(int(d) for d in shape.to_shape())
        if dtype.kind != "f" and len(dims) <= 1:
            return None
        feeds.append(rng.standard_normal(dims).astype(dtype) if dtype.kind == "f" else np.ones(dims, dtype))
    try:
        imported = core().import_model(blob, device, dict(properties))
    except Exception as exc:
        return f"it does not import ({vendor_why(exc)})"
    try:
        want = compiled.create_infer_request().infer(feeds)  # by position: both keep the model's input order
        got = imported.create_infer_request().infer(feeds)
    except Exception:  # generated values the model cannot take (e.g. indices): nothing to compare
        return None
    for index, port in enumerate(compiled.outputs):
        a, b = np.asarray(want[port]), np.asarray(got[imported.outputs[index]])
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True):
            return f"output {index} differs after export and import"
    return None


def _check_capabilities(device: str, caps: tuple[str, ...], precision: str, properties: dict[str, str]) -> None:
    """Refuse precisions the device cannot honour, instead of letting OpenVINO fall back silently."""
    wanted = [precision]
    hint = _HINTS.get(properties.get("INFERENCE_PRECISION_HINT", ""))
    if precision == "int8" and hint:
        wanted.append(hint)
    for each in wanted:
        if CAPABILITY[each] not in caps:
            offered = [p for p in PRECISIONS if CAPABILITY[p] in caps]
            raise UnsupportedError(
                f"OpenVINO cannot run {each} on {device} ({full_device_name(device)})",
                f"the device's OPTIMIZATION_CAPABILITIES are {', '.join(caps)}: no {CAPABILITY[each]}, so OpenVINO "
                "would silently compute in another precision",
                f"choose --precision {' or '.join(offered) or 'fp32'}, or compile for a target whose device has "
                f"{CAPABILITY[each]} (e.g. a CPU with AVX512_BF16 or AMX)" if each == "bf16" else
                f"choose --precision {' or '.join(offered) or 'fp32'}")


def _release(version: str) -> tuple[int, ...]:
    """``2026.4.1-19000-abc`` -> ``(2026, 4, 1)``; empty when it names no release."""
    import re

    return tuple(int(part) for part in re.findall(r"\d+", version.split("-")[0])[:3])
