"""TensorRT build options: ``--option KEY=VALUE`` and the target file's ``[device.tensorrt]`` table.

Everything here is plain Python (no TensorRT import), so options are validated before any GPU work starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import TargetError, UnsupportedError, UserInputError
from onnxsmith.options import Option

if TYPE_CHECKING:
    from onnxsmith.model.shapes import ShapeRange

_CHOICES = {
    "hardware_compatibility": ("none", "ampere_plus", "same_compute_capability"),
    "typing": ("auto", "weak", "strong"),
    "int8_method": ("auto", "qdq", "calibrator"),
    "int8_fallback": ("fp16", "fp32"),
    "calibration_method": ("entropy", "minmax", "percentile"),
}
_BOOLS = ("timing_cache", "tf32", "cuda_graph", "spin_wait")
_INTS = {"workspace_mb": (1, None), "builder_optimization_level": (0, 5), "device_id": (0, None),
         "min_batch": (1, None), "opt_batch": (1, None), "max_batch": (1, None), "calibration_batches": (1, None)}
_TARGET_ONLY = ("compute_capability",)
_LISTS = ("keep_fp32",)
ALLOWED = tuple(sorted([*_CHOICES, *_BOOLS, *_INTS, *_LISTS]))
_HELP = {
    "hardware_compatibility": "engine portability across GPU architectures",
    "typing": "weak: precision builder flags (TensorRT 10); strong: types from the ONNX (the only mode in 11)",
    "int8_method": "explicit Q/DQ quantization, or TensorRT's calibrator",
    "int8_fallback": "precision of the layers int8 does not cover",
    "calibration_method": "TensorRT calibrator's statistic",
    "timing_cache": "reuse kernel timings across builds (cached per GPU and TensorRT version)",
    "tf32": "allow TF32 for fp32 convolutions and matrix multiplies",
    "cuda_graph": "run each inference as a captured CUDA graph (trtexec 11's default; off: plain enqueues)",
    "spin_wait": "wait for the GPU by spinning on events instead of blocking (trtexec --useSpinWait)",
    "workspace_mb": "builder workspace limit in MiB (default: TensorRT's, all device memory)",
    "builder_optimization_level": "0 (fast build) .. 5 (slowest build, most tactics); TensorRT's default 3",
    "device_id": "CUDA device index",
    "min_batch": "optimization profile: smallest batch",
    "opt_batch": "optimization profile: batch tuned for",
    "max_batch": "optimization profile: largest batch",
    "calibration_batches": "calibrator: batches read",
    "keep_fp32": "int8 by Q/DQ: ONNX node names left without Q/DQ, so a strongly typed build keeps them in fp32 "
                 "(a keep-list from 'onnxsmith debug precision')",
}
DECLARED = tuple(
    Option(key, str, None, _HELP[key], choices=_CHOICES[key]) if key in _CHOICES else
    Option(key, bool, None, _HELP[key]) if key in _BOOLS else
    Option(key, list, None, _HELP[key]) if key in _LISTS else
    Option(key, int, None, _HELP[key], minimum=_INTS[key][0], maximum=_INTS[key][1])
    for key in ALLOWED)
"""The ``--option`` declaration the core checks values against (:class:`onnxsmith.options.Option`)."""


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Validated TensorRT settings for one build."""

    workspace_mb: int | None = None
    """Builder workspace limit (``MemoryPoolType.WORKSPACE``); ``None``: TensorRT's default (all device memory)."""
    builder_optimization_level: int | None = None
    """0 (fast build) .. 5 (slowest build, most tactics); ``None`` leaves TensorRT's default (3)."""
    hardware_compatibility: str = "none"
    timing_cache: bool = True
    tf32: bool = False
    """Allow TF32 for fp32 convolutions and matrix multiplies (off: fp32 means fp32)."""
    cuda_graph: bool = True
    """Run inferences as a captured CUDA graph, as trtexec 11 does by default (falls back when capture fails)."""
    spin_wait: bool = False
    """Spin on CUDA events instead of blocking (trtexec ``--useSpinWait``; off by default there too)."""
    typing: str = "auto"
    """``weak``: precision builder flags (TensorRT 10); ``strong``: types come from the ONNX (the only mode in 11)."""
    int8_method: str = "auto"
    int8_fallback: str = "fp16"
    calibration_method: str = "entropy"
    calibration_batches: int | None = None
    device_id: int = 0
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    keep_fp32: tuple[str, ...] = ()
    """int8 by Q/DQ: ONNX nodes left without Q/DQ nodes (kept in fp32 under strong typing)."""
    compute_capability: str = ""
    """From the target file only: the compute capability the target GPU has (``9.0``)."""

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if v not in (None, "", ())}


