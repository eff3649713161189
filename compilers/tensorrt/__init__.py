"""TensorRT: ONNX -> an engine built (and tactic-timed) on the NVIDIA GPU it will run on.

Works with TensorRT 10 (precision builder flags, legacy int8 calibrator) and 11 (strongly typed networks only:
precision comes from the ONNX, int8 from Q/DQ nodes). Engines are specific to the GPU architecture and TensorRT
version; both are recorded in the artifact and checked on load. Needs ``pip install 'onnxsmith[tensorrt]'``
(``tensorrt`` and ``cuda-python``) and an NVIDIA GPU.
"""

from __future__ import annotations

from onnxsmith.compilers.tensorrt.backend import TensorRTCompiler

__all__ = ["TensorRTCompiler"]
