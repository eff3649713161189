"""The confidence interval every timing decision goes through: deterministic, honest about noise, paired when
the runs were interleaved."""

from __future__ import annotations

import numpy as np
import pytest

from onnxsmith.profiling.stats import NO_CHANGE, block_medians, compare_runs, is_busy


def test_the_interval_is_seeded_and_covers_the_ratio() -> None:
    rng = np.random.default_rng(0)
    a, b = 10 * (1 + 0.02 * rng.standard_normal(10)), 12 * (1 + 0.02 * rng.standard_normal(10))
    ci = compare_runs(a, b)
    assert ci == compare_runs(a, b)  # same runs, same seed: the same interval
    assert ci.low <= ci.ratio <= ci.high and ci.ratio == pytest.approx(float(np.median(a) / np.median(b)), rel=1e-5)
    assert ci.significant and ci.verdict() == "better" and ci.verdict(lower_is_better=False) == "worse"
    assert ci.paired and ci.runs_a == ci.runs_b == 10
    assert "10 interleaved runs each" in ci.text() and "95 % CI" in ci.text()


def test_a_difference_inside_the_jitter_is_no_significant_change() -> None:
    rng = np.random.default_rng(1)
    a, b = 10 * (1 + 0.03 * rng.uniform(-1, 1, 8)), 10.07 * (1 + 0.03 * rng.uniform(-1, 1, 8))
    ci = compare_runs(a, b)
    assert ci.low < 1 < ci.high and not ci.significant and ci.verdict() == NO_CHANGE


def test_pairing_cancels_drift_that_hits_both_sides() -> None:
    # the machine got busier run after run (x1 .. x1.5); B is 3 % slower than A in every round
    drift = np.linspace(1.0, 1.5, 8)
    a, b = 10 * drift, 10.3 * drift
    paired, unpaired = compare_runs(a, b), compare_runs(a, b, paired=False)
    assert paired.significant and paired.high < 1
    assert not unpaired.significant  # without the pairing the drift swamps the 3 %


def test_blocks_and_bad_input() -> None:
    samples = list(np.linspace(1, 2, 1000))
    blocks = block_medians(samples, 20)
    assert len(blocks) == 20 and blocks == sorted(blocks)
    assert block_medians([1.0, 2.0], 20) == [1.5]  # too few samples for blocks: one
    with pytest.raises(ValueError):
        compare_runs([], [1.0])
    with pytest.raises(ValueError):
        compare_runs([1.0, float("nan")], [1.0, 1.0])
    one = compare_runs([5.0], [10.0])
    assert one.ratio == 0.5 and one.low == one.high == 0.5 and not one.paired


def test_busy() -> None:
    assert is_busy(1.5, 2) and not is_busy(0.3, 2) and not is_busy(None, 2) and not is_busy(2.0, 2, own_threads=2)


def test_a_measurement_is_busy_by_what_other_processes_used_during_it() -> None:
    from onnxsmith.profiling.environment import was_busy

    # a load average of 1.8 left by our own previous profile, other processes 1 % during the run: quiet
    assert not was_busy(1.8, 2, 0.01)
    assert was_busy(0.2, 2, 0.4)  # others took 40 % of the CPU time during the run
    assert was_busy(1.8, 2, None) and not was_busy(0.3, 2, None)  # /proc/stat not readable: the load average
