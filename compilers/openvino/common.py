"""Shared OpenVINO helpers: the lazy import, one Core per process, devices, precisions and vendor errors."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import MissingDependencyError, UnsupportedError, first_line

if TYPE_CHECKING:
    from onnxsmith.targets import Target

DEVICE_KINDS = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
"""Target kind -> the OpenVINO device used when the target file names none."""

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
"""onnxsmith precision -> value of OpenVINO's ``INFERENCE_PRECISION_HINT``."""

CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
"""onnxsmith precision -> the entry of ``OPTIMIZATION_CAPABILITIES`` a device needs to honour it."""

_TYPE_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "f64": "fp64", "i8": "int8", "u8": "uint8"}
_DEVICE_NAME = re.compile(r"^(CPU|GPU(\.\d+)?|NPU)$")
_VENDOR_NOISE = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?)$")


def ov() -> Any:
    """The ``openvino`` module, or :class:`MissingDependencyError`."""
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError("openvino", "openvino") from exc
    return openvino


@functools.lru_cache(maxsize=1)
def core() -> Any:
    """One ``openvino.Core`` per process (plugins load once)."""
    return ov().Core()


def vendor_why(exc: BaseException, limit: int = 300) -> str:
    """An OpenVINO exception's message without the lines that only say which C++ file threw, on one line.

    OpenVINO's first lines are ``Exception from src/...cpp:84:``; the message proper follows, often over
    several short lines (``...OpConversionFailure:`` / ``-- No conversion rule found for operations: X``).
    """
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not _VENDOR_NOISE.match(line))
    if not text:
        return first_line(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def device_for(target: Target) -> str:
    """The OpenVINO device named by the target (``device`` under ``[device.openvino]``), else one by kind."""
    device = target.options_for("openvino").get("device", DEVICE_KINDS.get(target.kind, "CPU"))
    if not isinstance(device, str):
        from onnxsmith.errors import TargetError

        raise TargetError(f"invalid {target.source_file or target.id}", f"key 'device.openvino.device' is "
                          f"{device!r}, not a string", "set device = \"CPU\", \"GPU\" or \"NPU\"")
    return device


def valid_device_name(device: str) -> bool:
    return bool(_DEVICE_NAME.match(device))


def device_available(device: str) -> bool:
    """Whether ``device`` (``GPU`` matches ``GPU.0``) is in ``core.available_devices``."""
    available = list(core().available_devices)
    return device in available or any(d.split(".")[0] == device for d in available)


def require_device(device: str, target_id: str) -> None:
    """Raise :class:`UnsupportedError` unless OpenVINO sees ``device`` on this machine."""
    if not valid_device_name(device):
        raise UnsupportedError(f"OpenVINO device '{device}' of target {target_id} is not supported",
                               "onnxsmith drives the CPU, GPU (GPU.N) and NPU devices",
                               "set device = \"CPU\", \"GPU\" or \"NPU\" under [device.openvino] in the target file")
    if not device_available(device):
        available = ", ".join(core().available_devices) or "none"
        raise UnsupportedError(f"OpenVINO device '{device}' is not available on this machine",
                               f"OpenVINO sees: {available}",
                               "install the Intel GPU (OpenCL/Level Zero) or NPU driver, or compile on a machine "
                               "that has the device")


def capabilities(device: str) -> tuple[str, ...]:
    """The device's ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32, INT8, BF16, EXPORT_IMPORT``)."""
    try:
        return tuple(str(c) for c in core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # a plugin without the property: assume nothing beyond fp32
        return ("FP32",)


def supported_properties(device: str) -> set[str]:
    try:
        return set(core().get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:
        return set()


def full_device_name(device: str) -> str:
    try:
        return str(core().get_property(device, "FULL_DEVICE_NAME"))
    except Exception:
        return device


def precision_name(element_type: Any) -> str:
    """An OpenVINO element type (``Type.f32``) or its name as an onnxsmith precision (``fp32``)."""
    name = element_type if isinstance(element_type, str) else element_type.get_type_name()
    return _TYPE_NAMES.get(name, name)


def read_property(compiled: Any, name: str) -> Any:
    """A compiled model's property as a JSON-friendly value, or ``None`` when the device does not report it."""
    try:
        value = compiled.get_property(name)
    except Exception:
        return None
    if hasattr(value, "get_type_name"):
        return value.get_type_name()
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


def inference_precision(compiled: Any) -> str:
    """What the compiled model computes its non-quantized ops in, read back (``fp32``, ``bf16``, ``fp16``)."""
    value = read_property(compiled, "INFERENCE_PRECISION_HINT")
    return precision_name(value) if value else "unknown"
