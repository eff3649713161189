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

if TYPE_CHECKING:
    from onnxsmith.plugin import CompileRequest

OPTIONS = {
    "inference_precision": "precision of the ops NNCF left unquantized (int8 only): fp32, bf16 or fp16",
    "performance_hint": "latency or throughput (default: the profile's runtime.performance_hint)",
    "num_streams": "parallel streams, a positive integer (default: the profile's runtime.streams)",
    "num_threads": "inference threads, a positive integer (default: the profile's runtime.threads)",
    "subset_size": "int8: calibration batches NNCF uses (default: all of them, at most 300)",
    "model_type": "int8: 'transformer' for NNCF's transformer scheme (default: generic)",
}
_PRECISION_WORDS = {"fp32": "fp32", "f32": "fp32", "bf16": "bf16", "fp16": "fp16", "f16": "fp16"}


@dataclasses.dataclass(frozen=True)
class CompileSettings:
    """What a compile applies: OpenVINO properties plus the NNCF settings for int8."""

    properties: dict[str, str]
    """OpenVINO property name -> value, as passed to ``compile_model`` / ``import_model``."""
    subset_size: int = 0
    """0: every calibration batch, at most 300."""
    model_type: str = ""
    threads_source: str = ""
    """Where INFERENCE_NUM_THREADS came from (option, profile, target cores, or OpenVINO's own choice)."""
    notes: tuple[str, ...] = ()


def _positive_int(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserInputError(f"invalid openvino option {key}={value}", "expected a positive integer",
                             f"for example --option {key}=2")
    return number


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    word = value.strip().lower()
    if word not in choices:
        raise UserInputError(f"invalid openvino option {key}={value}", f"expected one of {', '.join(choices)}")
    return word


def check_options(options: Mapping[str, str]) -> None:
    """Reject keys the OpenVINO backend does not know."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserInputError(f"unknown openvino option '{unknown[0]}'", f"allowed: {', '.join(OPTIONS)}",
                             "for example --option num_threads=4 (see onnxsmith.compilers.openvino.config.OPTIONS)")


def settings_for(request: CompileRequest, device: str, detected_host: bool) -> CompileSettings:
    """The properties for ``request`` on ``device`` (before filtering by what the device supports)."""
    options = dict(request.options)
    check_options(options)
    profile, precision = request.profile, request.precision
    props: dict[str, str] = {}
    notes: list[str] = []

    if "inference_precision" in options:
        chosen = _PRECISION_WORDS.get(options["inference_precision"].strip().lower())
        if chosen is None:
            raise UserInputError(f"invalid openvino option inference_precision={options['inference_precision']}",
                                 "expected fp32, bf16 or fp16")
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
        hint = _choice("performance_hint", options["performance_hint"], ("latency", "throughput"))
    props["PERFORMANCE_HINT"] = hint.upper()

    streams = profile.streams
    if "num_streams" in options:
        streams = _positive_int("num_streams", options["num_streams"])
    if streams > 0:
        props["NUM_STREAMS"] = str(streams)

    threads_source = ""
    if device == "CPU":
        threads, threads_source = profile.threads, "profile runtime.threads"
        if "num_threads" in options:
            threads, threads_source = _positive_int("num_threads", options["num_threads"]), "option num_threads"
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

    subset = _positive_int("subset_size", options["subset_size"]) if "subset_size" in options else 0
    model_type = _choice("model_type", options["model_type"], ("transformer",)) if "model_type" in options else ""
    if precision != "int8" and ("subset_size" in options or "model_type" in options):
        notes.append("options subset_size/model_type only apply to int8 and were ignored")
    return CompileSettings(props, subset, model_type, threads_source, tuple(notes))


def filter_supported(properties: Mapping[str, str], supported: set[str], device: str) -> tuple[dict[str, str],
                                                                                              list[str]]:
    """Drop properties the device does not take; notes say which."""
    if not supported:
        return dict(properties), []
    kept = {k: v for k, v in properties.items() if k in supported}
    dropped = [k for k in properties if k not in supported]
    notes = [f"OpenVINO's {device} device does not take {', '.join(dropped)}; not applied"] if dropped else []
    return kept, notes
