"""Apache TVM: generic and Arm CPUs (llvm, cross-compiled for aarch64), NVIDIA GPUs where TensorRT is absent.

The import path is ONNX (fixed shapes) -> onnxslim -> the Relax ONNX frontend; the build is TVM's default
pipeline for the target (dlight schedules on CUDA), or MetaSchedule when ``--option tune=1`` asks for it, with the
tuning database kept per target under the cache. The artifact is one shared library (``model.so``: VM bytecode,
weights and kernels) plus ``io.json`` (the VM's inputs and outputs, the target); it loads with
``tvm.runtime.load_module`` + ``tvm.relax.VirtualMachine`` on the device, or over TVM RPC
(``onnxsmith profile --rpc HOST:PORT``).

Modules: ``backend`` (the :class:`TVMCompiler`), ``targets`` (TVM target dicts from ``[device.tvm]``),
``frontend`` (import, unsupported ops), ``tuning`` (MetaSchedule), ``runner`` (local VM), ``remote`` (RPC),
``emulate`` (an aarch64 RPC server under qemu, to check cross-compiled artifacts without the device).
"""

from __future__ import annotations

from onnxsmith.compilers.tvm.backend import TVMCompiler

__all__ = ["TVMCompiler"]
