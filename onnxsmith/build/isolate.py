"""Run a backend's ``compile()`` in a child process, so a crash in a vendor library cannot take the CLI down.

A segfault or abort inside a vendor compiler (TVM, OpenVINO, TensorRT...) kills only the child: the parent maps
the signal or exit code to a :class:`~onnxsmith.errors.BackendError` (exit 4) naming the backend, removes the
private build directory as usual, and the cache and the output directory stay as they were.

The child is a fresh interpreter (``python -m onnxsmith.build.isolate``), never a fork: the parent may already hold
vendor thread pools (OpenVINO's TBB, ONNX Runtime) that a forked child would inherit half-locked. The request
(model, target, profile, calibration data, options) is pickled into a private directory; progress messages come
back through a pipe, and what the child prints is shown after it ends (only its last line on failure, so an error
stays one line). To keep the cost small, :func:`~onnxsmith.build.compile.compile_model` starts the child (a
:class:`Worker`) before its checks: the child imports the likely backend's vendor library while the parent is still
choosing the backend and looking up the cache, then waits for the request (measured on the digits example with
OpenVINO: about +0.3 s of compile time, +0.4 s for the whole command). The in-process path is kept only where a child cannot import the backend (a class defined in
``__main__`` or inside a function) or there is no interpreter to start.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, OnnxsmithError, from_wire, to_wire

if TYPE_CHECKING:
    from onnxsmith.plugin import Artifact, CompileRequest, Compiler


def _class_ref(backend: Compiler) -> str | None:
    cls = type(backend)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or not sys.executable:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


class Worker:
    """A compiling child started early: while the parent still checks the request, it starts up and imports the
    likely backend's vendor library (``warm``), then waits on its stdin for the request. Used once."""

    def __init__(self, warm: str | None = None) -> None:
        from onnxsmith.build.cache import owner_tag

        self._tmp = tempfile.TemporaryDirectory(prefix=f"onnxsmith-compile-{owner_tag()}-")
        self.io = Path(self._tmp.name)
        self._read_fd, write_fd = os.pipe()
        self._output = open(self.io / "output.txt", "wb")  # noqa: SIM115 - closed in close()
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [sys.executable, "-m", "onnxsmith.build.isolate", str(self.io), str(write_fd), warm or ""],
                stdin=subprocess.PIPE, stdout=self._output, stderr=self._output, pass_fds=(write_fd,))
        except BaseException:
            os.close(write_fd)
            self.close()
            raise
        os.close(write_fd)

    def compile(self, backend: Compiler, ref: str, request: CompileRequest, workdir: Path) -> Artifact:
        request.model.path  # noqa: B018 - the child reads the parent's copy instead of writing its own to $TMPDIR
        with open(self.io / "request.pkl", "wb") as f:
            # the header first: the parent's sys.path, so the backend class imports in the child as it did here
            pickle.dump({"backend": ref, "workdir": str(workdir), "sys_path": sys.path}, f)
            pickle.dump(dataclasses.replace(request, progress=None), f, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b"go\n")
                self.proc.stdin.close()
            except OSError:  # the child died before it was needed; its exit status says how
                pass
            _forward_progress(self.proc, self._read_fd, request.progress)
        except BaseException:  # SIGTERM, Ctrl-C: the child goes too, before the build dir is removed
            self.close()
            raise
        self._output.close()
        printed = (self.io / "output.txt").read_text(errors="replace")
        return _outcome(backend.name, self.proc.returncode, self.io / "result.pkl", printed)

    def close(self) -> None:
        """Stop the child if it still runs, and remove its files."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        self._output.close()
        self._tmp.cleanup()


def start_worker(warm: str | None) -> Worker | None:
    """A :class:`Worker` warming up ``warm``'s vendor library, or None where no child can be started."""
    if not sys.executable:
        return None
    return Worker(warm)


def compile_isolated(backend: Compiler, request: CompileRequest, workdir: Path,
                     worker: Worker | None = None) -> Artifact:
    """``backend.compile(request, workdir)`` in a child process (in-process only where no child can do it);
    ``worker``: one started earlier with :func:`start_worker` (closed by its owner)."""
    ref = _class_ref(backend)
    if ref is None:
        from onnxsmith.plugin import backend_call

        with backend_call(backend.name, "compile"):
            return backend.compile(request, workdir)
    if worker is not None:
        return worker.compile(backend, ref, request, workdir)
    own = Worker()
    try:
        return own.compile(backend, ref, request, workdir)
    finally:
        own.close()