def _parse_value(key: str, value: Any, where: str) -> Any:
    text = str(value).strip().lower() if not isinstance(value, bool) else value
    if key in _CHOICES:
        if text not in _CHOICES[key]:
            raise UnsupportedError(f"invalid tensorrt option {key}={value}{where}",
                                   f"allowed values: {', '.join(_CHOICES[key])}")
        return text
    if key in _BOOLS:
        if isinstance(text, bool):
            return text
        if text in ("1", "true", "on", "yes"):
            return True
        if text in ("0", "false", "off", "no"):
            return False
        raise UnsupportedError(f"invalid tensorrt option {key}={value}{where}", "expected on or off")
    if key in _INTS:
        low, high = _INTS[key]
        try:
            number = int(str(value))
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            limit = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
            raise UnsupportedError(f"invalid tensorrt option {key}={value}{where}", f"expected {limit}")
        return number
    if key in _LISTS:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(str(v).strip() for v in items if str(v).strip())
    return str(value)


def parse_options(options: Mapping[str, Any], target_options: Mapping[str, Any] | None = None,
                  target_file: str = "") -> BuildOptions:
    """Merge the target's ``[device.tensorrt]`` table with ``--option`` values (which win) and validate them."""
    values: dict[str, Any] = {}
    for key, value in (target_options or {}).items():
        if key not in ALLOWED and key not in _TARGET_ONLY:
            raise TargetError(f"invalid {target_file or 'target'}", f"key 'device.tensorrt.{key}' is not a TensorRT "
                              f"option (allowed: {', '.join([*ALLOWED, *_TARGET_ONLY])})")
        values[key] = _parse_value(key, value, f" in {target_file or 'the target file'}")
    for key, value in options.items():
        if key not in ALLOWED:
            raise UnsupportedError(f"unknown tensorrt option '{key}'", f"allowed: {', '.join(ALLOWED)}")
        values[key] = _parse_value(key, value, "")
    opts = BuildOptions(**values)
    if opts.max_batch is None and (opts.min_batch is not None or opts.opt_batch is not None):
        raise UnsupportedError("invalid tensorrt batch range", "min_batch/opt_batch need max_batch",
                               "give --option max_batch=N")
    if opts.max_batch is not None:
        low, best = opts.min_batch or 1, opts.opt_batch or opts.max_batch
        if not low <= best <= opts.max_batch:
            raise UnsupportedError("invalid tensorrt batch range",
                                   f"need min_batch <= opt_batch <= max_batch, got {low}/{best}/{opts.max_batch}")
    return opts


def profile_shapes(inputs: Sequence[tuple[str, tuple[int, ...]]], opts: BuildOptions,
                   ranges: Mapping[str, ShapeRange] | None = None
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimization-profile (min, opt, max) shapes for network inputs with dynamic (-1) dims.

    An input of ``ranges`` (``--shape NAME=MIN:OPT:MAX`` or ``--batch``, kept dynamic by the core) takes its range,
    every dim of it; another input can range only its first (batch) dimension, with the ``min_batch``/
    ``opt_batch``/``max_batch`` options; any other dynamic dimension must be fixed when the model is loaded
    (``--shape``). Static inputs are left out.
    """
    ranges = ranges or {}
    shapes = {}
    for name, shape in inputs:
        dynamic = [i for i, d in enumerate(shape) if d < 0]
        if not dynamic:
            continue
        if name in ranges:
            bounds = ranges[name]
            fixed_differs = [i for i, d in enumerate(shape) if d >= 0 and not bounds.min[i] == bounds.max[i] == d] \
                if len(bounds.min) == len(shape) else None
            if fixed_differs is None or fixed_differs:
                raise UserInputError(f"input '{name}' does not fit its shape range {bounds.bounds_text()}",
                                     f"TensorRT's network has it as {'x'.join('N' if d < 0 else str(d) for d in shape)}",
                                     "give a range with the model's rank and fixed dims")
            shapes[name] = (bounds.min, bounds.opt, bounds.max)
            continue
        if dynamic != [0]:
            example = "x".join("N" if d < 0 else str(d) for d in shape)
            raise UserInputError(f"input '{name}' has dynamic dims {dynamic}",
                                 "a TensorRT profile here ranges only the batch dimension",
                                 f"fix the others with --shape {name}={example}, or range them with --shape "
                                 f"{name}=MIN:OPT:MAX")
        if opts.max_batch is None:
            raise UserInputError(f"input '{name}' has a dynamic batch dimension",
                                 "TensorRT needs an optimization profile with its range",
                                 "give --batch MIN..MAX@OPT (or --option max_batch=N), or fix it with --shape")
        low = opts.min_batch or 1
        high = opts.max_batch
        best = opts.opt_batch or high
        rest = tuple(shape[1:])
        shapes[name] = ((low, *rest), (best, *rest), (high, *rest))
    return shapes


def profile_copies(parallel_requests: int) -> int:
    """Identical optimization profiles built into a dynamic-shape engine: one per execution context that can exist
    at once, since TensorRT lets a profile be selected by only one live context. The runner holds one context for
    ``run``/``bind``, ``parallel_requests`` for parallel throughput and one for the per-layer profile."""
    return 2 + max(2, parallel_requests)
