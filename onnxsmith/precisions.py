"""The precisions onnxsmith speaks, and the rules that go with each, in one place.

A precision is one of :data:`PRECISIONS`, or a mixed one written ``HEADLINE+REST`` (``int8+fp32``: int8 where
quantized, fp32 elsewhere): its headline decides peaks, cosine thresholds and the precision a layer table
counts against."""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
MIN_COSINE = {"fp32": 0.9999, "bf16": 0.995, "fp16": 0.999, "int8": 0.98}
"""The default per-output cosine a validation must reach, by headline precision."""
FALLBACK_MIN_COSINE = 0.98


def precision_parts(precision: str) -> tuple[str, ...]:
    """``int8+fp32`` -> ``("int8", "fp32")``; a plain precision is one part."""
    return tuple(precision.split("+"))


def headline_precision(precision: str) -> str:
    """The first part of a (possibly mixed) precision: ``int8+fp16`` -> ``int8``."""
    return precision_parts(precision)[0]


def min_cosine_for(precision: str, given: float | None = None) -> float:
    """The cosine threshold for ``precision``: ``given`` when set, else its headline's default."""
    return given if given is not None else MIN_COSINE.get(headline_precision(precision), FALLBACK_MIN_COSINE)


def offered_precisions(backend: Any, target: Any) -> list[str]:
    """The precisions ``backend`` compiles natively for ``target`` that the target lists, in the backend's order."""
    return [p for p in backend.precisions(target) if p in target.precisions]


def choose_precision(backend: Any, target: Any, profile: Any, asked: str | None = None) -> tuple[str, str | None]:
    """The precision a compile of ``target`` with ``backend`` uses, and a note when it is not what was asked for:
    ``asked`` when given (checked by the compile), else the profile's when the backend offers it for the target,
    else the first it offers. ``compile``, ``compare`` and ``probe`` all decide here, so ``compile -t X`` and
    ``compare -t X`` build the same precision."""
    if asked:
        return asked, None
    offered = offered_precisions(backend, target)
    if profile.precision in offered or not offered:  # none offered: the compile's own check says why
        return profile.precision, None
    return offered[0], (f"precision {offered[0]}: profile '{profile.name}' asks for {profile.precision}, which "
                        f"{backend.name} does not offer for {target.id} (it offers {', '.join(offered)})")