def _forward_progress(proc: subprocess.Popen[bytes], read_fd: int, progress: Any) -> None:
    """Pass the child's progress lines to ``progress`` until it exits (grandchildren may keep the pipe open)."""
    pending = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.1)
        if ready:
            data = os.read(read_fd, 65536)
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if progress and line:
                    progress(line.decode(errors="replace"))
            if data:
                continue
        if proc.poll() is not None:
            return
        if ready:  # end of file, but the child is still finishing
            time.sleep(0.02)


def _outcome(name: str, returncode: int, result_path: Path, printed: str) -> Artifact:

    lines = [line.strip() for line in printed.splitlines() if line.strip()]
    if result_path.is_file():
        with open(result_path, "rb") as f:
            outcome = pickle.load(f)
        if outcome["status"] == "ok":
            if printed.strip():  # the vendor's own warnings, shown as they were before isolation
                sys.stderr.write(printed if printed.endswith("\n") else printed + "\n")
            return outcome["artifact"]
        if outcome["status"] == "error":
            raise from_wire(outcome["error"])  # a plugin's own error class keeps its exit code
        message, tb = outcome["error"]
        raise BackendError(f"backend '{name}' failed while compiling", message,
                           "run with --debug for the traceback") from RuntimeError(tb)
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with code {returncode} without a result"
    last = f" (last output: {lines[-1][:200]})" if lines else ""
    raise BackendError(f"backend '{name}' crashed while compiling", f"its compiler process {how}{last}",
                       "a bug in the vendor library; the cache and the output directory are untouched; try "
                       "another --backend or --precision, or run with --debug") from RuntimeError(printed[-4000:])


def _exit_with_parent(interval: float = 0.5) -> None:
    """End this child when its parent is gone (SIGKILL, a crashed Ray task): it was reparented, so nobody waits for
    its result, and a build left running would hold the cache shard's lock. A watcher thread, not
    ``PR_SET_PDEATHSIG``, which fires when the *thread* that started the child ends (compiles run in threads)."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(128 + 9)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def child_main(io_dir: str, progress_fd: str, warm: str = "") -> None:
    """``python -m onnxsmith.build.isolate IO_DIR FD [WARM]``: import WARM's vendor library, wait for ``go`` on stdin,
    then compile the pickled request and write the outcome."""
    io = Path(io_dir)
    fd = int(progress_fd)
    _exit_with_parent()
    os.set_inheritable(fd, False)  # never handed on to the vendor's own worker processes
    if warm:
        try:
            from onnxsmith.registry import get_backend

            get_backend(warm).check_environment()
        except BaseException:  # noqa: BLE001 - only a head start; the real compile reports any failure
            pass
    if sys.stdin.readline().strip() != "go":
        return  # not needed after all (a cache hit, or a check failed)
    pipe = os.fdopen(fd, "wb", buffering=0)

    def progress(message: str) -> None:
        try:
            pipe.write((" ".join(str(message).split()) + "\n").encode())
        except OSError:
            pass

    try:
        import importlib

        with open(io / "request.pkl", "rb") as f:
            header = pickle.load(f)
            sys.path.extend(p for p in header["sys_path"] if p not in sys.path)
            request = dataclasses.replace(pickle.load(f), progress=progress)
        module_name, _, qualname = header["backend"].partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        outcome: dict[str, Any] = {"status": "ok", "artifact": obj().compile(request, Path(header["workdir"]))}
    except OnnxsmithError as exc:
        outcome = {"status": "error", "error": to_wire(exc)}
    except BaseException as exc:  # noqa: BLE001 - a vendor exception becomes a backend error in the parent
        outcome = {"status": "crash", "error": [f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                                                traceback.format_exc()]}
    tmp = io / "result.pkl.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(outcome, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, io / "result.pkl")


if __name__ == "__main__":
    child_main(*sys.argv[1:4])

