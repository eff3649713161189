"""Batching: the measured batch-size sweep, and a dynamic-batching simulation built on it.

The simulation is a seeded discrete-event model of one server with a dynamic batcher (as in Triton or TorchServe):
requests arrive as a Poisson process at ``rate`` per second; when the server is free it dispatches a batch as soon
as ``max_batch`` requests wait, or when the oldest waiting request has waited ``max_delay_ms``, whichever comes
first (a request that arrives while the server is busy may be dispatched at once when it frees up). The service
time of a batch is the measured p50 latency of the batch size actually formed, interpolated linearly between the
measured sizes (and extrapolated from the last two above the largest). Latencies are end to end: queueing plus
service.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from onnxsmith.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class BatchPoint:
    """One measured batch size."""

    batch: int
    latency_p50_ms: float
    latency_p99_ms: float | None = None

    @property
    def throughput_per_s(self) -> float:
        return self.batch * 1000.0 / self.latency_p50_ms


@dataclasses.dataclass(frozen=True)
class BatchSweep:
    """Measured per-batch latencies of one artifact configuration."""

    points: tuple[BatchPoint, ...]
    step: str = ""
    """The ladder step whose configuration was swept."""

    def __post_init__(self) -> None:
        if not self.points:
            raise UserInputError("empty batch sweep", "at least one measured batch size is needed")
        batches = [p.batch for p in self.points]
        if len(set(batches)) != len(batches) or any(b < 1 for b in batches):
            raise UserInputError("invalid batch sweep", f"batch sizes must be distinct and positive, got {batches}")
        if any(p.latency_p50_ms <= 0 for p in self.points):
            raise UserInputError("invalid batch sweep", "latencies must be positive")
        object.__setattr__(self, "points", tuple(sorted(self.points, key=lambda p: p.batch)))

    @property
    def max_batch(self) -> int:
        return self.points[-1].batch

    def service_ms(self, batch: int) -> float:
        """Latency of a batch of ``batch`` requests, interpolated between measured sizes."""
        pts = self.points
        if len(pts) == 1:
            # One measurement: assume the time grows in proportion to the batch (no batching gain).
            return pts[0].latency_p50_ms * batch / pts[0].batch
        if batch <= pts[0].batch:
            lo, hi = pts[0], pts[1]
        elif batch >= pts[-1].batch:
            lo, hi = pts[-2], pts[-1]
        else:
            hi_index = next(i for i, p in enumerate(pts) if p.batch >= batch)
            lo, hi = pts[hi_index - 1], pts[hi_index]
        slope = (hi.latency_p50_ms - lo.latency_p50_ms) / (hi.batch - lo.batch)
        value = lo.latency_p50_ms + slope * (batch - lo.batch)
        return max(value, 1e-6)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "points": [{**dataclasses.asdict(p), "throughput_per_s": round(p.throughput_per_s, 3)}
                                              for p in self.points]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchSweep:
        return cls(tuple(BatchPoint(p["batch"], p["latency_p50_ms"], p.get("latency_p99_ms")) for p in data["points"]),
                   data.get("step", ""))


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """End-to-end figures of one dynamic-batching setting at one arrival rate."""

    rate_per_s: float
    max_batch: int
    max_delay_ms: float
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    mean_wait_ms: float
    """Mean time from arrival to dispatch."""
    throughput_per_s: float
    """Completed requests per second over the whole run (equals the rate unless the server saturates)."""
    mean_batch: float
    utilization: float
    """Fraction of the time the server was busy."""
    saturated: bool
    """The server could not keep up: the queue grew for the whole run and the latencies are not steady state."""
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def simulate(sweep: BatchSweep, rate_per_s: float, max_batch: int, max_delay_ms: float, *, requests: int = 20000,
             seed: int = 0, warmup: float = 0.1, batch_overhead_ms: float = 0.0,
             request_overhead_ms: float = 0.0, overhead_samples_ms: Sequence[float] | None = None) -> SimulationResult:
    """Simulate ``requests`` Poisson arrivals through the dynamic batcher; the first ``warmup`` fraction is dropped
    from the latency figures.

    ``batch_overhead_ms``: a server's fixed cost per executed batch on top of the measured service time (it keeps
    the server busy); ``request_overhead_ms``: latency every request spends outside the batcher (protocol,
    transfer), which does not occupy the server. Both are measured by ``onnxsmith serve-check``; 0 by default.
    ``overhead_samples_ms``: measured per-batch overheads; each batch draws one of them (seeded) instead of the fixed
    ``batch_overhead_ms``, so a measured tail (scheduling delays on a busy machine) reaches the simulated tail."""
    import numpy as np

    if rate_per_s <= 0 or max_batch < 1 or max_delay_ms < 0 or requests < 10 or batch_overhead_ms < 0 \
            or request_overhead_ms < 0:
        raise UserInputError("invalid batching simulation", "rate and requests must be positive, max batch >= 1 "
                             "and max delay >= 0")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1000.0 / rate_per_s, size=requests))  # ms
    service = [0.0] + [sweep.service_ms(b) + batch_overhead_ms for b in range(1, max_batch + 1)]
    draws = None
    if overhead_samples_ms is not None and len(overhead_samples_ms):
        samples = np.maximum(np.asarray(overhead_samples_ms, dtype=float), 0.0)
        draws = np.random.default_rng(seed + 1).choice(samples, size=requests) - batch_overhead_ms
    finish = np.empty(requests)
    dispatch = np.empty(requests)
    t_free = 0.0
    busy = 0.0
    batches = 0
    i = 0
    n = requests
    while i < n:
        first = arrivals[i]
        t0 = max(t_free, first)
        # requests waiting at t0 (including i)
        ready = int(np.searchsorted(arrivals, t0, side="right")) - i
        if ready >= max_batch:
            t_dispatch = t0
            size = max_batch
        else:
            deadline = first + max_delay_ms
            if t0 >= deadline:
                t_dispatch, size = t0, ready
            else:
                fill = arrivals[i + max_batch - 1] if i + max_batch - 1 < n else float("inf")
                t_dispatch = min(fill, deadline)
                if t_dispatch == float("inf"):  # the last requests of the run: nothing more will arrive
                    t_dispatch = deadline
                size = min(int(np.searchsorted(arrivals, t_dispatch, side="right")) - i, max_batch)
        s = service[size] if draws is None else max(service[size] + float(draws[batches]), 1e-6)
        finish[i:i + size] = t_dispatch + s
        dispatch[i:i + size] = t_dispatch
        t_free = t_dispatch + s
        busy += s
        batches += 1
        i += size
    latency = finish - arrivals + request_overhead_ms
    start = int(n * warmup)
    kept = latency[start:]
    span = finish[-1] - arrivals[0]
    throughput = n / span * 1000.0 if span > 0 else 0.0
    # Saturation: the wait of the last quarter is far above that of the second quarter (the queue keeps growing).
    waits = dispatch - arrivals
    q = n // 4
    late, early = float(waits[-q:].mean()), float(waits[q:2 * q].mean())
    saturated = busy / span > 0.995 and late > 2 * early + max_delay_ms + service[max_batch]
    return SimulationResult(
        rate_per_s=float(rate_per_s), max_batch=max_batch, max_delay_ms=float(max_delay_ms), requests=n,
        p50_ms=float(np.percentile(kept, 50)), p99_ms=float(np.percentile(kept, 99)), mean_ms=float(kept.mean()),
        mean_wait_ms=float(waits[start:].mean()), throughput_per_s=float(throughput), mean_batch=n / batches,
        utilization=float(min(busy / span, 1.0)) if span > 0 else 0.0, saturated=bool(saturated), seed=seed,
    )


def default_delays(sweep: BatchSweep) -> tuple[float, ...]:
    """Queue delays worth trying: 0, and fractions/multiples of the batch-1 service time."""
    base = sweep.service_ms(1)
    return (0.0, *sorted({round(base * f, 4) for f in (0.25, 0.5, 1.0, 2.0, 4.0)}))


def max_rate_under_budget(sweep: BatchSweep, p99_budget_ms: float, max_batch: int, max_delay_ms: float, *,
                          requests: int = 4000, seed: int = 0, iterations: int = 12) -> SimulationResult | None:
    """The highest arrival rate whose simulated p99 stays within the budget (bisection), or ``None`` when even a
    trickle of requests misses it."""
    capacity = max_batch * 1000.0 / sweep.service_ms(max_batch)
    lo, hi = 0.0, capacity
    best: SimulationResult | None = None
    floor = simulate(sweep, capacity * 0.01, max_batch, max_delay_ms, requests=requests, seed=seed)
    if floor.p99_ms > p99_budget_ms or floor.saturated:
        return None
    best, lo = floor, capacity * 0.01
    for _ in range(iterations):
        mid = (lo + hi) / 2
        result = simulate(sweep, mid, max_batch, max_delay_ms, requests=requests, seed=seed)
        if result.p99_ms <= p99_budget_ms and not result.saturated:
            best, lo = result, mid
        else:
            hi = mid
    return best


@dataclasses.dataclass(frozen=True)
class BatchingReport:
    """The sweep, every simulated setting at the arrival rate, and the best setting for the p99 budget."""

    sweep: BatchSweep
    rate_per_s: float
    p99_budget_ms: float
    settings: tuple[SimulationResult, ...]
    """Each (max batch, max delay) at ``rate_per_s``."""
    best: SimulationResult | None
    """The setting that sustains the highest rate with p99 within the budget (figures at that rate)."""
    best_at_rate: SimulationResult | None
    """The best setting's figures at ``rate_per_s``."""
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep.to_json(), "rate_per_s": round(self.rate_per_s, 4),
            "p99_budget_ms": round(self.p99_budget_ms, 4),
            "settings": [s.to_json() for s in self.settings],
            "best": None if self.best is None else self.best.to_json(),
            "best_at_rate": None if self.best_at_rate is None else self.best_at_rate.to_json(),
            "notes": list(self.notes),
        }


