"""TensorRT int8 calibration: only the batched inputs are split along axis 0; an input without a batch dim goes
whole into every batch (no TensorRT, no GPU: the fake tensorrt and cuda-python objects of test_tensorrt)."""

from __future__ import annotations

import ctypes
import types
from pathlib import Path

import numpy as np
import pytest

from onnxsmith.compilers.tensorrt.calibrator import CalibrationFeeder, make_entropy_calibrator
from onnxsmith.data.dataset import Dataset, check_against_model
from onnxsmith.errors import DataError
from onnxsmith.model import TensorSpec
from tests.compilers.test_tensorrt import _Err, _fake_cuda_modules, _fake_trt

SPECS = (TensorSpec("image", "float32", (2, 3, 4, 4)), TensorSpec("mask", "float32", (2, 4)),
         TensorSpec("table", "float32", (5, 4)), TensorSpec("temperature", "float32", ()))
KNOWN = ("image",)  # only image's first dim was dynamic in the model: mask's 2 is a fixed dim, not the batch


def _data(samples: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((samples, 3, 4, 4)).astype(np.float32),
            "mask": np.arange(8.0, dtype=np.float32).reshape(2, 4),
            "table": rng.standard_normal((5, 4)).astype(np.float32), "temperature": np.float32(0.5)}


def test_inputs_without_a_batch_dim_go_whole_into_every_batch() -> None:
    arrays = _data()
    whole, batch = check_against_model(arrays, SPECS, "calibration data", KNOWN)  # what open_dataset records
    assert set(whole) == {"mask", "table", "temperature"} and batch == 2
    for dataset, known in ((Dataset(arrays, whole=whole, batch=batch), None), (Dataset(arrays), KNOWN)):
        feeder = CalibrationFeeder(dataset, SPECS, known_batch=known)
        # was: every array split on axis 0 ("temperature" failed, "table" and "mask" were cut into 2-row slices)
        assert (feeder.batch_size, feeder.num_batches, feeder.dropped_samples) == (2, 3, 1)
        batches = list(feeder)
        assert len(batches) == 3
        for i, feed in enumerate(batches):
            np.testing.assert_array_equal(feed["image"], arrays["image"][2 * i:2 * i + 2])
            np.testing.assert_array_equal(feed["mask"], arrays["mask"])
            np.testing.assert_array_equal(feed["table"], arrays["table"])
            assert feed["temperature"].shape == () and float(feed["temperature"]) == 0.5
    one = Dataset({k: v[:2] if k == "image" else v for k, v in arrays.items()}, whole=tuple(arrays), batch=1)
    assert CalibrationFeeder(one, SPECS).num_batches == 1  # one feed: every array as it stands, once


def test_an_unbatched_input_of_the_wrong_shape_is_one_line() -> None:
    arrays = _data() | {"table": np.zeros((7, 5, 4), np.float32)}  # samples given for an input with no batch dim
    with pytest.raises(DataError, match="'table' has shape 7x5x4, the input takes 5x4 and has no batch dimension"):
        CalibrationFeeder(Dataset(arrays), SPECS, known_batch=KNOWN)
    two = (TensorSpec("a", "float32", (2, 3)), TensorSpec("b", "float32", (2, 3)))
    with pytest.raises(DataError, match="different sample counts"):
        CalibrationFeeder(Dataset({"a": np.zeros((4, 3)), "b": np.zeros((6, 3))}), two)


def test_entropy_calibrator_copies_whole_inputs_unsplit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    memory: dict[int, bytearray] = {}

    def malloc(nbytes: int) -> tuple[_Err, int]:
        buffer = bytearray(nbytes)
        address = ctypes.addressof((ctypes.c_char * nbytes).from_buffer(buffer))
        memory[address] = buffer
        return _Err(), address

    def memcpy(dst: int, src: int, nbytes: int, kind: object) -> tuple[_Err]:
        ctypes.memmove(dst, src, nbytes)
        return (_Err(),)

    runtime = types.SimpleNamespace(cudaMalloc=malloc, cudaMemcpy=memcpy, cudaFree=lambda ptr: (_Err(),),
                                    cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1))
    _fake_cuda_modules(monkeypatch, runtime)

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    arrays = _data()
    feeder = CalibrationFeeder(Dataset(arrays), SPECS, known_batch=KNOWN)
    calibrator = make_entropy_calibrator(_fake_trt(IInt8EntropyCalibrator2=IInt8EntropyCalibrator2), feeder,
                                         tmp_path / "calibration.cache")
    names = ["temperature", "table", "image", "mask"]
    fed = 0
    while (pointers := calibrator.get_batch(names)) is not None:
        got = {n: np.frombuffer(memory[p], np.float32)[:feeder.batch(0)[n].size] for n, p in zip(names, pointers)}
        np.testing.assert_array_equal(got["image"], arrays["image"][2 * fed:2 * fed + 2].ravel())
        np.testing.assert_array_equal(got["table"], arrays["table"].ravel())
        np.testing.assert_array_equal(got["mask"], arrays["mask"].ravel())
        assert got["temperature"].tolist() == [0.5]
        fed += 1
    assert calibrator.error is None and fed == calibrator.batches_fed == 3
    calibrator.free()
