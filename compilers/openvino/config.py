"""The OpenVINO properties a compile applies: precision hint, performance hint, streams and threads.

They come from the precision, the profile's ``[runtime]`` table, the target's core count and ``--option KEY=VALUE``.
The same dictionary is stored in ``Artifact.options`` and passed again when the artifact is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from onnxsmith.compilers.openvino.common import PRECISION_HINTS
from onnxsmith.errors import UserInputError
from onnxsmith.options import Option

if TYPE_CHECKING:
    from onnxsmith.plugin import CompileRequest

OPTIONS = (
    Option("inference_precision", str, None, "precision of the ops NNCF left unquantized (int8 only)",
           choices=("fp32", "f32", "bf16", "fp16", "f16")),
    Option("performance_hint", str, None, "default: the profile's runtime.performance_hint",
           choices=("latency", "throughput")),
    Option("num_streams", int, None, "parallel streams (default: the profile's runtime.streams)", minimum=1),
    Option("num_threads", int, None, "inference threads (default: the profile's runtime.threads)", minimum=1),
    Option("pinning", bool, None, "CPU: pin inference threads to cores (ENABLE_CPU_PINNING; default: OpenVINO's, "
           "on for Linux)"),
    Option("subset_size", int, None, "int8: calibration batches NNCF uses (default: all of them, at most 300)",
           minimum=1),
    Option("model_type", str, None, "int8: 'transformer' for NNCF's transformer scheme (default: generic)",
           choices=("transformer",)),
    Option("keep_fp32", list, None, "int8: ONNX node names NNCF leaves unquantized (its ignored scope), e.g. "
           "conv2,conv3 (a keep-list from 'onnxsmith debug precision')"),
    Option("overflow_fix", str, None, "int8: NNCF's overflow fix (7-bit weights so U8S8 VPMADDUBSW cannot saturate "
           "on CPUs without VNNI): enable (every layer), first_layer_only (NNCF's default) or disable",
           choices=("enable", "first_layer_only", "disable")),
)
_PRECISION_WORDS = {"fp32": "fp32", "f32": "fp32", "bf16": "bf16", "fp16": "fp16", "f16": "fp16"}


@dataclasses.dataclass(frozen=True)
class CompileSettings:
    """What a compile applies: OpenVINO properties plus the NNCF settings for int8."""

    properties: dict[str, str]
    """OpenVINO property name -> value, as passed to ``compile_model`` / ``import_model``."""
    subset_size: int = 0
    """0: every calibration batch, at most 300."""
    model_type: str = ""
    keep_fp32: tuple[str, ...] = ()
    """int8: ONNX node names kept out of quantization (NNCF ignored scope)."""
    overflow_fix: str = ""
    """int8: NNCF's ``OverflowFix`` (``enable``, ``first_layer_only``, ``disable``); empty: NNCF's default."""
    threads_source: str = ""
    """Where INFERENCE_NUM_THREADS came from (option, profile, target cores, or OpenVINO's own choice)."""
    notes: tuple[str, ...] = ()


def settings_for(request: CompileRequest, device: str, detected_host: bool) -> CompileSettings:
    """The properties for ``request`` on ``device`` (before filtering by what the device supports)."""
    options = dict(request.options)  # declared in OPTIONS; the core has parsed and range-checked each value
    profile, precision = request.profile, request.precision
    props: dict[str, str] = {}
    notes: list[str] = []

    if "inference_precision" in options:
        chosen = _PRECISION_WORDS[options["inference_precision"]]
        if precision != "int8" and chosen != precision:
            raise UserInputError(f"openvino option inference_precision={options['inference_precision']} "
                                 f"contradicts --precision {precision}",
                                 "the option only chooses the precision of the unquantized ops of an int8 model",
                                 f"use --precision {chosen} instead")
        props["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[chosen]
    elif precision in PRECISION_HINTS:
        # Always explicit: the CPU plugin silently runs bf16 by default where the CPU has it.
        props["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
    # int8 without the option: unquantized ops run at the device's default, as a hand-written NNCF script would.

    hint = profile.performance_hint
    if "performance_hint" in options:
        hint = options["performance_hint"]
    props["PERFORMANCE_HINT"] = hint.upper()

    streams = profile.streams
    if "num_streams" in options:
        streams = options["num_streams"]
    if streams > 0:
        props["NUM_STREAMS"] = str(streams)

    threads_source = ""
    if device == "CPU":
        threads, threads_source = profile.threads, "profile runtime.threads"
        if "num_threads" in options:
            threads, threads_source = options["num_threads"], "option num_threads"
        if threads <= 0 and request.target.cores > 0 and not detected_host:
            threads, threads_source = request.target.cores, "target cores"
        if threads > 0:
            props["INFERENCE_NUM_THREADS"] = str(threads)
        else:
            # On the detected host OpenVINO knows better than a core count: it skips SMT siblings and honours
            # the process's CPU affinity, as a hand-written OpenVINO script gets by default.
            threads_source = "OpenVINO's default for this machine"
    elif "num_threads" in options:
        notes.append(f"option num_threads ignored: OpenVINO's {device} device has no thread setting")
    if "pinning" in options:
        if device == "CPU":
            props["ENABLE_CPU_PINNING"] = "YES" if options["pinning"] else "NO"
        else:
            notes.append(f"option pinning ignored: OpenVINO's {device} device has no CPU pinning")

    subset = options.get("subset_size") or 0
    model_type = options.get("model_type") or ""
    keep = tuple(str(n) for n in options.get("keep_fp32") or ())
    overflow_fix = options.get("overflow_fix") or ""
    if precision != "int8" and ("subset_size" in options or "model_type" in options or keep or overflow_fix):
        notes.append("options subset_size/model_type/keep_fp32/overflow_fix only apply to int8 and were ignored")
        keep, overflow_fix = (), ""
    return CompileSettings(props, subset, model_type, keep, overflow_fix, threads_source, tuple(notes))


def filter_supported(properties: Mapping[str, str], supported: set[str], device: str) -> tuple[dict[str, str],
                                                                                              list[str]]:
    """Drop properties the device does not take; notes say which."""
    if not supported:
        return dict(properties), []
    kept = {k: v for k, v in properties.items() if k in supported}
    dropped = [k for k in properties if k not in supported]
    notes = [f"OpenVINO's {device} device does not take {', '.join(dropped)}; not applied"] if dropped else []
    return kept, notes
