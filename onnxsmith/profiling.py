"""Stage 4a, profile: time a bundle on this machine beside the ONNX Runtime fp32 baseline, in one run.

Each runner is measured in its own fresh process (as Polygraphy's comparator does), so peak memory is the
runner's own and a crashing backend cannot take the CLI down. Timing: load, one first inference, warm-up, then
at least ``min_iterations`` and ``min_seconds`` (capped at ``max_seconds``) of bound single-request calls, then
the backend's parallel-requests throughput when it has one.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, OnnxsmithError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.profiles import Measure, Profile

PERCENTILES = (50, 90, 95, 99)


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


def _measure_child(request: dict[str, Any]) -> dict[str, Any]:
    """Body of the measuring process: load one runner, time it, return the figures."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.profiles import Measure
    from onnxsmith.values import read_values

    bundle = Bundle.open(request["bundle"], verify=False)
    feeds = read_values(request["feeds"], bundle.inputs)  # sequences and optionals assembled again; no pickle
    feeds = {s.name: feeds[s.name] for s in bundle.inputs if s.name in feeds}
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    if request["kind"] == "baseline":
        from onnxsmith.reference import reference_runner

        device = "cuda" if bundle.target().kind == "gpu" else "cpu"
        runner = reference_runner(bundle.reference_model, device)
    elif request.get("remote"):
        from onnxsmith.registry import get_backend

        backend = get_backend(bundle.backend)
        runner = backend.load_remote(bundle.artifact, bundle.artifact_dir, bundle.target(), request["remote"])
    else:
        runner = bundle.load_runner()
    with runner:
        load_seconds = time.perf_counter() - start
        measure = Measure(**request["measure"])
        result = measure_runner(runner, feeds, measure, request["batch"])
        result["device"] = runner.device_name
        samples = runner.device_latencies_ms(feeds, max(measure.min_iterations, 10)) if request.get("remote") else None
        if samples:
            # Timed on the device (like tvmc and benchmark tools do): the RPC round trip is reported beside it.
            stats = LatencyStats.from_samples(samples, sum(samples) / 1000)
            result["rpc_round_trip_ms"] = result["latency_ms"]
            result["latency_ms"] = dataclasses.asdict(stats)
            result["throughput_per_s"] = round(request["batch"] * 1000 / stats.mean, 3)
    result["load_seconds"] = round(load_seconds, 3)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["rss_before_load_mb"] = rss_before
    return result


def child_main(request_path: str, result_path: str) -> None:
    """``python -m onnxsmith.profiling REQUEST RESULT``: run :func:`_measure_child`, write the outcome as JSON."""
    import json

    request = json.loads(Path(request_path).read_text())
    try:
        outcome: dict[str, Any] = {"status": "ok", "result": _measure_child(request)}
    except OnnxsmithError as exc:
        outcome = {"status": "error", "error": [type(exc).__name__, exc.what, exc.why, exc.hint]}
    except BaseException as exc:  # vendor crashes become backend errors; the traceback is kept for --debug
        outcome = {"status": "crash", "error": [f"{type(exc).__name__}: {exc}", traceback.format_exc()]}
    Path(result_path).write_text(json.dumps(outcome))


