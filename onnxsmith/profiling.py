"""Stage 4a, profile: time a bundle on this machine beside the ONNX Runtime fp32 baseline, in one run.

Each runner is measured in its own fresh process (as Polygraphy's comparator does), so peak memory is the
runner's own and a crashing backend cannot take the CLI down. Timing: load, one first inference, warm-up, then
at least ``min_iterations`` and ``min_seconds`` (capped at ``max_seconds``) of bound single-request calls, then
the backend's parallel-requests throughput when it has one.

A measuring process (:class:`MeasureWorker`) stays alive and takes commands, so two or more runners can be loaded
at once and timed in interleaved runs (:func:`interleave`: A B, B A, ...); the artifact-to-baseline ratio of
medians then gets a confidence interval (:mod:`onnxsmith.stats`). Each profile records the machine it ran on and
how busy it was (:func:`environment`, :class:`LoadWatch`).
"""

from __future__ import annotations

import dataclasses
import platform
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, OnnxsmithError
from onnxsmith.stats import RatioCI, block_medians, compare_runs, is_busy

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.model import TensorSpec
    from onnxsmith.profiles import Measure, Profile

PERCENTILES = (50, 90, 95, 99)
LAYER_PRECISIONS = ("int4", "fp8", "int8", "fp16", "bf16", "fp32", "fp64")
"""Precisions a per-layer profile names, narrowest first (integer index/shape work is ``int32``/``int64``)."""


def precision_shares(layers: list[Any]) -> dict[str, Any]:
    """How the profiled time splits over the precisions the layers ran in: ``{"percent": {"int8": 62.1, ...},
    "time_ms": {...}, "layers": {...}}``; layers whose precision the backend does not report count as
    ``unknown``."""
    time_ms: dict[str, float] = {}
    counts: dict[str, int] = {}
    for layer in layers:
        key = getattr(layer, "precision", "") or "unknown"
        time_ms[key] = time_ms.get(key, 0.0) + float(layer.time_ms)
        counts[key] = counts.get(key, 0) + 1
    total = sum(time_ms.values())
    order = [*LAYER_PRECISIONS, *sorted(k for k in time_ms if k not in LAYER_PRECISIONS)]
    keys = [k for k in order if k in time_ms]
    return {"percent": {k: round(100 * time_ms[k] / total, 2) if total else 0.0 for k in keys},
            "time_ms": {k: round(time_ms[k], 6) for k in keys}, "layers": {k: counts[k] for k in keys},
            "total_ms": round(total, 6)}


def precision_line(shares: dict[str, Any] | None) -> str:
    """``int8 62.1 % / bf16 30.2 % / fp32 7.7 %`` of the profiled time."""
    if not shares or not shares.get("percent"):
        return ""
    return " / ".join(f"{k} {v:.1f} %" for k, v in shares["percent"].items())


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    iterations: int
    seconds: float

    @classmethod
    def from_samples(cls, samples_ms: list[float], seconds: float) -> LatencyStats:
        import numpy as np

        arr = np.asarray(samples_ms, dtype=np.float64)
        p = np.percentile(arr, PERCENTILES)
        return cls(min=round(float(arr.min()), 4), mean=round(float(arr.mean()), 4), p50=round(float(p[0]), 4),
                   p90=round(float(p[1]), 4), p95=round(float(p[2]), 4), p99=round(float(p[3]), 4),
                   max=round(float(arr.max()), 4), std=round(float(arr.std()), 4), iterations=len(arr),
                   seconds=round(seconds, 3))


