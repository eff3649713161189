"""Run a backend's ``compile()`` in a child process, so a crash in a vendor library cannot take the CLI down.

A segfault or abort inside a vendor compiler (TVM, OpenVINO, TensorRT...) kills only the child: the parent maps
the signal or exit code to a :class:`~onnxsmith.errors.BackendError` (exit 4) naming the backend, removes the
private build directory as usual, and the cache and the output directory stay as they were.

The child is a fresh interpreter (``python -m onnxsmith.isolate``), never a fork: the parent may already hold
vendor thread pools (OpenVINO's TBB, ONNX Runtime) that a forked child would inherit half-locked. The request
(model, target, profile, calibration data, options) is pickled into a private directory; progress messages come
back through a pipe, and what the child prints is shown after it ends (only its last line on failure, so an error
stays one line). The in-process path is kept only where a child cannot import the backend (a class defined in
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

from onnxsmith.errors import BackendError, OnnxsmithError

if TYPE_CHECKING:
    from onnxsmith.plugin import Artifact, CompileRequest, Compiler


def _class_ref(backend: Compiler) -> str | None:
    cls = type(backend)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__ or not sys.executable:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def compile_isolated(backend: Compiler, request: CompileRequest, workdir: Path) -> Artifact:
    """``backend.compile(request, workdir)`` in a child process (in-process only where no child can do it)."""
    ref = _class_ref(backend)
    if ref is None:
        return backend.compile(request, workdir)
    from onnxsmith.cache import owner_tag

    request.model.path  # noqa: B018 - the child reads the parent's copy instead of writing its own to $TMPDIR
    progress = request.progress
    child_request = dataclasses.replace(request, progress=None)
    with tempfile.TemporaryDirectory(prefix=f"onnxsmith-compile-{owner_tag()}-") as io_dir:
        io = Path(io_dir)
        with open(io / "request.pkl", "wb") as f:
            # the header first: the parent's sys.path, so the backend class imports in the child as it did here
            pickle.dump({"backend": ref, "workdir": str(workdir), "sys_path": sys.path}, f)
            pickle.dump(child_request, f, protocol=pickle.HIGHEST_PROTOCOL)
        read_fd, write_fd = os.pipe()
        try:
            with open(io / "output.txt", "wb") as output:
                proc = subprocess.Popen([sys.executable, "-m", "onnxsmith.isolate", str(io), str(write_fd)],
                                        stdin=subprocess.DEVNULL, stdout=output, stderr=output, pass_fds=(write_fd,))
                os.close(write_fd)
                write_fd = -1
                try:
                    _forward_progress(proc, read_fd, progress)
                except BaseException:  # SIGTERM, Ctrl-C: the child goes too, before the build dir is removed
                    proc.kill()
                    proc.wait()
                    raise
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        printed = (io / "output.txt").read_text(errors="replace")
        return _outcome(backend.name, proc.returncode, io / "result.pkl", printed)


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
    from onnxsmith import errors

    lines = [line.strip() for line in printed.splitlines() if line.strip()]
    if result_path.is_file():
        with open(result_path, "rb") as f:
            outcome = pickle.load(f)
        if outcome["status"] == "ok":
            if printed.strip():  # the vendor's own warnings, shown as they were before isolation
                sys.stderr.write(printed if printed.endswith("\n") else printed + "\n")
            return outcome["artifact"]
        if outcome["status"] == "error":
            cls_name, what, why, hint, code = outcome["error"]
            cls = getattr(errors, cls_name, None)
            if not (isinstance(cls, type) and issubclass(cls, OnnxsmithError)):
                cls = errors.BackendError
            exc = OnnxsmithError.__new__(cls)
            OnnxsmithError.__init__(exc, what, why, hint)
            exc.exit_code = code  # a plugin's own error class keeps its exit code
            raise exc
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


def child_main(io_dir: str, progress_fd: str) -> None:
    """``python -m onnxsmith.isolate IO_DIR FD``: compile the pickled request, write the outcome."""
    io = Path(io_dir)
    fd = int(progress_fd)
    os.set_inheritable(fd, False)
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
        outcome = {"status": "error", "error": [type(exc).__name__, exc.what, exc.why, exc.hint, exc.exit_code]}
    except BaseException as exc:  # noqa: BLE001 - a vendor exception becomes a backend error in the parent
        outcome = {"status": "crash", "error": [f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                                                traceback.format_exc()]}
    tmp = io / "result.pkl.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(outcome, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, io / "result.pkl")


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
