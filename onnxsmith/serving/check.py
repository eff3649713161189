"""``serve-check``: serve a bundle with a real Triton Inference Server on 127.0.0.1 and compare what it measures
with what the dynamic-batching simulation predicts for the same settings and arrival rate.

The server is the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel with its Python backend (CPU only here);
the model is ``BUNDLE/serving/triton`` (Python backend, the simulation's ``dynamic_batching`` settings). Steps:

1. **probe**: requests one at a time (closed loop): the mean latency through the server is the served batch-1
   service time; its excess over the bundle's measured batch-1 latency ``t1`` (gRPC, Triton's frontend, the Python
   backend's IPC, onnxsmith's checks) is the measured overhead, fed back as a fixed cost per executed batch.
   Triton's statistics split it (server execution and queue time vs the rest); a saturating closed loop
   (2 x max batch in flight) records the throughput the server sustains beside its client.
2. **feed back**: the simulation runs again over the service times the model actually gives
   (:func:`served_sweep`) plus the measured overhead per executed batch: each batch draws one of the probe's
   measured overheads (``simulate(overhead_samples_ms=...)``), so their tail (scheduling delays on a busy machine)
   reaches the predicted p99; the record also keeps the prediction with their mean alone and without any.
3. **load**: a bounded open-loop Poisson load (``rate`` for ``seconds``, at most ``MAX_REQUESTS``) from
   ``tritonclient``'s gRPC client; latency is completion minus the scheduled arrival. Default rate: 70 % of the
   served batch-1 capacity (``1000 / probe mean latency`` per second).

The result (``serving/serve-check.json``) puts measured p50/p99/throughput beside the calibrated prediction (and
the uncalibrated one) for the same rate, and the plan the calibrated simulation would choose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.build.cache import owner_tag, sweep_once
from onnxsmith.process import Child
from onnxsmith.deploy import quoting
from onnxsmith.errors import BackendError, MissingDependencyError, UnsupportedError, UserInputError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle

MAX_REQUESTS = 20000
PROBE_REQUESTS = 300
RESULT = "serve-check.json"


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path
    stubs: Path
    libs: Path


def triton_install() -> TritonInstall:
    """Where the nvidia-pytriton wheel keeps tritonserver, the Python backend, its stubs and libraries."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("nvidia-pytriton", "serving", "serve-check runs the tritonserver binary it ships",
                                     hint="pip install --no-deps nvidia-pytriton==0.7.0 (make install does)")
    if importlib.util.find_spec("tritonclient") is None:
        raise MissingDependencyError("tritonclient", "serving", "serve-check drives the server with its gRPC client",
                                     hint="pip install --no-deps tritonclient==2.73.0 grpcio python-rapidjson")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    install = TritonInstall(root / "bin" / "tritonserver", root / "backends", root / "python_backend_stubs",
                            root.parent.parent / "nvidia_pytriton.libs")
    if not install.binary.is_file():
        raise UnsupportedError("the nvidia-pytriton wheel has no tritonserver here", f"{install.binary} is missing",
                               "reinstall nvidia-pytriton==0.7.0 (Linux x86-64 / aarch64 wheels)")
    return install


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _python_backend(install: TritonInstall, into: Path) -> Path:
    """A backend directory whose python/ holds the wheel's backend and the stub for this Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UnsupportedError(f"Triton's Python backend has no stub for Python {version}",
                               f"the wheel ships {', '.join(sorted(p.name for p in install.stubs.iterdir()))}",
                               "run onnxsmith with one of those Python versions")
    python = into / "python"
    python.mkdir(parents=True)
    for item in (install.backends / "python").iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    (python / stub.name).symlink_to(stub)
    return into


@contextlib.contextmanager
def triton_server(repository: Path, model: str, timeout_s: float = 180) -> Iterator[str]:
    """Start tritonserver on 127.0.0.1 (free ports) serving ``repository``; yields the gRPC address once
    ``model`` is ready; stops the server (and its Python-backend stubs, its own process group) on exit."""
    install = triton_install()
    import tritonclient.grpc as grpcclient

    scratch = Path(tempfile.gettempdir())
    sweep_once(scratch)  # a SIGKILLed serve-check's folder (its owner is in the name: see cache.sweep_stale)
    with tempfile.TemporaryDirectory(prefix=f"onnxsmith-triton-{owner_tag()}-", dir=scratch) as work:
        backends = _python_backend(install, Path(work) / "backends")
        http, grpc, metrics = _free_port(), _free_port(), _free_port()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), env.get("LD_LIBRARY_PATH")) if p)
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        env["ONNXSMITH_PYTHONPATH"] = os.pathsep.join(paths)  # read by model.py: the stub embeds the system libpython
        env["ONNXSMITH_SITE_DIRS"] = os.pathsep.join(p for p in paths if p.endswith("-packages"))
        log_path = Path(work) / "tritonserver.log"
        command = [str(install.binary), "--model-repository", str(repository), "--backend-directory", str(backends),
                   "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1",
                   "--grpc-port", str(grpc), "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
                   "--allow-metrics", "false", "--exit-on-error", "true", "--log-info", "true"]
        with open(log_path, "wb") as log:
            proc = Child(command, grace_s=20, stdout=log, stderr=subprocess.STDOUT, env=env)
        address = f"127.0.0.1:{grpc}"
        try:
            client = grpcclient.InferenceServerClient(address)
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise BackendError("tritonserver stopped while loading the model", _log_tail(log_path),
                                       "see the log line above; `onnxsmith serve-check --debug` keeps nothing more")
                with contextlib.suppress(Exception):
                    if client.is_server_ready() and client.is_model_ready(model):
                        break
                if time.monotonic() > deadline:
                    raise BackendError("tritonserver did not get the model ready in time",
                                       f"{timeout_s:.0f} s; {_log_tail(log_path)}")
                time.sleep(0.25)
            yield address
        finally:
            proc.stop()  # the server and the Python-backend stubs it started (its process group)


def _log_tail(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E") or "rror" in line]
    return " | ".join((errors or lines)[-3:])[-600:] or "no output"


# --- load -----------------------------------------------------------------------------------------------------

def _stats(client: Any, model: str) -> dict[str, Any]:
    data = client.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
    stats = data.get("inference_stats", {})

    def ns(key: str) -> tuple[int, int]:
        entry = stats.get(key, {})
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    return {"executions": int(data.get("execution_count", 0)), "inferences": int(data.get("inference_count", 0)),
            "queue": ns("queue"), "compute": [ns("compute_input"), ns("compute_infer"), ns("compute_output")]}


def _delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, float]:
    executions = after["executions"] - before["executions"]
    queued = after["queue"][0] - before["queue"][0]
    compute_ns = sum(a[1] - b[1] for a, b in zip(after["compute"], before["compute"]))
    return {"executions": executions, "inferences": after["inferences"] - before["inferences"],
            "execution_ms": compute_ns / max(executions, 1) / 1e6,
            "queue_ms": (after["queue"][1] - before["queue"][1]) / max(queued, 1) / 1e6}


def _inputs(bundle: Bundle, batched: bool) -> tuple[list[Any], list[Any]]:
    """One request's inputs (one sample; the bundle's example input) and the requested outputs."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    example = bundle.path / "deploy" / "example"
    rng = np.random.default_rng(0)
    names = set(bundle.batch_inputs or ()) if batched else set()
    stems = quoting.file_stems(s.name for s in bundle.inputs)  # as compile wrote deploy/example/
    inputs = []
    for spec in bundle.inputs:
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if spec.name in names:
            shape[0] = 1
        file = example / f"{stems[spec.name]}.npy"
        value = np.load(file, allow_pickle=False) if file.is_file() else None
        if value is None or list(value.shape[1:]) != shape[1:]:
            value = rng.standard_normal(shape).astype(spec.dtype)
        value = np.ascontiguousarray(value[:1] if spec.name in names else value).astype(spec.dtype)
        item = grpcclient.InferInput(spec.name, list(value.shape), np_to_triton_dtype(value.dtype))
        item.set_data_from_numpy(value)
        inputs.append(item)
    return inputs, [grpcclient.InferRequestedOutput(s.name) for s in bundle.outputs]