def measure_runner(runner: Any, feeds: dict[str, np.ndarray], measure: Measure, batch: int,
                   layers: bool = True) -> dict[str, Any]:
    """Time one loaded runner. Returns the measurement as a JSON-ready dict."""
    call = runner.bind(feeds)
    start = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(measure.warmup_iterations):
        call()
    samples: list[float] = []
    clock = time.perf_counter
    loop_start = clock()
    while True:
        t0 = clock()
        call()
        samples.append((clock() - t0) * 1000)
        elapsed = clock() - loop_start
        if (len(samples) >= measure.min_iterations and elapsed >= measure.min_seconds) or elapsed >= measure.max_seconds:
            break
    loop_seconds = clock() - loop_start
    stats = LatencyStats.from_samples(samples, loop_seconds)
    result: dict[str, Any] = {
        "latency_ms": dataclasses.asdict(stats),
        "throughput_per_s": round(batch * len(samples) / loop_seconds, 3),
        "first_inference_ms": round(first_ms, 3),
        "parallel_throughput_per_s": None,
        "parallel_requests": None,
        "layers": None,
        "block_p50_ms": block_medians(samples),
    }
    if measure.throughput_seconds > 0:
        parallel = runner.parallel_throughput(feeds, measure.throughput_seconds)
        if parallel:
            result["parallel_throughput_per_s"] = round(parallel[0] * batch, 3)
            result["parallel_requests"] = parallel[1]
    if layers:
        try:
            profile = runner.layer_profile(feeds)
        except Exception as exc:  # per-layer profiling is a bonus; never fail the profile for it
            result["layers_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            profile = None
        if profile:
            result["layers"] = [dataclasses.asdict(layer) for layer in profile[:25]]
            result["layer_precision"] = precision_shares(profile)
        try:
            result["vendor_timing"] = runner.vendor_timing(feeds)
        except Exception as exc:  # like the layer profile: a bonus beside the host timing
            result["vendor_timing_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return result


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
        from onnxsmith.reference import reference_runner

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
        from onnxsmith.values import read_values

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
        from onnxsmith.values import read_values

        inputs = Bundle.open(self.request["bundle"], verify=False).inputs
        feeds = read_values(feeds_path, inputs)
        self.feeds, self.call = {s.name: feeds[s.name] for s in inputs if s.name in feeds}, None
        self.request = {**self.request, "feeds": feeds_path, "batch": batch}
        return {"batch": batch}

    def close(self) -> None:
        self.runner.__exit__(None, None, None)


def worker_main(request_path: str) -> None:
    """``python -m onnxsmith.profiling --worker REQUEST``: load one runner, then answer JSON commands read from
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
            return {"status": "error", "error": [type(exc).__name__, exc.what, exc.why, exc.hint]}
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
    command; several workers alive at once are how two runners are timed interleaved (A B A B ...)."""

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
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxsmith.profiling", "--worker", str(request_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.load = self._read(timeout)

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

        from onnxsmith import errors

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
            cls_name, what, why, hint = outcome["error"]
            cls = getattr(errors, cls_name, errors.BackendError)
            exc = errors.OnnxsmithError.__new__(cls)
            errors.OnnxsmithError.__init__(exc, what, why, hint)
            raise exc
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

    def measure(self, measure: Measure) -> dict[str, Any]:
        """The full measurement (:func:`measure_runner`) in the worker."""
        limit = measure.max_seconds * 2 + measure.throughput_seconds + 600
        return self._send({"op": "measure", "measure": dataclasses.asdict(measure)}, limit)

    def block(self, seconds: float, min_iterations: int = 5, mode: str = "latency", warmup: int = 5) -> dict[str, Any]:
        """One run of an interleaved comparison (see ``_ChildState.block``)."""
        return self._send({"op": "block", "seconds": seconds, "min_iterations": min_iterations, "mode": mode,
                           "warmup": warmup}, 20 * seconds + 300)

    def use_feeds(self, feeds_path: Path, batch: int) -> None:
        """Hand the loaded runner other inputs (see :class:`onnxsmith.measure_pool.WorkerPool`)."""
        self._send({"op": "feeds", "feeds": str(feeds_path), "batch": batch}, self.timeout)
        self.batch = batch

    def close(self) -> None:
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


PAUSE_S = 0.05


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
        for name in names if round_ % 2 == 0 else reversed(names):
            time.sleep(PAUSE_S)  # let the previous runner's spinning threads go idle before the next one runs
            runs[name].append(float(workers[name].block(seconds, min_iterations, mode)[key]))
    return runs


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of every CPU from ``/proc/stat``, or None where it is not readable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def _process_jiffies(pid: int) -> int | None:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


class LoadWatch:
    """How busy the machine was while we measured: the load average before and after, and the share of CPU time
    spent by *other* processes during the run (``/proc/stat`` minus our measuring processes and ourselves)."""

    def __init__(self) -> None:
        import os

        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.load_before = _loadavg()
        self._start = _cpu_jiffies()
        self._own_start = _process_jiffies(os.getpid())
        self._pids: dict[int, int] = {}
        self._own_cpu = 0

    def track(self, pid: int) -> None:
        """Count a measuring process's CPU time as ours (call once it has started; its time so far counts too)."""
        self._pids.setdefault(pid, 0)

    def untrack(self, pid: int) -> None:
        """Add what a measuring process used before it exits (its ``/proc`` entry goes with it)."""
        used = _process_jiffies(pid)
        if used is not None:
            self._own_cpu += used
        self._pids.pop(pid, None)

    def finish(self) -> dict[str, Any]:
        import os

        own = self._own_cpu + sum(_process_jiffies(pid) or 0 for pid in self._pids)
        me = _process_jiffies(os.getpid())
        if me is not None and self._own_start is not None:
            own += me - self._own_start
        others = None
        end = _cpu_jiffies()
        if self._start and end and end[1] > self._start[1]:
            busy, total = end[0] - self._start[0], end[1] - self._start[1]
            others = round(max(0.0, (busy - own) / total), 3)
        load_after = _loadavg()
        return {"load_average_before": self.load_before, "load_average_after": load_after,
                "other_processes_cpu_share": others, "busy": was_busy(self.load_before, self.cores, others)}


def was_busy(load_before: float | None, cores: int, others: float | None) -> bool:
    """Whether other work competed with a measurement: the share of CPU time other processes used during it when
    ``/proc/stat`` gave one (a load average before the run also counts our own work just before, e.g. the previous
    step's profile), else the load average."""
    if others is not None:
        return others >= 0.25
    return is_busy(load_before, cores)


def _loadavg() -> float | None:
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """The machine a profile ran on: CPU model, cores, frequency governor and clock where readable."""
    import os

    model, mhz = "", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            if key.strip() == "cpu MHz" and mhz is None:
                mhz = round(float(value), 0)
    except (OSError, ValueError):
        pass
    governor = None
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_model": model or platform.processor() or platform.machine(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "frequency_governor": governor, "cpu_mhz": mhz, "python": platform.python_version()}


def busy_warning(env: dict[str, Any]) -> str | None:
    """One line when the machine was busy while measuring, else None."""
    if not env.get("busy"):
        return None
    parts = []
    if env.get("load_average_before") is not None:
        parts.append(f"load average {env['load_average_before']} before the run on {env.get('usable_cores')} cores")
    if env.get("other_processes_cpu_share") is not None:
        parts.append(f"other processes used {env['other_processes_cpu_share'] * 100:.0f} % of the CPU time during it")
    return ("the machine was busy while measuring (" + "; ".join(parts) + "): timings are noisy; compare ratios "
            "measured in the same run, or measure again on a quiet machine")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One runner's figures."""

    latency_ms: LatencyStats
    throughput_per_s: float
    first_inference_ms: float
    load_seconds: float
    peak_rss_mb: float
    parallel_throughput_per_s: float | None = None
    parallel_requests: int | None = None
    layers: list[dict[str, Any]] | None = None
    rpc_round_trip_ms: LatencyStats | None = None
    """Remote profiles: the latency seen through RPC (``latency_ms`` is then timed on the device itself)."""
    layer_precision: dict[str, Any] | None = None
    """Share of the per-layer profiled time at each precision (:func:`precision_shares`)."""
    vendor_timing: dict[str, Any] | None = None
    """The runtime's own measurement in its vendor tool's method (:meth:`onnxsmith.plugin.Runner.vendor_timing`)."""
    block_p50_ms: list[float] | None = None
    """Medians of contiguous blocks of the timed loop (:func:`onnxsmith.stats.block_medians`)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        rpc = data.get("rpc_round_trip_ms")
        return cls(latency_ms=LatencyStats(**data["latency_ms"]), throughput_per_s=data["throughput_per_s"],
                   first_inference_ms=data["first_inference_ms"], load_seconds=data["load_seconds"],
                   peak_rss_mb=data["peak_rss_mb"], parallel_throughput_per_s=data.get("parallel_throughput_per_s"),
                   parallel_requests=data.get("parallel_requests"), layers=data.get("layers"),
                   rpc_round_trip_ms=None if rpc is None else LatencyStats(**rpc),
                   layer_precision=data.get("layer_precision"), vendor_timing=data.get("vendor_timing"),
                   block_p50_ms=data.get("block_p50_ms"))


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """The profile of one bundle, with the ONNX Runtime fp32 baseline measured in the same run."""

    backend: str
    backend_version: str
    target: str
    device: str
    precision_used: str
    batch: int
    inputs: str
    """Where the timed inputs came from."""
    measurement: Measurement
    baseline: Measurement | None
    compile_seconds: float | None
    artifact_size_bytes: int
    flops: int
    peak_tflops: float | None
    host: str
    remote: str | None
    measure: dict[str, Any]
    shapes: tuple[dict[str, Any], ...] = ()
    """A bundle compiled for a shape range: the figures at each of its ``min``, ``opt`` and ``max`` points (the
    main figures are those at ``opt``)."""
    environment: dict[str, Any] | None = None
    """CPU model, cores, governor, load before/after and other processes' CPU share during the run."""
    comparison: dict[str, Any] | None = None
    """The artifact against the baseline in interleaved runs: ``ratio_p50`` (a :class:`RatioCI` as JSON, artifact
    over baseline) and each side's per-run medians."""
    measured_peak_tflops: float | None = None
    """This machine's peak for the precision measured by ``onnxsmith probe`` (None: not probed, or remote)."""

    @property
    def efficiency_of_measured_peak(self) -> float | None:
        achieved = self.achieved_tflops
        if achieved is None or not self.measured_peak_tflops:
            return None
        return achieved / self.measured_peak_tflops

    @property
    def achieved_tflops(self) -> float | None:
        if not self.flops:
            return None
        return self.flops / (self.measurement.latency_ms.p50 / 1000) / 1e12

    @property
    def efficiency(self) -> float | None:
        achieved = self.achieved_tflops
        if achieved is None or not self.peak_tflops:
            return None
        return achieved / self.peak_tflops

    @property
    def speedup_vs_baseline(self) -> float | None:
        if self.baseline is None:
            return None
        return self.baseline.latency_ms.p50 / self.measurement.latency_ms.p50

    def to_json(self) -> dict[str, Any]:
        m = dataclasses.asdict(self.measurement)
        data: dict[str, Any] = {
            "backend": self.backend, "backend_version": self.backend_version, "target": self.target,
            "device": self.device, "precision_used": self.precision_used, "batch": self.batch,
            "inputs": self.inputs, **m,
            "compile_seconds": self.compile_seconds, "artifact_size_bytes": self.artifact_size_bytes,
            "flops": self.flops,
            "achieved_tflops": None if self.achieved_tflops is None else round(self.achieved_tflops, 6),
            "peak_tflops": self.peak_tflops,
            "efficiency": None if self.efficiency is None else round(self.efficiency, 6),
            "measured_peak_tflops": self.measured_peak_tflops,
            "efficiency_of_measured_peak": None if self.efficiency_of_measured_peak is None
            else round(self.efficiency_of_measured_peak, 6),
            "speedup_vs_baseline": None if self.speedup_vs_baseline is None else round(self.speedup_vs_baseline, 4),
            "baseline": None,
            "host": self.host, "remote": self.remote, "measure": self.measure,
            "environment": self.environment, "comparison": self.comparison,
        }
        if self.shapes:
            data["shapes"] = list(self.shapes)
        if self.baseline is not None:
            data["baseline"] = {"backend": "onnxruntime", "precision_used": "fp32",
                                **dataclasses.asdict(self.baseline)}
        return data


_RPC_ADDRESS = r"^\[?([A-Za-z0-9.\-:]+?)\]?:(\d{1,5})$"


def check_rpc_address(address: str) -> None:
    """Refuse an ``--rpc`` value that is not ``HOST:PORT`` before any process starts."""
    import re

    match = re.match(_RPC_ADDRESS, address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        from onnxsmith.errors import UserInputError

        raise UserInputError(f"invalid --rpc address '{address}'", "expected HOST:PORT with a port from 1 to 65535",
                             "for example --rpc 192.168.1.20:9090")


def profile_feeds(bundle: Bundle, data: Any | None = None, seed: int = 0,
                  specs: tuple[TensorSpec, ...] | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The inputs to time: the first batch of ``data`` (a Dataset), else seeded generated inputs. ``specs``: the
    input shapes (default the bundle's; one point of its shape range)."""
    from onnxsmith.data import Dataset, check_against_model, synthetic
    from onnxsmith.measure_pool import reference_model

    specs = specs if specs is not None else bundle.inputs
    if data is not None:
        assert isinstance(data, Dataset)
        whole, batch = check_against_model(data.arrays, specs, f"input data '{data.source}'",
                                           bundle.batch_inputs)
        data = dataclasses.replace(data, whole=whole, batch=batch)
        feeds = next(data.batches(), None)
        if feeds is not None:
            return feeds, data.source if data.one_feed else f"{data.source} (first batch of {batch})"
    model = reference_model(bundle.reference_model)
    return next(synthetic(model, 1, seed, bundle.batch_inputs, specs).batches()), f"generated (seed {seed})"


def range_points(bundle: Bundle) -> list[tuple[str, tuple[TensorSpec, ...]]]:
    """The shapes a bundle is measured and checked at: its inputs as compiled, or for a shape range its ``min``,
    ``opt`` and ``max`` points (points with equal shapes measured once, named together, e.g. ``opt=max``)."""
    if not bundle.shape_ranges:
        return [("compiled", bundle.inputs)]
    points: list[tuple[str, tuple[TensorSpec, ...]]] = []
    for name in ("min", "opt", "max"):
        specs = bundle.inputs_at(name)
        same = next((i for i, (_, have) in enumerate(points) if have == specs), None)
        if same is None:
            points.append((name, specs))
        else:
            points[same] = (f"{points[same][0]}={name}", specs)
    return points


def profile_bundle(bundle: Bundle, profile: Profile, *, baseline: bool = True, data: Any | None = None,
                   remote: str | None = None, progress: Any | None = None,
                   points: list[tuple[str, tuple[TensorSpec, ...]]] | None = None) -> ProfileResult:
    """Profile ``bundle`` and (unless ``baseline=False``) ONNX Runtime fp32 on its reference model, in one run.

    A bundle compiled for a shape range is profiled at its min, opt and max points, or at ``points`` ((label,
    input specs) each inside the range: the batch sweep's sizes); the main figures are those at ``opt`` (else at
    the last point), every point's in ``shapes``."""
    import tempfile

    from onnxsmith.analysis import count_flops
    from onnxsmith.data import feed_batch, save_npz
    from onnxsmith.model import load_model

    target = bundle.target()
    if remote:
        from onnxsmith.registry import get_backend

        check_rpc_address(remote)
        if not hasattr(get_backend(bundle.backend), "load_remote"):
            from onnxsmith.errors import UnsupportedError

            raise UnsupportedError(f"backend '{bundle.backend}' cannot profile remotely (--rpc {remote})",
                                   "it has no RPC runner", "profile on the device itself")
    else:
        from onnxsmith.registry import get_backend

        runs = get_backend(bundle.backend).runs_here(target)
        if not runs:
            from onnxsmith.errors import UnsupportedError

            raise UnsupportedError(f"cannot profile the {target.id} bundle here", runs.reason, runs.hint)
    from onnxsmith.cache import owner_tag

    points = points or range_points(bundle)
    headline = next((i for i, (label, _) in enumerate(points) if label == "compiled" or "opt" in label.split("=")),
                    len(points) - 1)
    watch = LoadWatch()
    comparison = None
    measure = profile.measure
    limit = measure.max_seconds * 2 + measure.throughput_seconds + 600
    measured = []
    from onnxsmith.measure_pool import WorkerPool

    with tempfile.TemporaryDirectory(prefix=f"onnxsmith-profile-{owner_tag()}-") as tmp, WorkerPool(watch) as pool:
        for index, (label, specs) in enumerate(points):
            feeds, source = profile_feeds(bundle, data, specs=specs)
            batch = feed_batch(specs, bundle.batch_inputs)
            feeds_path = Path(tmp) / label / "feeds.npz"
            save_npz(feeds_path, feeds)
            at = "" if label == "compiled" else f" at {label} ({_shape_words(specs, bundle)})"
            if progress:
                progress(f"profiling {bundle.backend}{at} ({measure.min_seconds:g} s+)")
            with pool.use("artifact", bundle, feeds_path, batch, remote, timeout=limit) as worker:  # loaded once
                main = worker.measure(measure)
                base = None
                if baseline:
                    if progress:
                        progress(f"profiling the ONNX Runtime fp32 baseline{at}")
                    with pool.use("baseline", bundle, feeds_path, batch, timeout=limit) as base_worker:
                        base = base_worker.measure(measure)
                        # The interleaved comparison at the headline point (OPT for a shape range) only: the
                        # other points carry their own artifact and baseline figures, measured one after the other.
                        if index == headline and measure.rounds >= 2 and not remote:
                            runs = interleave({"artifact": worker, "baseline": base_worker}, measure.rounds,
                                              measure.round_seconds, progress=progress)
                            ci = compare_runs(runs["artifact"], runs["baseline"], paired=True)
                            comparison = {"ratio_p50": ci.to_json(), "artifact_runs_p50_ms": runs["artifact"],
                                          "baseline_runs_p50_ms": runs["baseline"],
                                          "round_seconds": measure.round_seconds,
                                          "order": "interleaved, alternating A B / B A each round"}
                            if label != "compiled":
                                comparison["point"] = label
            measured.append((label, specs, feeds, source, batch, main, base))
    _, opt_specs, _, source, batch, main, base = measured[headline]
    ranges = bundle.shape_ranges

    def flops_at(specs: tuple[TensorSpec, ...]) -> int:
        shapes = {s.name: tuple(int(d) for d in s.shape) for s in specs if s.name in ranges}
        return count_flops(load_model(bundle.reference_model, shapes or None, check=False).proto)[0]

    flops = flops_at(opt_specs)
    precision_used = bundle.manifest["precision_used"]
    shapes: list[dict[str, Any]] = []
    if ranges:
        for label, specs, feeds, point_source, point_batch, point_main, point_base in measured:
            latency, base_latency = point_main["latency_ms"], (point_base or {}).get("latency_ms")
            shapes.append({
                "point": label, "batch": point_batch, "inputs": point_source,
                "shape": {s.name: list(s.shape) for s in specs if s.name in ranges},
                "latency_ms": latency, "throughput_per_s": point_main["throughput_per_s"],
                "parallel_throughput_per_s": point_main.get("parallel_throughput_per_s"),
                "first_inference_ms": point_main["first_inference_ms"],
                "flops": flops_at(specs) if specs != opt_specs else flops,
                "baseline_latency_ms": base_latency,
                "speedup_vs_baseline": None if not base_latency else round(base_latency["p50"] / latency["p50"], 4),
            })
    return ProfileResult(
        backend=bundle.backend, backend_version=bundle.manifest["backend_version"], target=target.id,
        device=main.get("device") or bundle.artifact.device, precision_used=precision_used, batch=batch,
        inputs=source, measurement=Measurement.from_json(main),
        baseline=None if base is None else Measurement.from_json(base),
        compile_seconds=bundle.manifest.get("compile_seconds"), artifact_size_bytes=bundle.artifact_size(),
        flops=flops, peak_tflops=target.peak.for_precision(precision_used),
        host=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(), remote=remote,
        measure=dataclasses.asdict(profile.measure), shapes=tuple(shapes),
        environment=environment() | watch.finish(), comparison=comparison,
        measured_peak_tflops=None if remote or target.kind != "cpu" else _measured_peak(precision_used),
    )


def _shape_words(specs: tuple[TensorSpec, ...], bundle: Bundle) -> str:
    ranges = bundle.shape_ranges
    return ", ".join(f"{s.name} {s.shape_text()}" for s in specs if s.name in ranges)


def slower_than_baseline(record: dict[str, Any], manifest: dict[str, Any] | None = None) -> str | None:
    """When the artifact is significantly slower than its ONNX Runtime fp32 baseline (interleaved runs): what to
    say, naming the faster choice (with the command, given the bundle's ``manifest``); else None."""
    comparison = record.get("comparison") or {}
    ci = comparison.get("ratio_p50")
    if not ci:
        return None
    ratio = RatioCI.from_json(ci)
    if not (ratio.significant and ratio.ratio > 1):
        return None
    command = ""
    if manifest:
        source = (manifest.get("model") or {}).get("source") or "MODEL"
        target = (manifest.get("target") or {}).get("id") or "TARGET"
        command = f"onnxsmith compile {source} --target {target} --backend onnxruntime --precision fp32"
    if record["backend"] == "onnxruntime":
        faster = (f"the fp32 model on ONNX Runtime (this {record['precision_used']} graph costs more than it saves "
                  f"here): {command or 'compile with --precision fp32'}")
    else:
        faster = (f"ONNX Runtime fp32 ({command or 'compile with --backend onnxruntime'}), or let 'onnxsmith "
                  "optimize' measure every backend")
    return (f"the {record['backend']} {record['precision_used']} artifact is {ratio.ratio:.2f}x slower than ONNX "
            f"Runtime fp32 on this machine (p50 ratio {ratio.text()}); the faster choice here is {faster}")


def _measured_peak(precision: str) -> float | None:
    """This CPU's peak from ``onnxsmith probe`` (stored per device fingerprint), when it was probed."""
    from onnxsmith.probe import measured_peak

    try:
        return measured_peak(precision)
    except Exception:  # a damaged peaks file never fails a profile
        return None


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2])
