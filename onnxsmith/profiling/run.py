"""Profile one bundle beside the ONNX Runtime fp32 baseline, in one run: its inputs, each point of a shape range,
the interleaved comparison, the record."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.profiling import quiet
from onnxsmith.profiling.environment import LoadWatch, environment
from onnxsmith.profiling.record import Measurement, ProfileResult
from onnxsmith.profiling.worker import interleave
from onnxsmith.profiling.stats import compare_runs

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.model import TensorSpec
    from onnxsmith.profiles import Profile


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
    from onnxsmith.data.dataset import Dataset, check_against_model, synthetic
    from onnxsmith.profiling.pool import reference_model

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
    from onnxsmith.data.dataset import feed_batch, save_npz
    from onnxsmith.model import load_model

    target = bundle.target()
    if remote:
        from onnxsmith.registry import get_backend

        check_rpc_address(remote)
        if not get_backend(bundle.backend).remote_profiling:
            from onnxsmith.errors import UnsupportedError

            raise UnsupportedError(f"backend '{bundle.backend}' cannot profile remotely (--rpc {remote})",
                                   "it has no RPC runner", "profile on the device itself")
    else:
        from onnxsmith.registry import get_backend

        runs = get_backend(bundle.backend).runs_here(target)
        if not runs:
            from onnxsmith.errors import UnsupportedError

            raise UnsupportedError(f"cannot profile the {target.id} bundle here", runs.reason, runs.hint)
    from onnxsmith.build.cache import owner_tag

    points = points or range_points(bundle)
    headline = next((i for i, (label, _) in enumerate(points) if label == "compiled" or "opt" in label.split("=")),
                    len(points) - 1)
    watch = LoadWatch()
    comparison = None
    measure = profile.measure
    limit = measure.max_seconds * 2 + measure.throughput_seconds + 600
    measured = []
    from onnxsmith.profiling.pool import WorkerPool

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
        isolation = quiet.summary([r for w in pool.workers.values() for r in w.isolation])
    if comparison is not None:
        disagreement = rounds_disagree(measured[headline][5]["latency_ms"]["p50"], comparison["artifact_runs_p50_ms"])
        if disagreement:
            comparison["disagreement"] = disagreement
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
        environment=environment() | watch.finish() | {"isolation": isolation}, comparison=comparison,
        measured_peak_tflops=None if remote or target.kind != "cpu" else _measured_peak(precision_used),
    )


AGREEMENT = 0.05
"""The main measurement's p50 may lie this far outside the range of the interleaved runs' medians ..."""
AGREEMENT_MS = 0.005
"""... plus this much (a model that runs in microseconds moves by more than 5 % between two loops)."""


def rounds_disagree(main_p50: float, runs_p50: list[float]) -> str | None:
    """One line when the main measurement's p50 lies more than :data:`AGREEMENT` outside the range of the
    interleaved runs' medians of the same runner in the same profile (something changed between them), else None."""
    if not runs_p50:
        return None
    low, high = min(runs_p50), max(runs_p50)
    if low * (1 - AGREEMENT) - AGREEMENT_MS <= main_p50 <= high * (1 + AGREEMENT) + AGREEMENT_MS:
        return None
    return (f"this profile's own runs disagree: the main measurement's p50 {main_p50:.3f} ms lies outside its "
            f"interleaved runs' medians ({low:.3f} .. {high:.3f} ms) by more than {AGREEMENT:.0%}: the machine "
            "changed between them (another process, frequency, thermal state); measure again")


def _shape_words(specs: tuple[TensorSpec, ...], bundle: Bundle) -> str:
    ranges = bundle.shape_ranges
    return ", ".join(f"{s.name} {s.shape_text()}" for s in specs if s.name in ranges)


def _measured_peak(precision: str) -> float | None:
    """This CPU's peak from ``onnxsmith probe`` (stored per device fingerprint), when it was probed."""
    from onnxsmith.profiling.peaks import measured_peak

    try:
        return measured_peak(precision)
    except Exception:  # a damaged peaks file never fails a profile
        return None
