"""The machine a profile ran on and how busy it was while we measured."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from onnxsmith.profiling.stats import is_busy


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
    """One line when the machine was busy while measuring, or a runner was timed beside another measuring process
    that had not gone idle, else None."""
    isolation = env.get("isolation") or {}
    if not env.get("busy") and isolation.get("disturbed"):
        return (f"a runner was timed while another measuring process was not idle (up to "
                f"{isolation['max_others_cores']:.2f} cores used beside it; {isolation['unsettled']} of "
                f"{isolation['timed_sections']} timed sections started before the others settled): timings are "
                "noisy; measure again on a quiet machine")
    if not env.get("busy"):
        return None
    parts = []
    if env.get("load_average_before") is not None:
        parts.append(f"load average {env['load_average_before']} before the run on {env.get('usable_cores')} cores")
    if env.get("other_processes_cpu_share") is not None:
        parts.append(f"other processes used {env['other_processes_cpu_share'] * 100:.0f} % of the CPU time during it")
    return ("the machine was busy while measuring (" + "; ".join(parts) + "): timings are noisy; compare ratios "
            "measured in the same run, or measure again on a quiet machine")
