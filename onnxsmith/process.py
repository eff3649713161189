"""Long-lived child processes (tritonserver, the qemu TVM RPC server, a Ray node) that end with the CLI, however
the CLI ends: Ctrl-C, SIGTERM, an exception, or a SIGKILL that runs no ``finally``.

A :class:`Child` is started in its own session and process group, so the programs it starts itself (Triton's
Python-backend stubs, Ray's raylet and gcs_server) share its group, and a Ctrl-C typed at the terminal reaches only
the CLI, which then stops the group in its ``finally`` (:meth:`Child.stop`: SIGTERM to the group, a grace period,
SIGKILL, reap). Only that group is signalled: never processes found by name (``ray stop`` would end every Ray
process of the user).

For a SIGKILL of the CLI each child has a watchdog: a tiny interpreter (``python -I -S``, the standard library
only) in a session of its own, reading a pipe whose write end only the CLI holds (never inherited by other
children: it is close-on-exec). The child's pid goes down the pipe right after it started; when the CLI ends,
however it ends, the kernel closes the pipe, the watchdog reads end-of-file and stops the group the same way. A
normal :meth:`Child.stop` writes ``done`` first, so the watchdog leaves without signalling anything (no pid can
be reused under it). Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that started the child ends, and
these children are started from worker threads too (and it would not reach the child's own children).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

_WATCHDOG = r"""
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
grace = float(sys.argv[1])
data = b""
while True:
    try:
        chunk = os.read(0, 256)
    except InterruptedError:
        continue
    if not chunk:
        break
    data += chunk
lines = data.split(b"\n")
if not lines[0].strip().isdigit() or b"done" in lines[1:]:
    sys.exit(0)
group = int(lines[0])
def alive():
    try:
        os.killpg(group, 0)
        return True
    except OSError:
        return False
try:
    os.killpg(group, signal.SIGTERM)
except OSError:
    sys.exit(0)
deadline = time.monotonic() + grace
while alive() and time.monotonic() < deadline:
    time.sleep(0.05)
try:
    os.killpg(group, signal.SIGKILL)
except OSError:
    pass
"""


class Child(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` in its own process group, stopped with the CLI (see the module docstring); call
    :meth:`stop` (or use it as a context manager) to end it and everything it started."""

    def __init__(self, args: Sequence[str], *, grace_s: float = 10.0, **kwargs: Any) -> None:
        self.grace_s = grace_s
        self._lifeline = -1
        self._watchdog: subprocess.Popen[bytes] | None = None
        if sys.executable:
            read, self._lifeline = os.pipe()
            try:
                self._watchdog = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(grace_s)], stdin=read,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            except BaseException:
                os.close(self._lifeline)
                raise
            finally:
                os.close(read)
        try:
            super().__init__(args, start_new_session=True, **kwargs)
        except BaseException:
            self._release()
            raise
        if self._lifeline >= 0:
            with contextlib.suppress(OSError):
                os.write(self._lifeline, f"{self.pid}\n".encode())

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace_s`` (default: the one given at start),
        reap the child; then SIGKILL whatever of its group is left (children that outlived it)."""
        grace = self.grace_s if grace_s is None else grace_s
        try:
            if self.poll() is None:
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(self.pid, signal.SIGKILL)
                    self.wait()
            _signal_group(self.pid, signal.SIGKILL)
        finally:
            self._release()

    def _release(self) -> None:
        """Tell the watchdog it is not needed, and reap it."""
        if self._lifeline >= 0:
            with contextlib.suppress(OSError):
                os.write(self._lifeline, b"done\n")
            os.close(self._lifeline)
            self._lifeline = -1
        if self._watchdog is not None:
            self._watchdog.wait()
            self._watchdog = None

    def __exit__(self, *exc: object) -> None:
        self.stop()
        super().__exit__(*exc)


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
