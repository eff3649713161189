"""INT8 calibration data for TensorRT.

:class:`CalibrationFeeder` turns a :class:`~onnxsmith.data.dataset.Dataset` into batches shaped exactly like the compiled
network's inputs (plain numpy, no TensorRT). Two consumers use it:

* :func:`make_entropy_calibrator` wraps it in TensorRT 10's legacy ``IInt8EntropyCalibrator2`` (implicit
  quantization; deprecated in 10.1 and removed in TensorRT 11), copying each batch to the GPU with cuda-python.
* :func:`onnxsmith.compilers.tensorrt.precision.quantize_qdq` feeds it to ONNX Runtime's static quantizer, which writes
  Q/DQ nodes into the ONNX (explicit quantization, what TensorRT 11 requires).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import TensorSpec


class CalibrationFeeder:
    """Batches of calibration samples, one contiguous array per network input, in the network's dtype.

    Only the batched inputs are split along axis 0: an input the data layer feeds whole (``dataset.whole``) or
    that has no batch dim (:func:`onnxsmith.data.dataset.batch_inputs` of ``known_batch``, the inputs whose first dim was
    dynamic in the original model) goes as it is into every batch, and must have exactly the input's shape."""

    def __init__(self, dataset: Dataset, inputs: Sequence[TensorSpec], max_batches: int | None = None,
                 known_batch: Collection[str] | None = None) -> None:
        import numpy as np

        from onnxsmith.data.dataset import batch_inputs

        if not inputs:
            raise DataError("cannot calibrate", "the model has no inputs")
        for spec in inputs:
            if not spec.is_static:
                raise DataError("cannot calibrate", f"input '{spec.name}' has dynamic dims {spec.dynamic_dims}",
                                "calibrate a model loaded with fixed shapes (--shape)")
        self.inputs = tuple(inputs)
        missing = [s.name for s in inputs if s.name not in dataset.arrays]
        if missing:
            raise DataError("calibration data does not fit the model", f"no array for input(s) {', '.join(missing)}",
                            f"save one array per model input, named {', '.join(s.name for s in inputs)}")
        batched = set(batch_inputs(self.inputs, known_batch)) - set(dataset.whole)
        self.whole = tuple(s.name for s in inputs if s.name not in batched)
        """Inputs fed as they are into every batch (no batch dim)."""
        batches = {int(spec.shape[0]) for spec in inputs if spec.name in batched}
        if len(batches) > 1:
            raise DataError("cannot calibrate", f"the batched inputs have different batch sizes {sorted(batches)}")
        self.batch_size = batches.pop() if batches else 1
        self._arrays: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for spec in inputs:
            arr = dataset.arrays[spec.name]
            shape = "x".join(map(str, np.shape(arr))) or "scalar"
            if spec.name not in batched:
                if tuple(np.shape(arr)) != tuple(spec.shape):
                    raise DataError("calibration data does not fit the model",
                                    f"'{spec.name}' has shape {shape}, the input takes {spec.shape_text()} and has no "
                                    "batch dimension", f"give '{spec.name}' exactly as {spec.shape_text()}")
            elif tuple(np.shape(arr)[1:]) != tuple(spec.shape[1:]) or np.ndim(arr) != len(spec.shape):
                raise DataError("calibration data does not fit the model",
                                f"samples of '{spec.name}' have shape {'x'.join(map(str, np.shape(arr)[1:]))}, the "
                                f"input takes {'x'.join(map(str, spec.shape[1:]))} per sample")
            else:
                counts[spec.name] = int(np.shape(arr)[0])
            self._arrays[spec.name] = np.asarray(arr, dtype=np.dtype(spec.dtype), order="C")  # a scalar stays 0-d
        if len(set(counts.values())) > 1:
            raise DataError("calibration data does not fit the model", "the batched inputs have different sample "
                            f"counts {', '.join(f'{k}: {v}' for k, v in counts.items())}",
                            "give every batched input the same number of samples along its first axis")
        samples = next(iter(counts.values())) if counts else 1
        count = samples // self.batch_size
        if count == 0:
            raise DataError("too little calibration data", f"{samples} sample(s), the compiled batch is "
                            f"{self.batch_size}", f"give at least {self.batch_size} samples")
        self.num_batches = min(count, max_batches) if max_batches else count
        self.dropped_samples = samples - self.num_batches * self.batch_size
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch ``index`` as a feed dict (C-contiguous arrays)."""
        import numpy as np

        start = index * self.batch_size
        return {name: arr if name in self.whole else np.ascontiguousarray(arr[start:start + self.batch_size])
                for name, arr in self._arrays.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for index in range(self.num_batches):
            yield self.batch(index)

    def next_batch(self, names: Sequence[str]) -> list[np.ndarray] | None:
        """The next batch ordered as ``names`` asks (TensorRT's ``get_batch`` order), or ``None`` when done."""
        if self._next >= self.num_batches:
            return None
        unknown = [n for n in names if n not in self._arrays]
        if unknown:
            raise DataError("calibration data does not fit the network",
                            f"TensorRT asks for input(s) {', '.join(unknown)} which the data lacks")
        feed = self.batch(self._next)
        self._next += 1
        return [feed[name] for name in names]


def calibration_cache_path(trt_version: str, model_fingerprint: str, data_fingerprint: str,
                           feeder: CalibrationFeeder) -> Path:
    """``<cache root>/tensorrt-calibration/<key>.cache``: the scales of one model calibrated on one data set
    (batches fed, batch size and TensorRT version in the key), reused by later builds like the timing cache."""
    import hashlib

    from onnxsmith.build.cache import cache_root

    key = hashlib.sha256("|".join([trt_version, model_fingerprint, data_fingerprint, str(feeder.num_batches),
                                   str(feeder.batch_size), "entropy2"]).encode()).hexdigest()[:32]
    return cache_root() / "tensorrt-calibration" / f"{key}.cache"


def make_entropy_calibrator(trt: Any, feeder: CalibrationFeeder, cache_path: Path) -> Any:
    """A TensorRT 10 ``IInt8EntropyCalibrator2`` that feeds ``feeder``'s batches from GPU buffers.

    ``cache_path`` (see :func:`calibration_cache_path`) is read back on later builds of the same model and data
    (TensorRT skips calibration then) and written, atomically, after calibration. Call ``.free()`` after the build.
    """
    import os
    from onnxsmith.compilers.tensorrt import cuda

    base = trt.IInt8EntropyCalibrator2

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.feeder = feeder
            self.buffers: dict[str, cuda.DeviceBuffer] = {}
            self.batches_fed = 0
            self.error: BaseException | None = None
            self.cache_path = cache_path
            self.cache_reused = False

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is part of each input's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                arrays = self.feeder.next_batch(names)
                if arrays is None:
                    return None
                pointers = []
                for name, array in zip(names, arrays, strict=True):
                    buffer = self.buffers.get(name)
                    if buffer is None or buffer.nbytes < array.nbytes:
                        if buffer is not None:
                            buffer.free()
                        buffer = self.buffers[name] = cuda.DeviceBuffer(array.nbytes)
                    buffer.copy_from_host(array)
                    pointers.append(buffer.ptr)
                self.batches_fed += 1
                return pointers
            except BaseException as exc:  # an exception must not cross into TensorRT's C++ caller
                self.error = exc
                return None

        def read_calibration_cache(self) -> bytes | None:
            try:
                data = cache_path.read_bytes() if cache_path.is_file() else b""
            except OSError:
                data = b""
            self.cache_reused = bool(data)
            return data or None

        def write_calibration_cache(self, cache: Any) -> None:
            try:  # called from C++: must not raise
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(bytes(memoryview(cache)))
                os.replace(tmp, cache_path)
            except OSError:  # an unwritable cache costs a later calibration, not this build
                pass

        def free(self) -> None:
            for buffer in self.buffers.values():
                buffer.free()
            self.buffers.clear()

    return EntropyCalibrator()


def ort_data_reader(feeder: CalibrationFeeder) -> Any:
    """``feeder`` as an ONNX Runtime ``CalibrationDataReader``."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeederReader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(feeder)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

        def rewind(self) -> None:
            self._batches = iter(feeder)

    return FeederReader()