def _percentiles(values: np.ndarray) -> dict[str, float]:
    import numpy as np

    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "mean_ms": float(values.mean())}


def probe(client: Any, model: str, inputs: list[Any], outputs: list[Any], requests: int = PROBE_REQUESTS
          ) -> dict[str, Any]:
    """Closed loop, one request at a time: client latency and Triton's per-execution time at batch 1."""
    import numpy as np

    for _ in range(20):  # warm up
        client.infer(model, inputs, outputs=outputs)
    before = _stats(client, model)
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        client.infer(model, inputs, outputs=outputs)
        latencies.append((time.perf_counter() - start) * 1000)
    server = _delta(_stats(client, model), before)
    return {"requests": requests, **_percentiles(np.asarray(latencies)), "server": server, "latencies_ms": latencies}


def saturate(client: Any, model: str, inputs: list[Any], outputs: list[Any], in_flight: int, seconds: float = 3.0
             ) -> dict[str, Any]:
    """Closed loop with ``in_flight`` requests outstanding: the throughput the server sustains while the client
    runs beside it, and Triton's per-execution time (and mean batch) under that load."""
    # The callbacks only hand back their slot: this thread sends every request. (A callback that sent the next one
    # itself ran inside gRPC's add_done_callback whenever the response had already arrived: under its own lock, it
    # deadlocked serve-check.)
    returned: queue.Queue[bool] = queue.Queue()

    def send() -> None:
        client.async_infer(model, inputs, outputs=outputs, callback=lambda result, error: returned.put(error is None))

    stop = time.perf_counter() + seconds
    before = _stats(client, model)
    start = time.perf_counter()
    for _ in range(in_flight):
        send()
    outstanding, done = in_flight, 0
    while outstanding:
        try:
            ok = returned.get(timeout=max(stop + 60 - time.perf_counter(), 0.001))
        except queue.Empty:
            break
        outstanding, done = outstanding - 1, done + ok
        if ok and time.perf_counter() < stop:  # a failed request gives its slot up
            send()
            outstanding += 1
    elapsed = time.perf_counter() - start
    server = _delta(_stats(client, model), before)
    return {"in_flight": in_flight, "seconds": elapsed, "throughput_per_s": done / elapsed if elapsed else 0.0,
            "mean_batch": server["inferences"] / max(server["executions"], 1), "server": server}


