"""The TVM RPC path a hostile or hung peer meets: the emulated (qemu-aarch64) server refuses a client without its
per-session key, and the client gives up on a server that stops answering with one line, not a hang."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("tvm", reason="TVM is not installed")

from onnxsmith.compilers.tvm import remote  # noqa: E402
from onnxsmith.errors import BackendError  # noqa: E402

RPC_MAGIC = 0xFF271
EMPTY_IO = {"model_inputs": [], "outputs": [], "inputs": [], "arch": "x86_64", "device": "cpu"}


@contextmanager
def silent_server(handshake: bool) -> Iterator[str]:
    """A TCP server that accepts and then never answers (after a well-formed TVM handshake when ``handshake``)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            if handshake:  # magic, key length, key; answer success and a server key, then nothing more
                conn.settimeout(10)
                head = conn.recv(8, socket.MSG_WAITALL)
                if len(head) < 8:
                    continue  # the client's reachability probe: connected and closed
                conn.recv(struct.unpack("<ii", head)[1], socket.MSG_WAITALL)
                key = b"server:hung"
                conn.sendall(struct.pack("<ii", RPC_MAGIC, len(key)) + key)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


@contextmanager
def stalling_proxy(upstream: str, after: int) -> Iterator[str]:
    """A TCP proxy to a real TVM RPC server that stops forwarding once the client has sent ``after`` bytes: the
    session opens, then the device "hangs" mid-call."""
    listener = socket.create_server(("127.0.0.1", 0))
    host, port = remote.parse_address(upstream)
    held: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket, budget: list[int] | None) -> None:
        try:
            while data := src.recv(65536):
                if budget is not None:
                    budget[0] -= len(data)
                    if budget[0] < 0:
                        return  # swallow the rest: the far end never sees the call
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the end on (the client's reachability probe closes at once)
        except OSError:
            pass

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            up = socket.create_connection((host, port))
            held.extend([conn, up])
            threading.Thread(target=pump, args=(conn, up, [after]), daemon=True).start()
            threading.Thread(target=pump, args=(up, conn, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _expect_one_line_timeout(address: str, library: Path) -> str:
    started = time.monotonic()
    with pytest.raises(BackendError, match="did not answer") as info:
        remote.RemoteRunner(library, EMPTY_IO, address)
    assert time.monotonic() - started < 30
    message = info.value.one_line()
    assert "\n" not in message and address in message and remote.TIMEOUT_ENV in message
    assert info.value.exit_code == 4
    return message


@pytest.mark.parametrize("handshake", [False, True], ids=["no-handshake", "no-session"])
def test_a_server_that_never_answers_gives_one_line_not_a_hang(handshake: bool, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(remote.TIMEOUT_ENV, "2")
    library = tmp_path / "lib.so"
    library.write_bytes(b"\0" * 4096)
    with silent_server(handshake) as address:
        assert "the connection" in _expect_one_line_timeout(address, library)


def test_a_device_that_hangs_mid_session_gives_one_line_not_a_hang(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tvm import rpc

    monkeypatch.setenv(remote.TIMEOUT_ENV, "2")
    library = tmp_path / "lib.so"
    library.write_bytes(b"\0" * 100_000)  # the upload is far past the session's opening messages
    server = rpc.Server(host="127.0.0.1", port=9400, port_end=9500, silent=True)
    try:
        with stalling_proxy(f"127.0.0.1:{server.port}", after=20_000) as address:
            assert "the upload of" in _expect_one_line_timeout(address, library)
    finally:
        server.terminate()


def test_hints_never_suggest_all_interfaces_without_saying_what_it_exposes() -> None:
    if "0.0.0.0" in remote.SERVER_HINT:
        assert "trusted network" in remote.SERVER_HINT and "run code" in remote.SERVER_HINT
    assert "--key" in remote.SERVER_HINT


needs_emulator = pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc")
                                    is None, reason="qemu-user and gcc-aarch64-linux-gnu are not installed")


@needs_emulator
def test_the_emulated_rpc_server_refuses_a_client_without_its_key() -> None:
    from tvm import rpc

    from onnxsmith.compilers.tvm import emulate

    if emulate.missing():
        pytest.skip(emulate.missing())
    with emulate.emulated_server() as address:
        host, port = remote.parse_address(address)
        key = remote.rpc_key(address)
        assert len(key) >= 32
        # the key is on no command line another user can read in /proc
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    assert key.encode() not in (entry / "cmdline").read_bytes()
                except OSError:
                    continue
        # a raw handshake with a wrong key: RPC_CODE_MISMATCH, then the server closes the connection
        with socket.create_connection((host, port), timeout=30) as sock:
            wrong = b"client:" + b"0" * len(key)
            sock.sendall(struct.pack("<ii", RPC_MAGIC, len(wrong)) + wrong)
            assert struct.unpack("<i", sock.recv(4, socket.MSG_WAITALL))[0] == RPC_MAGIC + 2
            assert sock.recv(16) == b""
        for bad in ("", "wrong", key[:-1], key + "x"):
            with pytest.raises(Exception, match="matches key"):
                rpc.connect(host, port, key=bad)
        session = rpc.connect(host, port, key=key)  # with the key, the session opens
        assert session.cpu(0) is not None
    assert remote.rpc_key(address) == os.environ.get(remote.KEY_ENV, "")  # forgotten once the server stopped
