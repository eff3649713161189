"""Running a TensorRT engine: ``execute_async_v3`` on device buffers, per-layer timing through ``IProfiler``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.tensorrt import cuda
from onnxsmith.compilers.tensorrt.engine import (
    deserialize,
    engine_information,
    import_tensorrt,
    layer_types,
    make_logger,
)

from onnxsmith.compilers.tensorrt.timing import Graph, TimingSettings, measure, parallel_throughput
from onnxsmith.errors import BackendError, DataError
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import LayerTime, Runner

if TYPE_CHECKING:
    import numpy as np

_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
           "BOOL": "bool", "UINT8": "uint8"}


def numpy_dtype(trt_dtype: Any) -> str:
    name = str(trt_dtype).split(".")[-1]
    if name not in _DTYPES:
        raise BackendError(f"TensorRT I/O tensor type {name} has no numpy equivalent here",
                           "onnxsmith feeds and reads engine I/O as numpy arrays",
                           "keep the model's inputs and outputs in float32/float16/int32/int64/bool")
    return _DTYPES[name]


class _Context:
    """One execution context with its own stream and device buffers (one per parallel request).

    ``profile``: the optimization profile it selects (engines with dynamic inputs: each live context its own,
    as TensorRT requires; ``None`` for a static engine). ``host_inputs``: shape tensors, read from host memory."""

    def __init__(self, engine: Any, names: list[str], inputs: set[str], dtypes: dict[str, str],
                 host_inputs: frozenset[str] = frozenset(), profile: int | None = None) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context", "out of GPU memory?")
        self.names, self.inputs, self.dtypes = names, inputs, dtypes
        self.host_inputs = host_inputs
        """Shape-tensor inputs: TensorRT reads their values on the host, so they get host memory."""
        self.stream = cuda.Stream()
        self.buffers: dict[str, cuda.DeviceBuffer] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.host_values: dict[str, np.ndarray] = {}
        self.profile = profile
        if profile is not None:
            if not self.context.set_optimization_profile_async(profile, self.stream.handle):
                raise BackendError("TensorRT could not select an optimization profile",
                                   f"set_optimization_profile_async({profile}) returned False")
            self.stream.synchronize()

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set input shapes, (re)allocate buffers, bind addresses; returns the contiguous host inputs."""
        import numpy as np

        host = {}
        for name in self.names:
            if name not in self.inputs:
                continue
            if name not in feeds:
                raise DataError("input missing for the TensorRT engine", f"no array for input '{name}'")
            array = np.asarray(feeds[name], dtype=np.dtype(self.dtypes[name]), order="C")
            if self.shapes.get(name) != array.shape:
                if not self.context.set_input_shape(name, array.shape):
                    bounds = ""
                    if self.profile is not None:
                        low, _, high = self.context.engine.get_tensor_profile_shape(name, self.profile)
                        bounds = f" ({'x'.join(map(str, low))} to {'x'.join(map(str, high))})"
                    raise DataError(f"input '{name}' does not fit the engine",
                                    f"shape {'x'.join(map(str, array.shape))} is outside its optimization "
                                    f"profile{bounds}", "give a shape inside the range the bundle was compiled for")
                self.shapes[name] = array.shape
            if name in self.host_inputs:
                self.host_values[name] = array  # kept alive: TensorRT reads it at enqueue time
                if not self.context.set_tensor_address(name, array.ctypes.data):
                    raise BackendError("TensorRT rejected a host buffer", f"shape tensor '{name}'")
            else:
                host[name] = array
        for name in self.names:
            if name in self.host_inputs:
                continue
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError("TensorRT could not infer an output shape", f"tensor '{name}' has shape {shape}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(self.dtypes[name]).itemsize
            buffer = self.buffers.get(name)
            if buffer is None or buffer.nbytes < nbytes:
                if buffer is not None:
                    buffer.free()
                buffer = self.buffers[name] = cuda.DeviceBuffer(nbytes)
            self.shapes[name] = shape
            if not self.context.set_tensor_address(name, buffer.ptr):
                raise BackendError("TensorRT rejected a device buffer", f"tensor '{name}'")
        return host

    def upload(self, host: Mapping[str, np.ndarray]) -> None:
        for name, array in host.items():
            self.buffers[name].copy_from_host(array, self.stream)

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise BackendError("TensorRT inference failed", "execute_async_v3 returned False",
                               "run with --debug; TensorRT's log says why")

    def download(self) -> dict[str, np.ndarray]:
        import numpy as np

        outputs = {}
        for name in self.names:
            if name in self.inputs:
                continue
            array = np.empty(self.shapes[name], dtype=np.dtype(self.dtypes[name]))
            self.buffers[name].copy_to_host(array, self.stream)
            outputs[name] = array
        return outputs

    def close(self) -> None:
        self.stream.synchronize()
        self.context = None
        self.stream.destroy()
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()


def shape_tensor_inputs(engine: Any, names: list[str], inputs: set[str]) -> frozenset[str]:
    """Inputs whose values TensorRT needs on the host to infer shapes (``is_shape_inference_io``)."""
    check = getattr(engine, "is_shape_inference_io", None)
    if check is None:
        return frozenset()
    return frozenset(n for n in names if n in inputs and check(n))


class TensorRTRunner(Runner):
    """A deserialized engine on one GPU. ``run`` copies in and out; ``bind`` keeps data on the GPU (and launches
    a captured CUDA graph unless ``timing.cuda_graph`` is off)."""

    def __init__(self, engine_path: Path, device_id: int = 0, parallel_requests: int = 2,
                 timing: TimingSettings | None = None) -> None:
        self._timing = timing or TimingSettings()
        self._graph: Any = None
        self._trt = trt = import_tensorrt()
        cuda.set_device(device_id)
        self._logger = make_logger(trt)
        self._runtime, self._engine = deserialize(trt, self._logger, engine_path.read_bytes())
        self._parallel = max(2, parallel_requests)
        engine = self._engine
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = {n for n in self._names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self._dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n)) for n in self._names}
        self._host_inputs = shape_tensor_inputs(engine, self._names, self._inputs)

        def spec(name: str) -> TensorSpec:
            dims = tuple(int(d) if int(d) >= 0 else None for d in engine.get_tensor_shape(name))
            return TensorSpec(name, self._dtypes[name], dims)

        self.inputs = tuple(spec(n) for n in self._names if n in self._inputs)
        self.outputs = tuple(spec(n) for n in self._names if n not in self._inputs)
        dynamic = any(d is None for s in self.inputs for d in s.shape)
        # A dynamic engine holds identical profiles, one per context alive at once (profile_copies at build).
        self._free_profiles = list(range(int(engine.num_optimization_profiles))) if dynamic else None
        self._main = self._new_context(quiet=True)
        self._extra: list[_Context] = []

    def _take_profile(self) -> int | None:
        if self._free_profiles is None:
            return None
        if not self._free_profiles:
            raise BackendError("no free TensorRT optimization profile for another execution context",
                               f"the engine holds {self._engine.num_optimization_profiles} and each live context "
                               "needs its own", "compile the bundle again with this onnxsmith")
        return self._free_profiles.pop(0)

    def _release(self, ctx: _Context) -> None:
        ctx.close()
        if ctx.profile is not None and self._free_profiles is not None:
            self._free_profiles.append(ctx.profile)

    def _new_context(self, quiet: bool) -> _Context:
        profile = self._take_profile()
        try:
            ctx = _Context(self._engine, self._names, self._inputs, self._dtypes, self._host_inputs,
                           profile=profile)
        except BaseException:
            if profile is not None and self._free_profiles is not None:
                self._free_profiles.insert(0, profile)
            raise
        if quiet and hasattr(ctx.context, "nvtx_verbosity"):
            # Engines are built DETAILED for the inspector; detailed NVTX ranges would slow enqueueV3 down.
            ctx.context.nvtx_verbosity = self._trt.ProfilingVerbosity.NONE
        return ctx

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._graph is not None:
            self._graph.destroy()
            self._graph = None
        for ctx in [self._main, *self._extra]:
            if ctx is not None:
                ctx.close()
        self._main, self._extra = None, []  # type: ignore[assignment]
        self._engine = self._runtime = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx = self._main
        host = ctx.prepare(feeds)
        ctx.upload(host)
        ctx.enqueue()
        outputs = ctx.download()
        ctx.stream.synchronize()
        return outputs

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        ctx = self._main
        ctx.upload(ctx.prepare(feeds))
        ctx.stream.synchronize()
        launch = ctx.enqueue
        if self._timing.cuda_graph:
            if self._graph is not None:
                self._graph.destroy()
                self._graph = None
            try:
                self._graph = Graph(cuda.cudart(), ctx.stream.raw, ctx.enqueue, cuda.check)
                launch = self._graph.launch
            except Exception:  # as trtexec: a capture that fails means plain enqueues
                ctx.stream.synchronize()

        def call() -> None:
            launch()
            ctx.stream.synchronize()

        return call

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        """Inferences/s with several execution contexts on independent streams, each re-enqueued as soon as its
        own request finished (no lock-step)."""
        available = self._parallel if self._free_profiles is None else \
            min(self._parallel, len(self._extra) + len(self._free_profiles) - 1)  # one kept for layer_profile
        while len(self._extra) < available:
            self._extra.append(self._new_context(quiet=True))
        contexts = self._extra[: max(1, available)] or [self._main]
        for ctx in contexts:
            ctx.upload(ctx.prepare(feeds))
            ctx.stream.synchronize()
        return parallel_throughput(contexts, seconds, cuda.cudart(), cuda.check)

    def vendor_timing(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """trtexec's measurement (:mod:`onnxsmith.compilers.tensorrt.timing`) on the main context."""
        ctx = self._main
        host = ctx.prepare(feeds)
        result = measure(ctx, host, self._timing, cuda.cudart(), cuda.check)
        if self._graph is not None:  # the main context's addresses were re-bound: recapture on the next bind
            self._graph.destroy()
            self._graph = None
        return result

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        """Mean per-layer GPU time over 10 runs, from TensorRT's ``IProfiler`` on a separate context."""
        trt = self._trt
        totals: dict[str, float] = {}

        class Profiler(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms

        ctx = self._new_context(quiet=False)
        try:
            ctx.upload(ctx.prepare(feeds))
            ctx.enqueue()  # warm-up, not profiled
            ctx.stream.synchronize()
            profiler = Profiler()
            ctx.context.profiler = profiler
            ctx.context.enqueue_emits_profile = False
            runs = 10
            for _ in range(runs):
                ctx.enqueue()
                ctx.stream.synchronize()
                ctx.context.report_to_profiler()
        finally:
            self._release(ctx)
        info = engine_information(trt, self._engine)
        kinds = layer_types(info)
        from onnxsmith.compilers.tensorrt.precision import layer_precision

        precisions = {str(layer["Name"]): layer_precision(layer) for layer in info.get("Layers", [])
                      if isinstance(layer, dict) and "Name" in layer}
        return sorted((LayerTime(name, kinds.get(name, ("", ""))[0], ms / runs, kinds.get(name, ("", ""))[1],
                                 precisions.get(name, "")) for name, ms in totals.items()), key=lambda t: -t.time_ms)