def poisson_load(client: Any, model: str, inputs: list[Any], outputs: list[Any], rate: float, seconds: float,
                 seed: int = 0) -> dict[str, Any]:
    """Open-loop Poisson arrivals at ``rate``/s for ``seconds`` (at most ``MAX_REQUESTS``), sent with
    ``async_infer``; each latency runs from the scheduled arrival to the response."""
    import numpy as np

    count = int(min(max(rate * seconds, 10), MAX_REQUESTS))
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, size=count))
    finished = np.full(count, np.nan)
    failures: list[str] = []
    lock = threading.Lock()
    remaining = [count]
    all_done = threading.Event()

    def callback(index: int, result: Any, error: Any) -> None:
        now = time.perf_counter()
        with lock:
            if error is not None:
                failures.append(str(error)[:200])
            else:
                finished[index] = now
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    before = _stats(client, model)
    start = time.perf_counter() + 0.05
    lag = np.zeros(count)
    for index, offset in enumerate(arrivals):
        due = start + offset
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        lag[index] = time.perf_counter() - due
        client.async_infer(model, inputs, outputs=outputs,
                           callback=lambda result, error, i=index: callback(i, result, error))
    if not all_done.wait(timeout=max(60.0, seconds * 4)):
        failures.append(f"{remaining[0]} requests had no answer in time")
    server = _delta(_stats(client, model), before)
    ok = ~np.isnan(finished)
    latency = (finished[ok] - (start + arrivals[ok])) * 1000
    span = float(np.nanmax(finished) - start) if ok.any() else 0.0
    if not ok.any():
        raise BackendError("no request of the load succeeded", failures[0] if failures else "no answer")
    return {"rate_per_s": rate, "seconds": seconds, "requests": count, "completed": int(ok.sum()),
            "failures": len(failures), "first_failure": failures[0] if failures else None,
            **_percentiles(latency), "throughput_per_s": float(ok.sum() / span) if span > 0 else 0.0,
            "mean_batch": server["inferences"] / max(server["executions"], 1),
            "sender_lag_p99_ms": float(np.percentile(lag, 99) * 1000), "server": server}


