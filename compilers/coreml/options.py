"""Core ML settings: the precisions, compute units and deployment targets offered, and the validated
:class:`CoreMLOptions` read from a target file's ``[device.coreml]`` and ``--option`` values."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from onnxsmith.errors import DataError, TargetError, UnsupportedError

PRECISIONS = ("fp32", "fp16", "int8")
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
DEPLOYMENT_TARGETS = ("ios15", "ios16", "ios17", "ios18", "macos12", "macos13", "macos14", "macos15")
INT8_MIN_TARGET = ("ios16", "ios17", "ios18", "macos13", "macos14", "macos15")
W8A8_MIN_TARGET = ("ios17", "ios18", "macos14", "macos15")
PALETTE_BITS = (1, 2, 3, 4, 6, 8)
ACTIVATIONS = ("float", "int8")


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


def check_compile(opts: CoreMLOptions, precision: str, calibrated: bool) -> None:
    """Refuses, before converting, what this precision, these options and the deployment target cannot give
    together (``calibrated``: the request has a calibration set)."""
    if precision not in PRECISIONS:
        raise UnsupportedError(f"coreml backend cannot compile {precision}", f"it offers {', '.join(PRECISIONS)}")
    if precision == "int8" and opts.minimum_deployment_target not in INT8_MIN_TARGET:
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
        if opts.minimum_deployment_target not in W8A8_MIN_TARGET:
            raise UnsupportedError("int8 activations (W8A8) need iOS17 / macOS14 or newer",
                                   f"minimum_deployment_target is {opts.minimum_deployment_target}",
                                   "give --option minimum_deployment_target=ios17 (or newer)")
        if not calibrated:
            raise DataError("int8 activations need calibration data",
                            "W8A8 takes each activation's range from real inputs",
                            "pass --calibration calib.npz (the calibration set int8 uses for every backend)")
