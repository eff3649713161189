"""Measuring processes never compute or spin at the same time: before one is timed, the others must have gone idle,
and the CPU time they (and the parent) used while it was timed is recorded beside the figure.

ONNX Runtime's intra-op threads keep spinning after a run (``session.intra_op.allow_spinning``, on by default):
measured here, 60 ms of near-full-core spinning after the last run of a small model, longer than any fixed pause
would safely cover on every CPU (the spin is a count of ``pause`` instructions, whose cost differs between Intel
and AMD cores). So instead of a fixed pause the parent watches the other processes' CPU time (every thread's, from
``/proc/PID/task/*/schedstat`` in nanoseconds) and starts the timed section once they used under
:data:`IDLE_SHARE` of a core over :data:`WINDOW_S` and none of their threads is runnable, waiting at most
:data:`MAX_WAIT_S`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

WINDOW_S = 0.01
IDLE_SHARE = 0.05
"""A process counts as idle when it used under 5 % of one core in a window (reading a pipe, a watchdog tick)."""
MAX_WAIT_S = 2.0
DISTURBED_CORES = 0.05
"""Other measuring processes (and the parent) using more than this many cores while one was timed disturbed it."""


def cpu_seconds(pid: int) -> float | None:
    """CPU time of every thread of ``pid`` so far; None when it is gone or unreadable."""
    task = Path(f"/proc/{pid}/task")
    try:
        threads = os.listdir(task)
    except OSError:
        return None
    total = 0
    for thread in threads:
        try:
            total += int((task / thread / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9


def _total(pids: Sequence[int]) -> float:
    return sum(c for c in (cpu_seconds(p) for p in pids) if c is not None)


def runnable(pid: int) -> bool:
    """Whether a thread of ``pid`` is running or waiting for a core (state R): a spinning thread always is, one
    blocked on a pipe or a condition is not. (On a loaded machine a spinning process may get no CPU time for a
    window, so time used alone could call it idle.)"""
    task = Path(f"/proc/{pid}/task")
    try:
        threads = os.listdir(task)
    except OSError:
        return False
    for thread in threads:
        try:
            text = (task / thread / "stat").read_text()
        except OSError:
            continue
        if text[text.rindex(")") + 2:].startswith("R"):
            return True
    return False


def settle(pids: Sequence[int], max_wait_s: float = MAX_WAIT_S) -> tuple[float, bool]:
    """Wait until ``pids`` together use under :data:`IDLE_SHARE` of a core over one window; returns (seconds
    waited, whether they settled before ``max_wait_s``)."""
    start = time.perf_counter()
    if not pids or not Path("/proc/self/task").is_dir():
        return 0.0, True
    before = _total(pids)
    while True:
        t0 = time.perf_counter()
        time.sleep(WINDOW_S)
        now = _total(pids)
        used, window = now - before, time.perf_counter() - t0
        before = now
        if used < IDLE_SHARE * window and not any(runnable(p) for p in pids):
            return round(time.perf_counter() - start, 4), True
        if time.perf_counter() - start >= max_wait_s:
            return round(time.perf_counter() - start, 4), False


@contextlib.contextmanager
def alone(others: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Time something with ``others`` (the other measuring processes) idle: settles them first, then yields a
    record that, on exit, holds the wait and the cores the others and this (parent) process used meanwhile."""
    waited, settled = settle(others)
    watched = [*others, os.getpid()]
    record: dict[str, Any] = {"waited_s": waited, "settled": settled}
    before, start = _total(watched), time.perf_counter()
    try:
        yield record
    finally:
        wall = time.perf_counter() - start
        record["others_cores"] = round((_total(watched) - before) / wall, 4) if wall > 0 else 0.0


def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What a profile keeps of its timed sections' isolation: how many, the longest wait, how many did not settle,
    the most cores the others used during one."""
    if not records:
        return None
    worst = max(r.get("others_cores", 0.0) for r in records)
    return {"timed_sections": len(records), "max_wait_s": max(r["waited_s"] for r in records),
            "unsettled": sum(not r["settled"] for r in records), "max_others_cores": worst,
            "disturbed": worst > DISTURBED_CORES or any(not r["settled"] for r in records)}
