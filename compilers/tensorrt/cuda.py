"""The few CUDA runtime calls the TensorRT backend needs, through NVIDIA's ``cuda-python`` (imported lazily).

TensorRT's Python API takes raw device pointers and stream handles; cuda-python's ``cudart`` is NVIDIA's own
binding for allocating them (TensorRT's samples use it since 10.13). Every call's error code is checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError

if TYPE_CHECKING:
    import numpy as np


def cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as exc:
            raise MissingDependencyError("cuda-python", "tensorrt",
                                         "the TensorRT runner moves data to and from the GPU with it") from exc
    return runtime


def check(result: Any, call: str) -> Any:
    """Unwrap a cuda-python ``(error, *values)`` tuple, raising :class:`BackendError` on a CUDA error."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err.value:
        rt = cudart()
        name = rt.cudaGetErrorName(err)[1]
        text = name.decode() if isinstance(name, bytes) else str(name)
        if "InsufficientDriver" in text or "CompatNotSupported" in text:
            raise BackendError(f"CUDA call {call} failed", f"{text}: this cuda-python is built for a newer CUDA "
                               "than the driver runs", "install the cuda-python of the driver's CUDA major: pip "
                               "install 'onnxsmith[tensorrt]' (CUDA 12) or 'onnxsmith[tensorrt-cu13]' (R580+)")
        raise BackendError(f"CUDA call {call} failed", text,
                           "check the GPU and driver with nvidia-smi; another process may hold the GPU's memory")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def native_handle(obj: Any) -> int:
    """The address a cuda-python object wraps: ``cuda.bindings.utils.get_cuda_native_handle`` (cuda-bindings 13,
    where ``int(obj)`` is deprecated), else ``int(obj)`` (12.x, which lacks the helper)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def set_device(index: int) -> None:
    check(cudart().cudaSetDevice(index), "cudaSetDevice")


class Stream:
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._stream: Any = check(cudart().cudaStreamCreate(), "cudaStreamCreate")

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        return native_handle(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._stream is not None:
            cudart().cudaStreamDestroy(self._stream)
            self._stream = None


class DeviceBuffer:
    """``nbytes`` of GPU memory (at least 1 byte, so empty tensors still get a valid address)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr: int = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def copy_from_host(self, array: np.ndarray, stream: Stream | None = None) -> None:
        """Copy a C-contiguous host array in (asynchronously on ``stream`` when given)."""
        rt = cudart()
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(rt.cudaMemcpy(self.ptr, array.ctypes.data, array.nbytes, kind), "cudaMemcpy")
        else:
            check(rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.raw), "cudaMemcpyAsync")

    def copy_to_host(self, array: np.ndarray, stream: Stream | None = None) -> None:
        """Copy into a C-contiguous host array (the caller synchronizes ``stream`` before reading it)."""
        rt = cudart()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(rt.cudaMemcpy(array.ctypes.data, self.ptr, array.nbytes, kind), "cudaMemcpy")
        else:
            check(rt.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream.raw), "cudaMemcpyAsync")

    def free(self) -> None:
        if self.ptr:
            cudart().cudaFree(self.ptr)
            self.ptr = 0
