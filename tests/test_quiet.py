"""Measuring processes are timed alone: the gate waits for real spinning processes to go idle, and a profile keeps
what it waited and whether its own runs agree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxsmith.profiling import quiet
from onnxsmith.profiling.run import rounds_disagree

SPIN = "import sys, time\nend = time.perf_counter() + float(sys.argv[1])\nwhile time.perf_counter() < end: pass\n" \
       "print('done', flush=True)\ntime.sleep(60)\n"

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def _spinner(seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)], stdout=subprocess.PIPE, text=True)


def test_cpu_seconds_counts_every_thread_of_a_spinning_process() -> None:
    proc = _spinner(0.4)
    try:
        proc.stdout.readline()  # it spun 0.4 s (wall) on one core
        used = quiet.cpu_seconds(proc.pid)
        assert used is not None and 0.1 < used < 2.0, used
    finally:
        proc.kill()
        proc.wait()
    assert quiet.cpu_seconds(proc.pid) is None  # gone


def test_settle_waits_until_a_spinning_process_goes_idle() -> None:
    proc = _spinner(0.5)
    try:
        time.sleep(0.05)
        start = time.perf_counter()
        waited, settled = quiet.settle([proc.pid])
        assert settled and waited >= 0.2, waited  # it waited for the spin to end, not a fixed pause
        assert proc.stdout.readline().strip() == "done"
        assert time.perf_counter() - start >= waited - 1e-3  # waited is rounded to 0.1 ms
        waited, settled = quiet.settle([proc.pid])  # now idle (sleeping): no wait beyond one window
        assert settled and waited < 0.2, waited
    finally:
        proc.kill()
        proc.wait()


def test_settle_gives_up_on_a_process_that_never_idles_and_alone_records_it() -> None:
    proc = _spinner(30)
    try:
        time.sleep(0.05)
        waited, settled = quiet.settle([proc.pid], max_wait_s=0.3)
        assert not settled and 0.3 <= waited < 1.5, waited
        with quiet.alone([proc.pid]) as record:
            time.sleep(0.3)
        assert not record["settled"] and record["others_cores"] > quiet.DISTURBED_CORES, record  # it ran beside us
        summary = quiet.summary([record])
        assert summary is not None and summary["disturbed"] and summary["unsettled"] == 1
    finally:
        proc.kill()
        proc.wait()


def test_rounds_disagree_only_outside_the_runs_range() -> None:
    assert rounds_disagree(30.0, [29.0, 31.7]) is None
    assert rounds_disagree(31.0, [29.0, 30.0]) is None  # within 5 % of the range
    line = rounds_disagree(51.1, [29.0, 29.6, 31.7])
    assert line and "51.100" in line and "29.000 .. 31.700" in line
    assert rounds_disagree(20.0, [29.0, 31.7])
    assert rounds_disagree(10.0, []) is None
    assert rounds_disagree(0.021, [0.023, 0.025]) is None  # microseconds apart: timer jitter, not a disturbance


def test_a_profile_records_how_its_runners_were_kept_apart(bundle: Path) -> None:
    import json

    from click.testing import CliRunner

    from onnxsmith.cli import cli

    result = CliRunner().invoke(cli, ["profile", str(bundle), "-p", "quick", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    isolation = record["environment"]["isolation"]
    rounds = record["measure"]["rounds"]
    # the artifact's and the baseline's measurements, then each interleaved run of each side
    assert isolation["timed_sections"] == 2 + 2 * rounds, isolation
    assert {"max_wait_s", "unsettled", "max_others_cores", "disturbed"} <= set(isolation)
