"""onnxsmith: compile an ONNX model for a named hardware target, then profile and validate it.

Public API::

    import onnxsmith
    bundle = onnxsmith.load("out/resnet50-host")   # a compiled bundle
    outputs = bundle.run({"input": x})
    record = onnxsmith.compare("model.onnx", ["host", "arm/raspberry-pi-5"], output="out/cmp")  # cluster="auto"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle

__all__ = ["__version__", "compare", "load"]


def load(path: str) -> Bundle:
    """Open a compiled bundle (verifying its checksums and backend version); ``.run(inputs)`` runs it."""
    from onnxsmith.bundle import Bundle

    return Bundle.open(path)


def compare(model: str, targets: list[str], *, output: str, **kwargs: Any) -> dict[str, Any]:
    """Compile, profile and validate ``model`` for each cell (``TARGET[:BACKEND[:PRECISION]]``) and return the
    record that ``compare.json`` holds; see :func:`onnxsmith.fleet.compare.compare` for the keywords (``data``,
    ``labels``, ``calibration``, ``cluster``, ``profile``, ``shapes``, ``samples``, ``options``, ``force``)."""
    from onnxsmith.fleet.compare import compare as run_compare

    return run_compare(model, targets, output=output, **kwargs)
