"""An aarch64 TVM RPC server under qemu-aarch64: run cross-compiled artifacts without the device.

It needs ``qemu-user`` and ``gcc-aarch64-linux-gnu`` (Debian), and the aarch64 TVM runtime libraries, taken from
the aarch64 wheels of apache-tvm and apache-tvm-ffi (``make install`` downloads them into
``.venv/aarch64-wheels``; ``$ONNXSMITH_TVM_AARCH64_WHEELS`` names another directory). Only
``libtvm_runtime.so`` and ``libtvm_ffi.so`` are used: the server is the C program in ``native/rpc_server.c``,
so no aarch64 Python is needed. The numbers it computes are the device's code run by an emulator; its timings
mean nothing.

``python -m onnxsmith.compilers.tvm.emulate [PORT]`` serves on 127.0.0.1 for ``onnxsmith profile --rpc``.

Each server gets a random key (on its stdin, never on a command line other users can read); a client without it is
refused in the handshake. :func:`emulated_server` registers the key for its address in this process's environment
(:func:`onnxsmith.compilers.tvm.remote.register_key`), so the runners this process and its children start present it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from onnxsmith.process import Child
from onnxsmith.errors import UnsupportedError

SOURCE = Path(__file__).parent / "native" / "rpc_server.c"
SYSROOT = Path("/usr/aarch64-linux-gnu")
CROSS_CC = "aarch64-linux-gnu-gcc"
LIBS = {"libtvm_runtime.so": ("apache_tvm-", "tvm/lib/libtvm_runtime.so"),
        "libtvm_ffi.so": ("apache_tvm_ffi-", "tvm_ffi/lib/libtvm_ffi.so")}


def wheels_dir() -> Path:
    return Path(os.environ.get("ONNXSMITH_TVM_AARCH64_WHEELS") or Path(sys.prefix) / "aarch64-wheels")


def missing() -> str:
    """Why the emulated server cannot run here ('' when it can)."""
    if shutil.which("qemu-aarch64") is None:
        return "qemu-aarch64 is not installed (apt-get install qemu-user)"
    if shutil.which(CROSS_CC) is None or not SYSROOT.is_dir():
        return f"{CROSS_CC} is not installed (apt-get install gcc-aarch64-linux-gnu)"
    for prefix, _ in LIBS.values():
        if not any(wheels_dir().glob(f"{prefix}*aarch64*.whl")):
            return (f"no aarch64 {prefix.rstrip('-')} wheel in {wheels_dir()} (pip download --only-binary=:all: "
                    "--no-deps --platform manylinux_2_28_aarch64 apache-tvm==0.27.0.post1 "
                    "apache-tvm-ffi==0.1.14.post1)")
    return ""


def server_binary() -> Path:
    """The aarch64 RPC server with its two runtime libraries beside it (built once per TVM version and source)."""
    reason = missing()
    if reason:
        raise UnsupportedError("cannot run the aarch64 TVM emulator", reason)
    from onnxsmith.build.cache import cache_root
    from onnxsmith.compilers.tvm.common import tvm_version

    import hashlib

    source_hash = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    directory = cache_root() / "tvm-aarch64-runtime" / f"{tvm_version()}-{source_hash}"
    binary = directory / "rpc_server"
    if binary.is_file():
        return binary
    _extract_libraries(directory)
    import tvm_ffi

    include = Path(tvm_ffi.__file__).parent / "include"
    tmp = directory / f".rpc_server.{os.getpid()}"
    subprocess.run([CROSS_CC, "-O2", "-std=c11", "-D_GNU_SOURCE", f"-I{include}", str(SOURCE), f"-L{directory}",
                    "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN", "-o", str(tmp)],
                   check=True, capture_output=True, text=True)
    os.replace(tmp, binary)
    return binary


def runtime_libraries() -> Path:
    """A folder holding the aarch64 ``libtvm_runtime.so`` and ``libtvm_ffi.so`` (extracted once from the wheels),
    e.g. to link a cross-compiled deployment program against."""
    reason = missing()
    if reason:
        raise UnsupportedError("no aarch64 TVM runtime libraries", reason)
    from onnxsmith.build.cache import cache_root
    from onnxsmith.compilers.tvm.common import tvm_version

    directory = cache_root() / "tvm-aarch64-runtime" / f"{tvm_version()}-libs"
    if not all((directory / name).is_file() for name in LIBS):
        _extract_libraries(directory)
    return directory


def _extract_libraries(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, (prefix, member) in LIBS.items():
        wheel = sorted(wheels_dir().glob(f"{prefix}*aarch64*.whl"))[-1]
        tmp = directory / f".{name}.{os.getpid()}"
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, directory / name)


@contextlib.contextmanager
def emulated_server(port: int = 0, timeout_s: float = 60) -> Iterator[str]:
    """Start the aarch64 RPC server under qemu on 127.0.0.1 with a fresh key; yields its ``HOST:PORT``; stops it on
    exit."""
    import secrets
    import tempfile

    from onnxsmith.compilers.tvm.remote import register_key

    binary = server_binary()
    key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="onnxsmith-qemu-rpc-") as work:
        proc = Child(["qemu-aarch64", "-L", str(SYSROOT), str(binary), work, str(port), "127.0.0.1"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        address = ""
        try:
            assert proc.stdin is not None
            proc.stdin.write(key + "\n")
            proc.stdin.close()
            address = _wait_for_address(proc, timeout_s)
            register_key(address, key)
            yield address
        finally:
            if address:
                register_key(address, None)
            proc.stop()


def _wait_for_address(proc: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = proc.stdout.readline()
            if line.startswith("listening "):
                return line.split()[1]
        if proc.poll() is not None:
            break
    error = proc.stderr.read() if proc.stderr and proc.poll() is not None else "no answer"
    raise UnsupportedError("the emulated aarch64 RPC server did not start", error.strip()[:300] or "no output")


def main() -> None:
    import signal

    # Stop cleanly (and stop qemu) on Ctrl-C and on kill, also when started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
    with emulated_server(port) as address:
        from onnxsmith.compilers.tvm.remote import KEY_ENV, rpc_key

        print(f"aarch64 TVM RPC server (qemu) at {address}; Ctrl-C stops it. Its key (for profile --rpc in "
              f"another shell): export {KEY_ENV}={rpc_key(address)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
