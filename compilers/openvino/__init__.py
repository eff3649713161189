"""OpenVINO: x86 CPUs (Intel and AMD), Intel GPUs and NPUs; int8 through NNCF post-training quantization.

The artifact is the OpenVINO IR (``model.xml``/``model.bin``, weights kept in fp32) plus the model compiled for the
device (``model.blob``), which ``load()`` imports and, when it does not import (another OpenVINO build or CPU),
replaces by compiling the IR. The precision the device really computes in is read back after compiling
(``INFERENCE_PRECISION_HINT``), since the CPU plugin silently runs bf16 where the CPU has it.

Modules: ``backend`` (the :class:`OpenVINOCompiler`), ``config`` (properties from profile and options),
``quantize`` (NNCF), ``ops`` (unconvertible ops), ``runner`` (the loaded model), ``common`` (shared helpers).
"""

from __future__ import annotations

from onnxsmith.compilers.openvino.backend import OpenVINOCompiler

__all__ = ["OpenVINOCompiler"]
