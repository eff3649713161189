"""Run a TVM artifact on a device through TVM RPC (``onnxsmith profile --rpc HOST:PORT``).

On the device: ``python -m tvm.exec.rpc_server --host DEVICE_IP --port 9090 --key SECRET`` (pip install apache-tvm
there), with ``ONNXSMITH_TVM_RPC_KEY=SECRET`` here; or, on a device without Python, the C server in
``native/rpc_server.c`` (see :mod:`onnxsmith.compilers.tvm.emulate`, which gives its server a random key per
session). A TVM RPC server runs whatever library a client uploads: anyone who reaches its port (and knows the key,
which travels in clear text) can run code on the device, so serve on a trusted network only.

Every call has a deadline (``$ONNXSMITH_TVM_RPC_TIMEOUT`` seconds, default 300; 20 s to connect): a device that
stops answering ends the session with a one-line error (exit 4) instead of a hang.
The library is uploaded to the server's work directory and loaded there; inputs are copied once by ``bind`` and
each timed call is one RPC round trip, so ``device_latencies_ms`` (timed on the device) is the figure to trust
for small models on a slow network.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
SERVER_HINT = ("start one on the device: python -m tvm.exec.rpc_server --host DEVICE_IP --port 9090 --key SECRET, "
               "and set ONNXSMITH_TVM_RPC_KEY=SECRET here; --host 0.0.0.0 only on a trusted network: anyone who "
               "reaches the port can run code on the device")
KEYS_ENV = "ONNXSMITH_TVM_RPC_KEYS"  # {"HOST:PORT": key} of the emulated servers this process (tree) started
KEY_ENV = "ONNXSMITH_TVM_RPC_KEY"
TIMEOUT_ENV = "ONNXSMITH_TVM_RPC_TIMEOUT"
CONNECT_TIMEOUT_S = 20.0


def register_key(address: str, key: str | None) -> None:
    """Remember (or, with None, forget) the key of the server at ``address`` for this process and its children
    (in the environment, which only this user can read)."""
    keys = _keys()
    if key is None:
        keys.pop(address, None)
    else:
        keys[address] = key
    if keys:
        os.environ[KEYS_ENV] = json.dumps(keys)
    else:
        os.environ.pop(KEYS_ENV, None)


def _keys() -> dict[str, str]:
    try:
        keys = json.loads(os.environ.get(KEYS_ENV) or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in keys.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(keys, dict) else {}


def rpc_key(address: str) -> str:
    """The key to present to the server at ``address``: an emulated server's own, else ``$ONNXSMITH_TVM_RPC_KEY``."""
    return _keys().get(address) or os.environ.get(KEY_ENV, "")


def call_timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV) or 300)
    except ValueError:
        raise UserInputError(f"invalid ${TIMEOUT_ENV} '{os.environ.get(TIMEOUT_ENV)}'", "expected seconds",
                             f"for example {TIMEOUT_ENV}=600") from None
    if not 0 < value < 1e7:
        raise UserInputError(f"invalid ${TIMEOUT_ENV} '{value:g}'", "expected seconds above 0",
                             f"for example {TIMEOUT_ENV}=600")
    return value


def _socket_fds() -> set[int]:
    fds = set()
    try:
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    fds.add(int(name))
            except OSError:
                continue
    except OSError:
        pass
    return fds