def plan_batching(sweep: BatchSweep, rate_per_s: float | None = None, p99_budget_ms: float | None = None, *,
                  batch_sizes: Sequence[int] | None = None, delays_ms: Sequence[float] | None = None,
                  requests: int = 20000, seed: int = 0) -> BatchingReport:
    """Simulate every (max batch, max delay) setting at ``rate_per_s`` and find the best one for the p99 budget.

    Defaults: the rate is 70 % of the batch-1 capacity; the budget is 4x the batch-1 latency; max batch sizes are
    the measured ones; delays come from :func:`default_delays`.
    """
    notes = []
    base = sweep.service_ms(1)
    if rate_per_s is None:
        rate_per_s = 0.7 * 1000.0 / base
        notes.append(f"arrival rate not given: {rate_per_s:,.1f}/s (70 % of the batch-1 capacity)")
    if p99_budget_ms is None:
        p99_budget_ms = 4 * base
        notes.append(f"p99 budget not given: {p99_budget_ms:.3f} ms (4x the batch-1 latency)")
    batch_sizes = tuple(batch_sizes or [p.batch for p in sweep.points])
    delays = tuple(delays_ms if delays_ms is not None else default_delays(sweep))
    if len(sweep.points) == 1:
        notes.append(f"only batch {sweep.points[0].batch} was measured: larger batches are assumed to take "
                     "proportionally longer (no batching gain)")
    if any(b > sweep.max_batch for b in batch_sizes):
        notes.append(f"batch sizes above {sweep.max_batch} use latencies extrapolated from the largest two measured")
    settings = tuple(simulate(sweep, rate_per_s, b, d, requests=requests, seed=seed)
                     for b in batch_sizes for d in (delays if b > 1 else (0.0,)))
    best: SimulationResult | None = None
    for b in batch_sizes:
        for d in delays if b > 1 else (0.0,):
            found = max_rate_under_budget(sweep, p99_budget_ms, b, d, seed=seed)
            if found is not None and (best is None or found.rate_per_s > best.rate_per_s * 1.001
                                      or (found.rate_per_s >= best.rate_per_s * 0.999 and found.p99_ms < best.p99_ms)):
                best = found
    best_at_rate = None
    if best is not None:
        best_at_rate = simulate(sweep, rate_per_s, best.max_batch, best.max_delay_ms, requests=requests, seed=seed)
    else:
        notes.append(f"no setting keeps p99 within {p99_budget_ms:.3f} ms even at a low rate")
    return BatchingReport(sweep, float(rate_per_s), float(p99_budget_ms), settings, best, best_at_rate, tuple(notes))
