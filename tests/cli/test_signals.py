"""The CLI's signal handlers: a Ctrl-C or SIGTERM that lands while a module imports waits for the import to finish
(raised inside a vendor extension's initialisation it became 'not installed', a C++ abort or an exit by SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import signal, sys, time
    from onnxsmith import cli
    signal.signal(signal.SIGINT, cli._on_sigint)
    signal.signal(signal.SIGTERM, cli._on_sigterm)
    print("start", flush=True)
    try:
        import slow_import
        print("imported", slow_import.DONE, flush=True)
        time.sleep(30)
    except KeyboardInterrupt:
        print("interrupted after the import", flush=True)
        sys.exit(130)
    except cli.Terminated:
        print("terminated after the import", flush=True)
        sys.exit(143)
""")


def _start(tmp_path: Path, module: str) -> subprocess.Popen[str]:
    """PROGRAM in a child, importing ``module`` as slow_import; returns once it printed 'start'."""
    (tmp_path / "slow_import.py").write_text(module)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "start"
    return proc


@pytest.mark.parametrize(("sig", "word", "code"), [(signal.SIGINT, "interrupted", 130),
                                                   (signal.SIGTERM, "terminated", 143)])
def test_a_signal_during_an_import_waits_for_it(tmp_path: Path, sig: int, word: str, code: int) -> None:
    proc = _start(tmp_path, "import time\ntime.sleep(1.5)\nDONE = 'whole'\n")
    time.sleep(0.5)  # inside the import's sleep
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert out.splitlines() == ["imported whole", f"{word} after the import"], err


def test_a_signal_outside_an_import_is_raised_at_once(tmp_path: Path) -> None:
    proc = _start(tmp_path, "DONE = 'whole'\n")
    assert proc.stdout.readline().strip() == "imported whole"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert out.strip() == "interrupted after the import"
    assert time.monotonic() - started < 5  # not the 30 s sleep
