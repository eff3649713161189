"""ONNX Runtime: the reference for validation and the baseline row of every profile (CPU; CUDA when present).

The "artifact" is the ONNX file itself plus an optimized copy written by ONNX Runtime's offline optimizer, so a
bundle for this backend is deployable with nothing but ``onnxruntime``.
"""

from __future__ import annotations

from onnxsmith.compilers.onnxruntime.backend import OnnxRuntimeCompiler

__all__ = ["OnnxRuntimeCompiler"]
