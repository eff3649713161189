"""TensorRT dynamic shapes without TensorRT: optimization profiles from MIN:OPT:MAX, one profile per live execution
context, ``set_input_shape`` per request. Fake module objects stand in for ``tensorrt`` and the CUDA wrapper and
record the calls onnxsmith makes, checked against the TensorRT 10/11 Python API names."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxsmith.compilers.tensorrt import TensorRTCompiler
from onnxsmith.compilers.tensorrt import engine as eng
from onnxsmith.compilers.tensorrt import runner as trt_runner
from onnxsmith.compilers.tensorrt.options import BuildOptions, profile_copies, profile_shapes
from onnxsmith.errors import DataError, UserInputError
from onnxsmith.model import load_model
from onnxsmith.model.shapes import ShapeRange, parse_shape_overrides
from tests.compilers.test_tensorrt import nvidia_target


def fake_trt() -> Any:
    enum = lambda *names: types.SimpleNamespace(**{n: f"{n}" for n in names})  # noqa: E731
    return types.SimpleNamespace(
        BuilderFlag=enum("TF32", "FP16", "INT8"), MemoryPoolType=enum("WORKSPACE"),
        ProfilingVerbosity=enum("DETAILED", "NONE"), TensorIOMode=enum("INPUT", "OUTPUT"),
        HardwareCompatibilityLevel=enum("AMPERE_PLUS"))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


class FakeProfile(Recorder):
    def set_shape(self, name: str, low: Any, best: Any, high: Any) -> None:
        self.calls.append(("set_shape", name, tuple(low), tuple(best), tuple(high)))


class FakeConfig(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[FakeProfile] = []

    def clear_flag(self, flag: str) -> None:
        self.calls.append(("clear_flag", flag))

    def set_flag(self, flag: str) -> None:
        self.calls.append(("set_flag", flag))

    def add_optimization_profile(self, profile: FakeProfile) -> int:  # returns the profile's index, -1 on error
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeBuilder:
    def __init__(self) -> None:
        self.config = FakeConfig()

    def create_builder_config(self) -> FakeConfig:
        return self.config

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()


def fake_network(*inputs: tuple[str, tuple[int, ...]]) -> Any:
    tensors = [types.SimpleNamespace(name=n, shape=s) for n, s in inputs]
    return types.SimpleNamespace(num_inputs=len(tensors), get_input=lambda i: tensors[i])


def test_profile_from_the_shape_range_every_dim() -> None:
    ranges = {"x": ShapeRange((1, 3, 16, 16), (4, 3, 24, 24), (16, 3, 32, 32)), "ids": ShapeRange((1, 8), (2, 64), (4, 128))}
    shapes = profile_shapes([("x", (-1, 3, -1, -1)), ("ids", (-1, -1)), ("scale", (1, 4))], BuildOptions(), ranges)
    assert shapes == {"x": ((1, 3, 16, 16), (4, 3, 24, 24), (16, 3, 32, 32)), "ids": ((1, 8), (2, 64), (4, 128))}
    with pytest.raises(UserInputError, match="does not fit its shape range"):  # the network's fixed 3 vs a range's 4
        profile_shapes([("x", (-1, 3, 16, 16))], BuildOptions(), {"x": ShapeRange((1, 4, 16, 16), (2, 4, 16, 16),
                                                                                  (4, 4, 16, 16))})


def test_configure_adds_one_identical_profile_per_live_context() -> None:
    trt, builder = fake_trt(), FakeBuilder()
    network = fake_network(("input", (-1, 3, 16, 16)))
    ranges = {"input": ShapeRange((1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16))}
    copies = profile_copies(2)
    config, first = eng.configure(trt, builder, network, BuildOptions(), [], ranges, copies)
    assert copies == 4 and len(config.profiles) == 4 and first is config.profiles[0]
    for profile in config.profiles:
        assert profile.calls == [("set_shape", "input", (1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16))]
    # a static network gets no profile at all
    static = FakeBuilder()
    config, first = eng.configure(trt, static, fake_network(("input", (1, 3, 16, 16))), BuildOptions(), [], ranges, 4)
    assert first is None and config.profiles == []


def test_the_backend_declares_dynamic_shapes_and_the_core_lets_it_through(tmp_path: Path) -> None:
    import onnx

    from tests.models import make_cnn

    path = tmp_path / "cnn.onnx"
    onnx.save_model(make_cnn(batch="N"), str(path))
    model = load_model(path, parse_shape_overrides(["input=1x3x16x16:4x3x16x16:16x3x16x16"]))
    assert TensorRTCompiler().dynamic_shapes(model, nvidia_target())


# ---- the runner -----------------------------------------------------------------------------------------------

class FakeStream:
    count = 0

    def __init__(self) -> None:
        FakeStream.count += 1
        self.handle = 1000 + FakeStream.count
        self.raw = self.handle

    def synchronize(self) -> None:
        pass

    def destroy(self) -> None:
        pass


class FakeBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.ptr = nbytes, id(self)

    def copy_from_host(self, array: np.ndarray, stream: Any = None) -> None:
        self.data = array.copy()

    def copy_to_host(self, array: np.ndarray, stream: Any = None) -> None:
        array[...] = 0.5

    def free(self) -> None:
        pass


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.calls, self.shapes, self.profile = engine, [], {}, None
        self.nvtx_verbosity = "DETAILED"

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.calls.append(("set_optimization_profile_async", index, stream))
        if index in self.engine.in_use or not 0 <= index < self.engine.num_optimization_profiles:
            return False  # TensorRT: a profile may be selected by one live context only
        self.engine.in_use.add(index)
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
        if not all(a <= d <= b for a, d, b in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = self.shapes["x"][0] if "x" in self.shapes else -1
        return self.shapes.get(name, (batch, 2))

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("execute_async_v3", stream))
        return True


class FakeEngine:
    num_io_tensors = 2
    num_optimization_profiles = profile_copies(2)

    def __init__(self) -> None:
        self.in_use: set[int] = set()
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, index: int) -> str:
        return ("x", "y")[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name == "x" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "DataType.FLOAT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 4) if name == "x" else (-1, 2)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return (1, 4), (2, 4), (8, 4)

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[trt_runner.TensorRTRunner, FakeEngine]:
    engine = FakeEngine()
    monkeypatch.setattr(trt_runner, "import_tensorrt", fake_trt)
    monkeypatch.setattr(trt_runner, "deserialize", lambda trt, logger, data: (object(), engine))
    monkeypatch.setattr(trt_runner, "make_logger", lambda trt: None)
    ready = types.SimpleNamespace(value=0)  # cudaSuccess: every request done when queried
    runtime = types.SimpleNamespace(cudaError_t=types.SimpleNamespace(cudaErrorNotReady=object()),
                                    cudaStreamQuery=lambda stream: (ready,))
    monkeypatch.setattr(trt_runner, "cuda", types.SimpleNamespace(Stream=FakeStream, DeviceBuffer=FakeBuffer,
                                                                  set_device=lambda index: None,
                                                                  cudart=lambda: runtime,
                                                                  check=lambda result, call: result[1:]))
    (tmp_path / "model.engine").write_bytes(b"engine")
    return trt_runner.TensorRTRunner(tmp_path / "model.engine", 0, 2), engine


def test_runner_sets_each_request_shape_within_the_profile(fake_runner) -> None:
    runner, engine = fake_runner
    main = engine.contexts[0]
    assert main.calls[0][:2] == ("set_optimization_profile_async", 0)
    for batch in (1, 7, 8, 3):
        out = runner.run({"x": np.ones((batch, 4), np.float32)})
        assert out["y"].shape == (batch, 2)
    assert [c[2] for c in main.calls if c[0] == "set_input_shape"] == [(1, 4), (7, 4), (8, 4), (3, 4)]
    with pytest.raises(DataError, match=r"outside its optimization profile \(1x4 to 8x4\)"):
        runner.run({"x": np.ones((9, 4), np.float32)})


def test_parallel_contexts_and_the_layer_profile_each_get_their_own_profile(fake_runner) -> None:
    runner, engine = fake_runner
    rate, used = runner.parallel_throughput({"x": np.ones((2, 4), np.float32)}, 0.01)
    assert used == 2 and rate > 0
    selected = [c.profile for c in engine.contexts]
    assert selected == [0, 1, 2] and len(set(selected)) == len(selected)
    assert runner._free_profiles == [3]  # kept for the per-layer profile's context
    runner.parallel_throughput({"x": np.ones((2, 4), np.float32)}, 0.01)  # again: the same contexts, no new ones
    assert len(engine.contexts) == 3


def test_batch_options_are_refused_not_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--option max_batch used to be accepted and silently ignored (the batch was fixed at load); now it says
    which option to use instead, before any TensorRT call."""
    import dataclasses

    import onnx

    from onnxsmith.compilers.tensorrt import backend as trt_backend
    from onnxsmith.plugin import CompileRequest
    from onnxsmith.profiles import load_profile
    from tests.models import make_cnn

    monkeypatch.setattr(trt_backend, "_trt", fake_trt)
    path = tmp_path / "cnn.onnx"
    onnx.save_model(make_cnn(batch="N"), str(path))
    request = CompileRequest(model=load_model(path), target=nvidia_target(), precision="fp32",
                             profile=load_profile("quick"), options={"max_batch": 16, "opt_batch": 8})
    with pytest.raises(UserInputError, match=r"--batch 1\.\.16@8"):
        TensorRTCompiler().compile(request, tmp_path / "work")
    ranged = dataclasses.replace(request, model=load_model(path, batch=(1, 4, 16)))
    with pytest.raises(UserInputError, match="the shape range given with --shape/--batch sets"):
        TensorRTCompiler().compile(ranged, tmp_path / "work")
