"""The precisions onnxsmith speaks, and the rules that go with each, in one place.

A precision is one of :data:`PRECISIONS`, or a mixed one written ``HEADLINE+REST`` (``int8+fp32``: int8 where
quantized, fp32 elsewhere): its headline decides peaks, cosine thresholds and the precision a layer table
counts against."""

from __future__ import annotations

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
