"""Measuring processes: one runner loaded in its own fresh Python process, timed on command, and several of them
timed in interleaved runs (A B, B A, ...)."""

from __future__ import annotations

import dataclasses
import platform
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from onnxsmith.errors import BackendError, OnnxsmithError, from_wire, to_wire
from onnxsmith.profiling import quiet
from onnxsmith.profiling.measure import LatencyStats, measure_runner
from onnxsmith.profiling.stats import block_medians

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle
    from onnxsmith.profiles import Measure


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    On Linux ``VmHWM`` (reset by exec); ``ru_maxrss`` is not used there because it survives fork + exec and so
    reports the parent's peak when the parent (a ladder with several backends loaded) was larger.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024, 1)


def _load_child_runner(request: dict[str, Any]) -> Any:
    from onnxsmith.bundle import Bundle

    bundle = Bundle.open(request["bundle"], verify=False)
    if request["kind"] == "baseline":
        from onnxsmith.check.reference import reference_runner

        device = "cuda" if bundle.target().kind == "gpu" else "cpu"
        return reference_runner(bundle.reference_model, device)
    if request.get("remote"):
        from onnxsmith.registry import get_backend

        backend = get_backend(bundle.backend)
        return backend.load_remote(bundle.artifact, bundle.artifact_dir, bundle.target(), request["remote"])
    return bundle.load_runner()


class _ChildState:
    """What the measuring process holds between commands: the runner, its feeds and the bound call."""

    def __init__(self, request: dict[str, Any]) -> None:
        from onnxsmith.bundle import Bundle
        from onnxsmith.data.values import read_values

        inputs = Bundle.open(request["bundle"], verify=False).inputs
        feeds = read_values(request["feeds"], inputs)  # sequences and optionals assembled again; no pickle
        self.feeds = {s.name: feeds[s.name] for s in inputs if s.name in feeds}
        self.request = request
        self.rss_before = _peak_rss_mb()
        start = time.perf_counter()
        self.runner = _load_child_runner(request)
        self.runner.__enter__()
        self.load_seconds = time.perf_counter() - start
        self.call: Any = None

    def measure(self, measure_args: dict[str, Any]) -> dict[str, Any]:
        from onnxsmith.profiles import Measure

        request, runner, feeds = self.request, self.runner, self.feeds
        measure = Measure(**measure_args)
        result = measure_runner(runner, feeds, measure, request["batch"])
        result["device"] = runner.device_name
        samples = runner.device_latencies_ms(feeds, max(measure.min_iterations, 10)) if request.get("remote") else None
        if samples:
            # Timed on the device (like tvmc and benchmark tools do): the RPC round trip is reported beside it.
            stats = LatencyStats.from_samples(samples, sum(samples) / 1000)
            result["rpc_round_trip_ms"] = result["latency_ms"]
            result["latency_ms"] = dataclasses.asdict(stats)
            result["throughput_per_s"] = round(request["batch"] * 1000 / stats.mean, 3)
            result["block_p50_ms"] = block_medians(samples)
        result["load_seconds"] = round(self.load_seconds, 3)
        result["peak_rss_mb"] = _peak_rss_mb()
        result["rss_before_load_mb"] = self.rss_before
        return result

    def block(self, seconds: float, min_iterations: int, mode: str, warmup: int) -> dict[str, Any]:
        """One run of an interleaved comparison: ``latency`` (median of single requests for ``seconds``) or
        ``throughput`` (the backend's parallel requests when it has them, else single requests)."""
        import statistics

        if self.call is None:
            self.call = self.runner.bind(self.feeds)
            for _ in range(max(1, warmup)):
                self.call()
        batch = self.request["batch"]
        if mode == "throughput":
            parallel = self.runner.parallel_throughput(self.feeds, seconds)
            if parallel:
                return {"throughput_per_s": round(parallel[0] * batch, 4), "parallel_requests": parallel[1]}
        clock, call = time.perf_counter, self.call
        samples: list[float] = []
        begin = clock()
        while True:
            t0 = clock()
            call()
            samples.append((clock() - t0) * 1000)
            if (len(samples) >= min_iterations and clock() - begin >= seconds) or clock() - begin >= 10 * seconds + 5:
                break
        wall = clock() - begin
        return {"p50_ms": round(statistics.median(samples), 5), "iterations": len(samples),
                "throughput_per_s": round(batch * len(samples) / wall, 4)}

    def use_feeds(self, feeds_path: str, batch: int) -> dict[str, Any]:
        """Time other inputs (the next point of a shape range) on the runner already loaded."""
        from onnxsmith.bundle import Bundle
        from onnxsmith.data.values import read_values

        inputs = Bundle.open(self.request["bundle"], verify=False).inputs
        feeds = read_values(feeds_path, inputs)
        self.feeds, self.call = {s.name: feeds[s.name] for s in inputs if s.name in feeds}, None
        self.request = {**self.request, "feeds": feeds_path, "batch": batch}
        return {"batch": batch}

    def close(self) -> None:
        self.runner.__exit__(None, None, None)


