"""A TVM artifact loaded into the Relax VM on this machine (CPU or CUDA)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, DataError
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import LayerTime, Runner

from onnxsmith.compilers.tvm.common import tvm, vendor_why

if TYPE_CHECKING:
    import numpy as np

BOUND = "onnxsmith_bound_main"
"""Name under which ``bind`` saves ``main`` with its arguments in the VM (no argument conversion per call)."""


def specs(io: Mapping[str, Any], key: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_json(s) for s in io[key])


def outputs_to_numpy(value: Any, names: list[str]) -> dict[str, np.ndarray]:
    """The VM's return value (a tensor or a tuple of them) as arrays keyed by output name."""
    values = list(value) if isinstance(value, (tuple, list)) or type(value).__name__ == "Array" else [value]
    if len(values) != len(names):
        raise BackendError("the TVM artifact returned an unexpected number of outputs",
                           f"{len(values)} returned, the model has {len(names)} ({', '.join(names)})")
    return {name: v.numpy() for name, v in zip(names, values)}


def check_feeds(feeds: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...]) -> None:
    for spec in inputs:
        if spec.name not in feeds:
            raise DataError(f"missing input '{spec.name}'", f"the model takes {', '.join(s.name for s in inputs)}")
        shape = tuple(feeds[spec.name].shape)
        if len(shape) != len(spec.shape) or any(isinstance(want, int) and want != got
                                                for want, got in zip(spec.shape, shape)):  # symbols: any size
            raise DataError(f"input '{spec.name}' has shape {shape}", f"the artifact was compiled for "
                            f"{spec.shape_text()}", "compile again with --shape, or feed the compiled shape")


def device_tensors(feeds: Mapping[str, np.ndarray], inputs: tuple[TensorSpec, ...], device: Any) -> list[Any]:
    """The checked feeds as TVM tensors on ``device`` (local or an RPC session's), in the order of ``inputs``."""
    import numpy as np

    check_feeds(feeds, inputs)
    module = tvm()
    return [module.runtime.tensor(np.asarray(feeds[s.name], order="C"), device) for s in inputs]


class TVMRunner(Runner):
    """The Relax VM over ``model.so``; ``bind`` saves ``main`` with device tensors so a call does no conversion."""

    def __init__(self, library: Path, io: Mapping[str, Any], threads: int = 0, tuned: str = "untuned") -> None:
        if threads > 0:  # read when TVM's thread pool starts, i.e. at the first parallel kernel
            os.environ["TVM_NUM_THREADS"] = str(threads)
        module = tvm()
        self._io = io
        self._cuda = io.get("device") == "cuda"
        if self._cuda:
            from onnxsmith.compilers.tvm.cuda import load_time_compiler

            load_time_compiler()
        self.device = module.cuda(0) if self._cuda else module.cpu(0)
        try:
            self._lib = module.runtime.load_module(str(library))
            self.vm = module.relax.VirtualMachine(self._lib, self.device)
        except Exception as exc:
            raise BackendError(f"TVM could not load '{library.name}'", vendor_why(exc),
                               "compile the bundle again with this TVM version") from exc
        self.inputs = specs(io, "model_inputs")
        self.outputs = specs(io, "outputs")
        self._args = specs(io, "inputs")
        self._names = [s.name for s in self.outputs]
        self._tuned = tuned
        self.device_name = self._describe()
        self.notes: tuple[str, ...] = ()

    def _describe(self) -> str:
        if self._cuda:
            return f"{self.device.device_name} (TVM cuda {self._io['target'].get('arch', '')})"
        return f"CPU (TVM llvm {self._io['target'].get('mcpu', 'generic')})"

    def __enter__(self) -> TVMRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.vm = None
        self._lib = None

    def _tensors(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        return device_tensors(feeds, self._args, self.device)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = self._tensors(feeds)
        try:
            result = self.vm["main"](*tensors)
        except Exception as exc:
            raise BackendError("TVM inference failed", vendor_why(exc)) from exc
        return outputs_to_numpy(result, self._names)

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        tensors = self._tensors(feeds)
        self.vm.save_function("main", BOUND, *tensors)
        call = self.vm[BOUND]
        if not self._cuda:
            return call  # type: ignore[no-any-return]
        sync = self.device.sync

        def call_and_wait() -> None:
            call()
            sync()

        return call_and_wait

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        return None  # one VM already uses TVM's thread pool (CPU) or the whole GPU; no request-level parallelism

    def layer_profile(self, feeds: Mapping[str, np.ndarray], repeats: int = 3) -> list[LayerTime] | None:
        """Time every VM call (kernels and VM builtins) through the VM's instrument hook."""
        tensors = self._tensors(feeds)
        self.vm["main"](*tensors)  # warm up: lazy initialisation, allocator pools
        totals: dict[str, float] = {}
        started: dict[str, float] = {}
        clock, sync = time.perf_counter, (self.device.sync if self._cuda else None)

        def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
            if sync is not None:
                sync()
            if before:
                started[symbol] = clock()
            elif symbol in started:
                totals[symbol] = totals.get(symbol, 0.0) + clock() - started.pop(symbol)
            return 0  # VMInstrumentReturnKind.NO_OP

        self.vm.set_instrument(instrument)
        try:
            for _ in range(repeats):
                self.vm["main"](*tensors)
        finally:
            self.vm.set_instrument(None)
        schedule = "dlight" if self._cuda and self._tuned == "untuned" else self._tuned
        layers = [LayerTime(name=symbol, op_type=kernel_ops(symbol), time_ms=seconds * 1000 / repeats,
                            exec_type="vm builtin" if symbol.startswith("vm.builtin") else
                            f"{'cuda' if self._cuda else 'llvm'} {schedule}")
                  for symbol, seconds in totals.items()]
        return sorted(layers, key=lambda layer: -layer.time_ms)


def kernel_ops(symbol: str) -> str:
    """``fused_conv2d1_add1_relu1`` -> ``conv2d_add_relu`` (TVM numbers repeated kernels); builtins keep their name."""
    if symbol.startswith("vm.builtin."):
        return symbol[len("vm.builtin."):]
    return re.sub(r"(?<=[a-z])\d+(?=_|$)", "", symbol.removeprefix("fused_")) or symbol
