"""Shared TVM helpers: the lazy import, versions, bundle file names and vendor error text."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from onnxsmith.errors import BundleError, MissingDependencyError, first_line

LIBRARY = "model.so"
"""The exported shared library: Relax VM bytecode, constants (weights) and the generated kernels."""
IO_FILE = "io.json"
"""Inputs and outputs of the VM's ``main`` (names, dtypes, shapes), the target and the device to load on."""
TUNING_FILE = "tuning_records.json"
"""The MetaSchedule records applied to this artifact (one JSON line each), for reproducing the build."""

FFI_PIN = "0.1.14.post1"
"""apache-tvm-ffi release MetaSchedule works with (measured: newer ones segfault when serializing modules)."""

_NOISE = re.compile(r"^(Traceback|File \"|\s*\^|During handling|The above exception)")


def tvm() -> Any:
    """The ``tvm`` module, or :class:`MissingDependencyError` naming the extra."""
    try:
        import tvm as module
    except ImportError as exc:
        raise MissingDependencyError("apache-tvm", "tvm") from exc
    return module


@functools.lru_cache(maxsize=1)
def ffi_version() -> str:
    try:
        from importlib.metadata import version

        return version("apache-tvm-ffi")
    except Exception:  # not installed as a distribution (a source build): unknown
        return ""


def tvm_version() -> str:
    return str(tvm().__version__)


def vendor_why(exc: BaseException, limit: int = 300) -> str:
    """A TVM exception's message on one line, without traceback lines (TVM puts the C++ stack first)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    useful = [line for line in lines if line and not _NOISE.match(line)]
    # TVM errors end with the message proper ("...Error: what happened"); the C++ frames come before it.
    for line in reversed(useful):
        if "Error" in line or "error" in line or "Check failed" in line:
            text = line
            break
    else:
        text = useful[-1] if useful else first_line(exc)
    text = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_io(directory: Path) -> dict[str, Any]:
    """The artifact's ``io.json`` (its inputs and outputs as compiled)."""
    try:
        return json.loads((directory / IO_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {IO_FILE} of the TVM artifact", str(exc), "compile the bundle again") from exc