# --- the check ------------------------------------------------------------------------------------------------

def serve_check(bundle: Bundle, rate: float | None = None, seconds: float = 10.0, seed: int = 0,
                progress: Any = None) -> dict[str, Any]:
    """Serve ``bundle/serving/triton`` with Triton, measure, compare with the simulation; writes
    ``serving/serve-check.json`` and returns the record."""
    from onnxsmith.serving.batching import BatchPoint, BatchSweep, BatchingReport, plan_batching, simulate
    from onnxsmith.serving import FOLDER, served_sweep

    say = progress or (lambda message: None)
    if seconds <= 0 or (rate is not None and rate <= 0):
        raise UserInputError("invalid serve-check load", "--rate and --seconds must be positive")
    record_path = bundle.path / FOLDER / "serving.json"
    if not record_path.is_file():
        raise UserInputError(f"bundle '{bundle.path}' has no serving configuration",
                             "serving/serving.json is written from a batch sweep and its simulation",
                             f"run 'onnxsmith serving {bundle.path}' (after 'onnxsmith profile') or 'onnxsmith optimize'")
    plan = json.loads(record_path.read_text())
    name = plan["model"]
    sweep = BatchSweep.from_json(plan["sweep"])
    batch = plan.get("artifact_batch")
    max_batch = max(int(plan["max_batch_size"]), 1)
    dynamic = plan.get("dynamic_batching") or {}
    delay_ms = float(dynamic.get("max_queue_delay_microseconds", 0)) / 1000.0
    served = served_sweep(sweep, int(batch["max"]) if batch else 1, max_batch, bool(batch and batch["dynamic"]))
    t1 = served.service_ms(1)

    import tritonclient.grpc as grpcclient

    say("starting tritonserver on 127.0.0.1")
    with triton_server(bundle.path / FOLDER / "triton", name) as address:
        client = grpcclient.InferenceServerClient(address)
        inputs, outputs = _inputs(bundle, int(plan["max_batch_size"]) > 0)
        say("probing one request at a time")
        probed = probe(client, name, inputs, outputs)
        say("probing the server under a saturating closed loop")
        saturated = saturate(client, name, inputs, outputs, in_flight=2 * max_batch)
        # One request at a time, everything on the path (gRPC, the frontend, the Python backend's IPC, onnxsmith's
        # checks, the runtime) runs one after another: the probe's mean latency is the served batch-1 service time.
        # Its excess over the bundle's own batch-1 latency is fed back as a fixed cost per executed batch.
        batch_overhead = max(probed["mean_ms"] - t1, 0.0)
        samples = [max(v - t1, 0.0) for v in probed.pop("latencies_ms")]
        request_overhead = 0.0
        capacity = 1000.0 / (t1 + batch_overhead)
        load_rate = rate if rate is not None else 0.7 * capacity
        say(f"Poisson load at {load_rate:,.1f} requests/s for {seconds:g} s")
        measured = poisson_load(client, name, inputs, outputs, load_rate, seconds, seed)
    calibrated = simulate(served, load_rate, max_batch, delay_ms, seed=seed, batch_overhead_ms=batch_overhead,
                          request_overhead_ms=request_overhead, overhead_samples_ms=samples)
    fixed = simulate(served, load_rate, max_batch, delay_ms, seed=seed, batch_overhead_ms=batch_overhead,
                     request_overhead_ms=request_overhead)
    uncalibrated = simulate(served, load_rate, max_batch, delay_ms, seed=seed)
    # The same, with the overhead Triton measured during the load itself (its time per execution at the batch that
    # formed, minus the bundle's service time): how much of a gap CPU contention under load explains.
    formed = max(1, int(round(measured["mean_batch"])))
    load_overhead = max(measured["server"]["execution_ms"] - served.service_ms(formed), 0.0)
    under_load = simulate(served, load_rate, max_batch, delay_ms, seed=seed, batch_overhead_ms=load_overhead,
                          request_overhead_ms=request_overhead)
    with_overhead = BatchSweep(tuple(BatchPoint(p.batch, p.latency_p50_ms + batch_overhead) for p in served.points),
                               f"{served.step}, plus the measured {batch_overhead:.3f} ms per batch")
    budget = float(plan.get("p99_budget_ms") or 4 * t1)
    replanned: BatchingReport = plan_batching(with_overhead, load_rate, max(budget - request_overhead, 1e-3),
                                              requests=4000, seed=seed)
    ratio = measured["p99_ms"] / calibrated.p99_ms if calibrated.p99_ms > 0 else None
    result = {
        "server": "tritonserver (nvidia-pytriton 0.7.0 wheel), Python backend, 127.0.0.1",
        "model": name, "settings": {"max_batch_size": max_batch, "preferred_batch_size": dynamic.get(
            "preferred_batch_size"), "max_queue_delay_ms": delay_ms},
        "bundle_batch1_ms": t1, "probe": probed, "saturation": saturated,
        "overhead": {"batch_ms": batch_overhead, "request_ms": request_overhead,
                     "why": "the closed-loop client's mean batch-1 latency through the server minus the "
                            "bundle's own batch-1 latency (gRPC, Triton's frontend, the Python backend's IPC, "
                            "onnxsmith's input checks), fed back as a cost per executed batch (each batch draws one "
                            "of the probe's measured overheads, so their tail counts too); it assumes the "
                            "whole path is serial (the saturating probe's throughput shows how far it overlaps)"},
        "served_batch1_capacity_per_s": capacity, "rate_per_s": load_rate,
        "rate_note": "70 % of the served batch-1 capacity" if rate is None else "given with --rate",
        "measured": measured, "predicted": calibrated.to_json(), "predicted_without_overhead": uncalibrated.to_json(),
        "predicted_with_mean_overhead": fixed.to_json(),
        "predicted_with_overhead_under_load": {**under_load.to_json(), "batch_overhead_ms": load_overhead},
        "p99_ratio_measured_to_predicted": ratio,
        "within_25_percent": bool(ratio is not None and abs(ratio - 1) <= 0.25),
        "replanned_with_overhead": None if replanned.best is None else {
            "max_batch": replanned.best.max_batch, "max_delay_ms": replanned.best.max_delay_ms,
            "sustains_per_s": replanned.best.rate_per_s},
        "load_average": _loadavg(),
    }
    path = bundle.path / FOLDER / RESULT
    tmp = path.with_name(f".{RESULT}.{os.getpid()}.tmp")
    try:  # whole or not at all: a previous result survives an interrupt while writing
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    bundle.seal_records(FOLDER)  # the result, and what the server left there (Python byte code) with it
    return result


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().strip()
    return ""