class _Watchdog:
    """Deadlines for blocking RPC calls: when one passes, the session's sockets (those opened since ``start``)
    are shut down, so the call blocked in TVM's C++ returns with an error instead of waiting for ever."""

    def __init__(self) -> None:
        self._before = _socket_fds()
        self._deadline: float | None = None
        self.expired: str | None = None
        self._stop = threading.Event()
        self._what = ""
        self._thread = threading.Thread(target=self._watch, daemon=True, name="onnxsmith-rpc-watchdog")
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline and self.expired is None:
                self.expired = self._what
                for fd in _socket_fds() - self._before:
                    try:
                        with socket.socket(fileno=os.dup(fd)) as sock:
                            sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        continue

    @contextmanager
    def deadline(self, what: str, seconds: float) -> Iterator[None]:
        self._what, self._deadline = what, time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def arm(self, what: str, seconds: float) -> None:
        self._what, self._deadline = what, time.monotonic() + seconds

    def disarm(self) -> None:
        self._deadline = None

    def stop(self) -> None:
        self._stop.set()


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
        self._where = f"{host}:{port}"
        self._timeout = call_timeout()
        self._connect_s = min(CONNECT_TIMEOUT_S, self._timeout)
        try:  # a host that does not answer at all: refused in CONNECT_TIMEOUT_S, before TVM's blocking connect
            socket.create_connection((host, port), timeout=self._connect_s).close()
        except OSError as exc:
            raise BackendError(f"cannot reach the TVM RPC server at {host}:{port}", exc.strerror or str(exc),
                               SERVER_HINT) from exc
        self._watchdog = _Watchdog()
        try:
            with self._watchdog.deadline("the connection", self._connect_s):
                self.session = rpc.connect(host, port, key=rpc_key(address), session_timeout=0)
        except Exception as exc:
            self._watchdog.stop()
            if self._watchdog.expired:
                raise self._expired() from exc
            why = vendor_why(exc)
            hint = (f"set {KEY_ENV} to the server's --key" if "mismatch" in why.lower() or "key" in why.lower()
                    else SERVER_HINT)
            raise BackendError(f"the TVM RPC server at {host}:{port} refused the connection", why, hint) from exc
        cuda = io.get("device") == "cuda"
        try:
            with self._watchdog.deadline(f"the upload of {LIBRARY}", self._timeout):
                self.session.upload(str(library), LIBRARY)
                self._lib = self.session.load_module(LIBRARY)
                self.device = self.session.cuda(0) if cuda else self.session.cpu(0)
                self.vm = module.relax.VirtualMachine(self._lib, self.device)
        except Exception as exc:
            self._watchdog.stop()
            if self._watchdog.expired:
                raise self._expired() from exc
            raise BackendError(f"the RPC server at {host}:{port} could not load {LIBRARY}", vendor_why(exc),
                               f"the library is for {io.get('arch')} ({io.get('device')}): is the server that device, "
                               "with the same TVM version?") from exc
        self.device_name = f"{io.get('arch')} {io.get('device')} via TVM RPC at {host}:{port}"
        self.notes = ("timed over RPC: each call includes one network round trip",)

    def __enter__(self) -> RemoteRunner:
        return self

    def _expired(self) -> BackendError:
        return BackendError(f"the TVM RPC server at {self._where} did not answer {self._watchdog.expired} within "
                            f"{self._timeout if self._watchdog.expired != 'the connection' else self._connect_s:g} s",
                            "the session was closed", f"check the device; a slower one needs a longer {TIMEOUT_ENV}")

    def __exit__(self, *exc: object) -> None:
        # Remote objects hold the session; dropping them all closes the connection (and the server's session).
        self._watchdog.stop()
        self.vm = None
        self._lib = None
        self.device = None
        self.session = None

    @contextmanager
    def _call(self, what: str, seconds: float | None = None) -> Iterator[None]:
        """One RPC call under its deadline; an expired one is a one-line BackendError."""
        if self._watchdog.expired:
            raise self._expired()
        try:
            with self._watchdog.deadline(what, seconds or self._timeout):
                yield
        except BackendError:
            raise
        except Exception as exc:
            if self._watchdog.expired:
                raise self._expired() from exc
            raise BackendError("TVM inference over RPC failed", vendor_why(exc)) from exc

    def _set_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        with self._call("setting the inputs"):
            tensors = device_tensors(feeds, self._args, self.device)
            self.vm.set_input("main", *tensors)  # the stateful API works over RPC for tuple outputs too

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._set_inputs(feeds)
        with self._call("a run"):
            self.vm.invoke_stateful("main")
            return outputs_to_numpy(self.vm.get_outputs("main"), self._names)

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        self._set_inputs(feeds)
        invoke = self.vm.module["invoke_stateful"]
        watchdog, timeout = self._watchdog, self._timeout

        def call() -> None:  # timed: two attribute writes around the call, no thread per call
            watchdog.arm("a timed run", timeout)
            try:
                invoke("main")
            except Exception as exc:
                if watchdog.expired:
                    raise self._expired() from exc
                raise
            finally:
                watchdog.disarm()

        return call

    def device_latencies_ms(self, feeds: Mapping[str, np.ndarray], iterations: int = 10) -> list[float]:
        """Latencies timed on the device itself (TVM's time evaluator), without the RPC round trip."""
        self._set_inputs(feeds)
        with self._call("the device timer", self._timeout * max(1, iterations)):
            timer = self.vm.module.time_evaluator("invoke_stateful", self.device, number=1, repeat=iterations)
            return [float(t) * 1000 for t in timer("main").results]

    def parallel_throughput(self, feeds: Mapping[str, np.ndarray], seconds: float) -> tuple[float, int] | None:
        return None

    def layer_profile(self, feeds: Mapping[str, np.ndarray]) -> list[LayerTime] | None:
        return None  # the VM's instrument hook is a Python callback: it cannot run on the server
