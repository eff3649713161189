"""Dynamic-batching simulation: checked against queueing theory and against the batcher's own rules."""

from __future__ import annotations

import pytest

from onnxsmith.errors import UserInputError
from onnxsmith.serving.batching import BatchPoint, BatchSweep, max_rate_under_budget, plan_batching, simulate


def _md1_wait_ms(rate_per_s: float, service_ms: float) -> float:
    """M/D/1 mean time in queue: rho / (2 mu (1 - rho))."""
    mu = 1000.0 / service_ms
    rho = rate_per_s / mu
    return rho / (2 * mu * (1 - rho)) * 1000.0


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_batch_one_matches_md1_mean_wait(rho: float) -> None:
    service = 10.0
    rate = rho * 1000.0 / service
    result = simulate(BatchSweep((BatchPoint(1, service),)), rate, max_batch=1, max_delay_ms=0.0,
                      requests=200_000, seed=3)
    expected = _md1_wait_ms(rate, service)
    assert result.mean_wait_ms == pytest.approx(expected, rel=0.06)
    assert result.mean_ms == pytest.approx(expected + service, rel=0.05)
    assert result.utilization == pytest.approx(rho, rel=0.02)
    assert result.throughput_per_s == pytest.approx(rate, rel=0.02)
    assert not result.saturated
    assert result.mean_batch == 1.0


def test_service_time_interpolates_between_measured_sizes() -> None:
    sweep = BatchSweep((BatchPoint(8, 20.0), BatchPoint(1, 10.0), BatchPoint(4, 14.0)))
    assert [p.batch for p in sweep.points] == [1, 4, 8]
    assert sweep.service_ms(1) == 10.0
    assert sweep.service_ms(2) == pytest.approx(10.0 + 4.0 / 3)
    assert sweep.service_ms(6) == pytest.approx(17.0)
    assert sweep.service_ms(16) == pytest.approx(20.0 + 1.5 * 8)  # extrapolated from the last two
    assert sweep.points[2].throughput_per_s == pytest.approx(400.0)


def test_low_rate_with_a_queue_delay_waits_the_delay() -> None:
    # At 1 request/s almost every request is alone: it waits the full delay, then is served as a batch of 1.
    sweep = BatchSweep((BatchPoint(1, 2.0), BatchPoint(8, 6.0)))
    result = simulate(sweep, 1.0, max_batch=8, max_delay_ms=5.0, requests=2000, seed=0)
    assert result.p50_ms == pytest.approx(7.0, abs=1e-6)
    assert result.mean_batch == pytest.approx(1.0, abs=0.02)


def test_a_full_batch_is_dispatched_without_waiting_for_the_delay() -> None:
    # Far more arrivals than the server handles alone: batches fill to 8 long before a 1 s delay.
    sweep = BatchSweep((BatchPoint(1, 10.0), BatchPoint(8, 20.0)))
    result = simulate(sweep, 300.0, max_batch=8, max_delay_ms=1000.0, requests=20000, seed=1)
    assert result.mean_batch > 7.5
    assert result.p99_ms < 100.0
    assert not result.saturated


def test_overload_is_reported_as_saturated_at_capacity() -> None:
    sweep = BatchSweep((BatchPoint(1, 10.0),))  # capacity 100/s
    result = simulate(sweep, 150.0, max_batch=1, max_delay_ms=0.0, requests=20000, seed=0)
    assert result.saturated
    assert result.throughput_per_s == pytest.approx(100.0, rel=0.01)


def test_batching_serves_a_rate_that_batch_one_cannot() -> None:
    sweep = BatchSweep((BatchPoint(1, 10.0), BatchPoint(8, 20.0)))  # 100/s alone, 400/s in batches of 8
    alone = simulate(sweep, 200.0, max_batch=1, max_delay_ms=0.0, requests=20000, seed=0)
    batched = simulate(sweep, 200.0, max_batch=8, max_delay_ms=5.0, requests=20000, seed=0)
    assert alone.saturated
    assert not batched.saturated
    assert batched.throughput_per_s == pytest.approx(200.0, rel=0.03)


def test_simulation_is_seeded() -> None:
    sweep = BatchSweep((BatchPoint(1, 3.0), BatchPoint(4, 6.0)))
    a = simulate(sweep, 300.0, 4, 1.0, requests=5000, seed=7)
    b = simulate(sweep, 300.0, 4, 1.0, requests=5000, seed=7)
    c = simulate(sweep, 300.0, 4, 1.0, requests=5000, seed=8)
    assert a == b
    assert a.p99_ms != c.p99_ms


def test_plan_finds_the_setting_that_sustains_the_most_under_the_budget() -> None:
    sweep = BatchSweep((BatchPoint(1, 10.0), BatchPoint(8, 20.0)), step="x")
    report = plan_batching(sweep, rate_per_s=150.0, p99_budget_ms=80.0, delays_ms=(0.0, 5.0), requests=5000)
    assert report.best is not None and report.best_at_rate is not None
    assert report.best.max_batch == 8  # batch 1 cannot go past 100/s
    assert report.best.rate_per_s > 150.0
    assert report.best.p99_ms <= 80.0
    assert report.best_at_rate.rate_per_s == 150.0 and report.best_at_rate.p99_ms <= 80.0
    single = max_rate_under_budget(sweep, 80.0, 1, 0.0)
    assert single is not None and single.rate_per_s < 100.0 < report.best.rate_per_s
    data = report.to_json()
    assert data["sweep"]["step"] == "x" and len(data["settings"]) == 1 + 2  # batch 1 once, batch 8 per delay


def test_plan_says_when_no_setting_meets_the_budget() -> None:
    sweep = BatchSweep((BatchPoint(1, 10.0),))
    report = plan_batching(sweep, rate_per_s=10.0, p99_budget_ms=5.0, requests=2000)
    assert report.best is None
    assert any("no setting keeps p99 within" in n for n in report.notes)


def test_invalid_sweeps_are_refused() -> None:
    with pytest.raises(UserInputError, match="distinct"):
        BatchSweep((BatchPoint(1, 1.0), BatchPoint(1, 2.0)))
    with pytest.raises(UserInputError, match="positive"):
        BatchSweep((BatchPoint(1, 0.0),))
    with pytest.raises(UserInputError):
        simulate(BatchSweep((BatchPoint(1, 1.0),)), 0.0, 1, 0.0)
