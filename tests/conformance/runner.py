"""Run node test cases in worker processes, each case under a timeout: a crash or a hang costs one case, not the run.

A worker (one process, started with ``spawn``) takes (case, backend, mode) jobs one at a time; when a job
outlives its timeout or the worker dies (a segfault or abort inside a vendor library), the job is an ``error``
and a fresh worker takes the next one.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.conformance.backends import Outcome

_CTX = multiprocessing.get_context("spawn")


def _worker(conn: Any, root: str) -> None:
    import logging
    import os
    import sys

    # vendor libraries write to fds 1 and 2; keep the parent's terminal and pipes clean
    log = os.open(os.path.join(root, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = sys.stderr = open(log, "w", closefd=False)
    logging.disable(logging.WARNING)
    from tests.conformance.backends import run_one

    count = 0
    while True:
        job = conn.recv()
        if job is None:
            return
        name, backend, mode = job
        count += 1
        workdir = Path(root) / f"{os.getpid()}-{count}"
        workdir.mkdir(parents=True)
        result = run_one(name, backend, mode, workdir)
        conn.send(dataclasses.asdict(result))
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


class Worker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conn, child = _CTX.Pipe()
        self.process = _CTX.Process(target=_worker, args=(child, str(root)), daemon=True)
        self.process.start()
        child.close()

    def run(self, job: tuple[str, str, str], timeout: float) -> Outcome:
        name, backend, mode = job
        start = time.perf_counter()
        self.conn.send(job)
        deadline = start + timeout
        while time.perf_counter() < deadline:
            if self.conn.poll(0.05):
                try:
                    return Outcome(**self.conn.recv())
                except EOFError:
                    break
            if not self.process.is_alive() and not self.conn.poll():
                break
        seconds = round(time.perf_counter() - start, 3)
        alive = self.process.is_alive()
        self.stop(kill=True)
        why = f"timeout: no result within {timeout:g} s" if alive else \
            f"crash: the process died (exit code {self.process.exitcode})"
        return Outcome(name, backend, mode, "error", why, seconds=seconds)

    def stop(self, kill: bool = False) -> None:
        if self.process.is_alive():
            if kill:
                self.process.kill()
            else:
                try:
                    self.conn.send(None)
                except (BrokenPipeError, OSError):
                    self.process.kill()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)


def run_cases(names: Iterable[str], backends: Iterable[str], modes: Iterable[str] = ("raw", "onnxsmith"),
              timeout: float = 120.0, on_result: Callable[[Outcome], None] | None = None,
              fresh: bool = False) -> list[Outcome]:
    """Each case on each backend in each mode, sequentially in one worker (restarted after a crash or hang;
    ``fresh``: a new worker for every job, as a CLI user gets — compiles in one process are not independent,
    e.g. TVM's frontend after another model's import)."""
    jobs = [(n, b, m) for b in backends for n in names for m in modes]
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="onnxsmith-conformance-") as tmp:
        root = Path(tmp)
        worker: Worker | None = None
        try:
            for job in jobs:
                if worker is not None and fresh:
                    worker.stop()
                if worker is None or not worker.process.is_alive():
                    worker = Worker(root)
                result = worker.run(job, timeout)
                results.append(result)
                if on_result:
                    on_result(result)
        finally:
            if worker is not None:
                worker.stop()
    return results
