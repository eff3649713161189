"""onnxsmith: compile an ONNX model for a named hardware target, then profile and validate it.

Public API::

    import onnxsmith
    bundle = onnxsmith.load("out/resnet50-host")   # a compiled bundle
    outputs = bundle.run({"input": x})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle

__all__ = ["__version__", "load"]


def load(path: str) -> Bundle:
    """Open a compiled bundle (verifying its checksums and backend version); ``.run(inputs)`` runs it."""
    from onnxsmith.bundle import Bundle

    return Bundle.open(path)
