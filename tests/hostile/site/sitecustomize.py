"""Loaded at start-up by every Python process the hostile suite starts (``PYTHONPATH`` names this folder), the
CLI and the compiling and measuring children it spawns alike.

* ``ONNXSMITH_AUDIT_LOG=PREFIX``: record every path the process opens (``sys.addaudithook``, event ``open``) in
  ``PREFIX.<pid>``, one ``path<TAB>mode`` per line, so a test can check nothing outside the model folder, the
  bundle, the data and the cache was read.
* ``ONNXSMITH_TEST_BACKENDS=name=module:Class,...``: register test backends beside the installed ones, as an
  installed plugin's entry point would (``onnxsmith.registry._entry_points``).
"""

from __future__ import annotations

import os
import sys

_log = os.environ.get("ONNXSMITH_AUDIT_LOG")
if _log:
    _out = open(f"{_log}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 - open for the process's lifetime

    def _hook(event: str, args: tuple) -> None:
        if event != "open":
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str):
            try:
                _out.write(f"{os.path.abspath(path)}\t{args[1]}\n")
            except (OSError, ValueError):
                pass

    sys.addaudithook(_hook)

_backends = os.environ.get("ONNXSMITH_TEST_BACKENDS")
if _backends:
    import functools
    from importlib.metadata import EntryPoint

    import onnxsmith.registry as _registry

    _installed = _registry._entry_points

    @functools.lru_cache(maxsize=1)
    def _with_test_backends() -> dict[str, object]:
        eps = dict(_installed())
        for item in _backends.split(","):
            name, _, value = item.partition("=")
            eps[name] = EntryPoint(name, value, _registry.GROUP)
        return eps

    _registry._entry_points = _with_test_backends