def run_isolated(kind: str, bundle: Bundle, feeds_path: Path, measure: Measure, batch: int,
                 remote: str | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Measure one runner of ``bundle`` ('artifact' or 'baseline') in a fresh Python process."""
    import json
    import subprocess
    import sys

    from onnxsmith import errors

    work = feeds_path.parent
    request_path, result_path = work / f"{kind}.request.json", work / f"{kind}.result.json"
    request_path.write_text(json.dumps({"kind": kind, "bundle": str(bundle.path), "feeds": str(feeds_path),
                                        "measure": dataclasses.asdict(measure), "batch": batch, "remote": remote}))
    limit = timeout or (measure.max_seconds * 2 + measure.throughput_seconds + 600)
    try:
        proc = subprocess.run([sys.executable, "-m", "onnxsmith.profiling", str(request_path), str(result_path)],
                              capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise BackendError(f"profiling the {kind} timed out", f"no result after {limit:.0f} s") from None
    if not result_path.exists():
        import signal

        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        how = f"exit code {proc.returncode}"
        if proc.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-proc.returncode).name}"
            except ValueError:
                how = f"killed by signal {-proc.returncode}"
        raise BackendError(f"profiling the {kind} of backend '{bundle.backend}' crashed", f"the measuring process "
                           f"died ({how}: {tail[0][:200]})", "run with --debug; a backend segfault shows up this way")
    outcome = json.loads(result_path.read_text())
    if outcome["status"] == "ok":
        return outcome["result"]
    if outcome["status"] == "error":
        cls_name, what, why, hint = outcome["error"]
        cls = getattr(errors, cls_name, errors.BackendError)
        exc = errors.OnnxsmithError.__new__(cls)
        errors.OnnxsmithError.__init__(exc, what, why, hint)
        raise exc
    message, tb = outcome["error"]
    raise BackendError(f"profiling the {kind} failed", message) from RuntimeError(tb)


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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        rpc = data.get("rpc_round_trip_ms")
        return cls(latency_ms=LatencyStats(**data["latency_ms"]), throughput_per_s=data["throughput_per_s"],
                   first_inference_ms=data["first_inference_ms"], load_seconds=data["load_seconds"],
                   peak_rss_mb=data["peak_rss_mb"], parallel_throughput_per_s=data.get("parallel_throughput_per_s"),
                   parallel_requests=data.get("parallel_requests"), layers=data.get("layers"),
                   rpc_round_trip_ms=None if rpc is None else LatencyStats(**rpc))


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
            "speedup_vs_baseline": None if self.speedup_vs_baseline is None else round(self.speedup_vs_baseline, 4),
            "baseline": None,
            "host": self.host, "remote": self.remote, "measure": self.measure,
        }
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


def profile_feeds(bundle: Bundle, data: Any | None = None, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """The inputs to time: the first batch of ``data`` (a Dataset), else seeded generated inputs."""
    from onnxsmith.data import Dataset, check_against_model, synthetic
    from onnxsmith.model import load_model

    if data is not None:
        assert isinstance(data, Dataset)
        whole, batch = check_against_model(data.arrays, bundle.inputs, f"input data '{data.source}'",
                                           bundle.batch_inputs)
        data = dataclasses.replace(data, whole=whole, batch=batch)
        feeds = next(data.batches(), None)
        if feeds is not None:
            return feeds, data.source if data.one_feed else f"{data.source} (first batch of {batch})"
    model = load_model(bundle.reference_model, check=False)
    return next(synthetic(model, 1, seed, bundle.batch_inputs).batches()), f"generated (seed {seed})"


def profile_bundle(bundle: Bundle, profile: Profile, *, baseline: bool = True, data: Any | None = None,
                   remote: str | None = None, progress: Any | None = None) -> ProfileResult:
    """Profile ``bundle`` and (unless ``baseline=False``) ONNX Runtime fp32 on its reference model, in one run."""
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
    feeds, source = profile_feeds(bundle, data)
    batch = feed_batch(bundle.inputs, bundle.batch_inputs)
    from onnxsmith.cache import owner_tag

    with tempfile.TemporaryDirectory(prefix=f"onnxsmith-profile-{owner_tag()}-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        save_npz(feeds_path, feeds)
        if progress:
            progress(f"profiling {bundle.backend} ({profile.measure.min_seconds:g} s+)")
        main = run_isolated("artifact", bundle, feeds_path, profile.measure, batch, remote)
        base = None
        if baseline:
            if progress:
                progress("profiling the ONNX Runtime fp32 baseline")
            base = run_isolated("baseline", bundle, feeds_path, profile.measure, batch)
    flops, _ = count_flops(load_model(bundle.reference_model, check=False).proto)
    precision_used = bundle.manifest["precision_used"]
    return ProfileResult(
        backend=bundle.backend, backend_version=bundle.manifest["backend_version"], target=target.id,
        device=main.get("device") or bundle.artifact.device, precision_used=precision_used, batch=batch,
        inputs=source, measurement=Measurement.from_json(main),
        baseline=None if base is None else Measurement.from_json(base),
        compile_seconds=bundle.manifest.get("compile_seconds"), artifact_size_bytes=bundle.artifact_size(),
        flops=flops, peak_tflops=target.peak.for_precision(precision_used),
        host=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(), remote=remote,
        measure=dataclasses.asdict(profile.measure),
    )


if __name__ == "__main__":
    import sys

    child_main(sys.argv[1], sys.argv[2])
