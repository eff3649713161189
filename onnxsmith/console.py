"""Terminal output: rich tables and progress on stderr, plain JSON on stdout for ``--json``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def printable(text: object) -> str:
    """``text`` for plain terminal output (``click.echo``, no markup): every control character except newline and
    tab becomes a visible escape (``\\x1b``), so a name holding ESC, BEL or CR cannot restyle, retitle or overwrite
    the terminal."""
    return _visible(text, keep="\n\t")


def _visible(text: object, keep: str = "") -> str:
    return "".join(ch if ch.isprintable() or ch in keep else ascii(ch)[1:-1] for ch in str(text))


def shown(text: object) -> str:
    """A user-supplied string (a model, tensor or file name, metadata) made safe to print through rich: control
    characters become visible escapes (``\\x1b``, ``\\n``) so nothing reaches the terminal raw, and rich markup
    (``[/bold]``) is escaped so it prints as written instead of styling or crashing the print."""
    from rich.markup import escape

    return escape(_visible(text))


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def print_json(data: Any) -> None:
    from onnxsmith.bundle import json_default

    sys.stdout.write(json.dumps(data, indent=2, default=json_default, allow_nan=False) + "\n")


@contextlib.contextmanager
def progress(title: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time on stderr (only on a terminal); yields ``update(message)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda message: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=stderr_console(), transient=True) as bar:
        task = bar.add_task(shown(title), total=None)
        start = time.monotonic()

        def update(message: str) -> None:
            bar.update(task, description=shown(message))

        yield update
        bar.update(task, description=f"{shown(title)} done in {time.monotonic() - start:.1f} s")
