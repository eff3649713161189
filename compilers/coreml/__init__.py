"""Core ML: ONNX -> an ML Program package (``.mlpackage``) for Apple CPUs, GPUs and Neural Engines.

Conversion goes through onnx2coreml (ONNX -> MIL) and coremltools (MIL -> ML Program, fp16, int8 weight
compression) and works on Linux; prediction needs macOS, so a bundle built here is copied to a Mac to run.
:func:`evaluate_program` replays a converted program with coremltools' numpy op implementations on Linux, for
programs made only of ops that have one (MLPs and transformers: yes; convolutions: no).
"""

from __future__ import annotations

from onnxsmith.compilers.coreml.backend import CoreMLCompiler
from onnxsmith.compilers.coreml.milcheck import can_evaluate, evaluate_program

__all__ = ["CoreMLCompiler", "can_evaluate", "evaluate_program"]