def worker_main(request_path: str) -> None:
    """``python -m onnxsmith.profiling.worker --worker REQUEST``: load one runner, then answer JSON commands read from
    stdin (``measure``, ``block``, ``quit``) with one JSON line each on the original stdout. Whatever the vendor
    library prints goes to stderr, so it cannot garble the replies."""
    import json
    import os
    import sys

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(outcome: dict[str, Any]) -> None:
        replies.write(json.dumps(outcome) + "\n")
        replies.flush()

    def guarded(fn: Any) -> dict[str, Any]:
        try:
            return {"status": "ok", "result": fn()}
        except OnnxsmithError as exc:
            return {"status": "error", "error": to_wire(exc)}
        except BaseException as exc:  # vendor crashes become backend errors; the traceback is kept for --debug
            return {"status": "crash", "error": [f"{type(exc).__name__}: {exc}", traceback.format_exc()]}

    request = json.loads(Path(request_path).read_text())
    holder: list[_ChildState] = []
    first = guarded(lambda: holder.append(_ChildState(request)) or {"load_seconds": round(holder[0].load_seconds, 3)})
    reply(first)
    if first["status"] != "ok":
        return
    state = holder[0]
    for line in sys.stdin:
        command = json.loads(line)
        op = command.get("op")
        if op == "quit":
            break
        if op == "measure":
            reply(guarded(lambda: state.measure(command["measure"])))
        elif op == "feeds":
            reply(guarded(lambda: state.use_feeds(str(command["feeds"]), int(command["batch"]))))
        elif op == "block":
            reply(guarded(lambda: state.block(float(command["seconds"]), int(command.get("min_iterations", 5)),
                                              str(command.get("mode", "latency")),
                                              int(command.get("warmup", 5)))))
        else:
            reply({"status": "crash", "error": [f"unknown command {op!r}", ""]})
    guarded(state.close)


