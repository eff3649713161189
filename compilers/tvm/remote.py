"""Run a TVM artifact on a device through TVM RPC (``onnxsmith profile --rpc HOST:PORT``).

On the device: ``python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`` (pip install apache-tvm there), or, on
a device without Python, the C server in ``native/rpc_server.c`` (see :mod:`onnxsmith.compilers.tvm.emulate`).
The library is uploaded to the server's work directory and loaded there; inputs are copied once by ``bind`` and
each timed call is one RPC round trip, so ``device_latencies_ms`` (timed on the device) is the figure to trust
for small models on a slow network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, UserInputError
from onnxsmith.plugin import Runner

from onnxsmith.compilers.tvm.common import LIBRARY, tvm, vendor_why
from onnxsmith.compilers.tvm.runner import device_tensors, outputs_to_numpy, specs

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.plugin import LayerTime

_ADDRESS = re.compile(r"^\[?([A-Za-z0-9.\-:]+?)\]?:(\d{1,5})$")
SERVER_HINT = "start one on the device: python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090"


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port)."""
    match = _ADDRESS.match(address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise UserInputError(f"invalid --rpc address '{address}'", "expected HOST:PORT",
                             "for example --rpc 192.168.1.20:9090")
    return match.group(1), int(match.group(2))


class RemoteRunner(Runner):
    """The Relax VM on an RPC server; inputs go over once in ``bind``, outputs come back in ``run``."""

    def __init__(self, library: Path, io: Mapping[str, Any], address: str) -> None:
        host, port = parse_address(address)
        module = tvm()
        from tvm import rpc

        self._io = io
        self.inputs = specs(io, "model_inputs")
        self.outputs = specs(io, "outputs")
        self._args = specs(io, "inputs")
        self._names = [s.name for s in self.outputs]
        try:
            self.session = rpc.connect(host, port, session_timeout=0)
        except Exception as exc:
            raise BackendError(f"cannot reach the TVM RPC server at {host}:{port}", vendor_why(exc),
                               SERVER_HINT) from exc
        cuda = io.get("device") == "cuda"
        try:
            self.session.upload(str(library), LIBRARY)
            self._lib = self.session.load_module(LIBRARY)
            self.device = self.session.cuda(0) if cuda else self.session.cpu(0)
            self.vm = module.relax.VirtualMachine(self._lib, self.device)
        except Exception as exc:
            raise BackendError(f"the RPC server at {host}:{port} could not load {LIBRARY}", vendor_why(exc),
                               f"the library is for {io.get('arch')} ({io.get('device')}): is the server that device, "
                               "with the same TVM version?") from exc
        self.device_name = f"{io.get('arch')} {io.get('device')} via TVM RPC at {host}:{port}"
        self.notes = ("timed over RPC: each call includes one network round trip",)

    def __enter__(self) -> RemoteRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        # Remote objects hold the session; dropping them all closes the connection (and the server's session).
        self.vm = None
        self._lib = None
        self.device = None
        self.session = None

    def _set_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        tensors = device_tensors(feeds, self._args, self.device)
        self.vm.set_input("main", *tensors)  # the stateful API works over RPC for tuple outputs too

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            self._set_inputs(feeds)
            self.vm.invoke_stateful("main")
            return outputs_to_numpy(self.vm.get_outputs("main"), self._names)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError("TVM inference over RPC failed", vendor_why(exc)) from exc

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        self._set_inputs(feeds)
        invoke = self.vm.module["invoke_stateful"]

        def call() -> None:
            invoke("main")

        return call

    def device_latencies_ms(self, feeds: Mapping[str, np.ndarray], iterations: int = 10) -> list[float]:
        """Latencies timed on the device itself (TVM's time evaluator), without the RPC round trip."""
        self._set_inputs(feeds)
        timer = self.vm.module.time_evaluator("invoke_stateful", self.device, number=1, repeat=iterations)
        return [float(t) * 1000 for t in timer("main").results]

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        return None

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        return None  # the VM's instrument hook is a Python callback: it cannot run on the server