class MeasureWorker:
    """One runner of a bundle ('artifact' or 'baseline') loaded in its own fresh Python process, measured on
    command; several workers alive at once are how two runners are timed interleaved (A B A B ...).

    A worker is timed only once every other live worker of this process has gone idle (:func:`quiet.alone`: no
    runner computes or spins beside the one being timed); each timed command's wait and the cores the others
    used meanwhile are kept in :attr:`isolation`."""

    live: ClassVar[set[MeasureWorker]] = set()

    def __init__(self, kind: str, bundle: Bundle, feeds_path: Path, batch: int, remote: str | None = None,
                 timeout: float = 600.0, label: str | None = None) -> None:
        import json
        import subprocess
        import sys

        self.kind, self.bundle, self.batch, self.timeout = kind, bundle, batch, timeout
        self.label = label or kind
        work = feeds_path.parent
        request_path = work / f"{self.label}.request.json"
        self._stderr_path = work / f"{self.label}.stderr.txt"
        request_path.write_text(json.dumps({"kind": kind, "bundle": str(bundle.path), "feeds": str(feeds_path),
                                            "batch": batch, "remote": remote}))
        self._stderr = self._stderr_path.open("w")
        command = [sys.executable, "-m", "onnxsmith.profiling.worker", "--worker", str(request_path)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True)
        self.isolation: list[dict[str, Any]] = []
        self.load = self._read(timeout)
        MeasureWorker.live.add(self)

    def __enter__(self) -> MeasureWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _crashed(self) -> BackendError:
        import signal

        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self._stderr.flush()
        text = self._stderr_path.read_text(errors="replace") if self._stderr_path.exists() else ""
        tail = text.strip().splitlines()[-1:] or ["no output"]
        code = self.proc.returncode
        how = f"exit code {code}"
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        return BackendError(f"profiling the {self.kind} of backend '{self.bundle.backend}' crashed",
                            f"the measuring process died ({how}: {tail[0][:200]})",
                            "run with --debug; a backend segfault shows up this way")

    def _read(self, timeout: float) -> dict[str, Any]:
        import json
        import select


        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise BackendError(f"profiling the {self.kind} timed out", f"no result after {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise self._crashed()
        outcome = json.loads(line)
        if outcome["status"] == "ok":
            return outcome["result"]
        self.close()
        if outcome["status"] == "error":
            raise from_wire(outcome["error"])
        message, tb = outcome["error"]
        raise BackendError(f"profiling the {self.kind} failed", message) from RuntimeError(tb)

    def _send(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        import json

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crashed() from None
        return self._read(timeout)

    def _timed(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        others = [w.proc.pid for w in MeasureWorker.live if w is not self and w.proc.poll() is None]
        with quiet.alone(others) as record:
            result = self._send(command, timeout)
        self.isolation.append({"op": command["op"], **record})
        return result

    def measure(self, measure: Measure) -> dict[str, Any]:
        """The full measurement (:func:`measure_runner`) in the worker."""
        limit = measure.max_seconds * 2 + measure.throughput_seconds + 600
        return self._timed({"op": "measure", "measure": dataclasses.asdict(measure)}, limit)

    def block(self, seconds: float, min_iterations: int = 5, mode: str = "latency", warmup: int = 5) -> dict[str, Any]:
        """One run of an interleaved comparison (see ``_ChildState.block``)."""
        return self._timed({"op": "block", "seconds": seconds, "min_iterations": min_iterations, "mode": mode,
                            "warmup": warmup}, 20 * seconds + 300)

    def use_feeds(self, feeds_path: Path, batch: int) -> None:
        """Hand the loaded runner other inputs (see :class:`onnxsmith.profiling.pool.WorkerPool`)."""
        self._send({"op": "feeds", "feeds": str(feeds_path), "batch": batch}, self.timeout)
        self.batch = batch

    def close(self) -> None:
        MeasureWorker.live.discard(self)
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def run_isolated(kind: str, bundle: Bundle, feeds_path: Path, measure: Measure, batch: int,
                 remote: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Measure one runner of ``bundle`` ('artifact' or 'baseline') in a fresh Python process."""
    limit = timeout or (measure.max_seconds * 2 + measure.throughput_seconds + 600)
    with MeasureWorker(kind, bundle, feeds_path, batch, remote, timeout=limit) as worker:
        return worker.measure(measure)



def interleave(workers: dict[str, MeasureWorker], rounds: int, seconds: float, min_iterations: int = 5,
               mode: str = "latency", progress: Any | None = None) -> dict[str, list[float]]:
    """Time every worker ``rounds`` times in alternating order (A B C, C B A, ...): per name, one figure per
    run (median latency in ms, or throughput per second with ``mode='throughput'``)."""
    names = list(workers)
    runs: dict[str, list[float]] = {n: [] for n in names}
    key = "p50_ms" if mode == "latency" else "throughput_per_s"
    for round_ in range(rounds):
        if progress:
            progress(f"interleaved runs: round {round_ + 1} of {rounds}")
        for name in names if round_ % 2 == 0 else reversed(names):  # each waits for the others to go idle
            runs[name].append(float(workers[name].block(seconds, min_iterations, mode)[key]))
    return runs


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2])
