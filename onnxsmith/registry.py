"""Backend discovery through the ``onnxsmith.compilers`` entry-point group.

Built-in backends register exactly like third-party ones (see ``pyproject.toml``). Loading an entry point
imports only the plugin's light module; whether the vendor library is usable is asked separately, so a
backend whose library is missing shows up as *unavailable* with the reason and the pip extra to install.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from importlib.metadata import entry_points

from onnxsmith.errors import BackendError, MissingDependencyError, OnnxsmithError, UserInputError, first_line
from onnxsmith.plugin import Compiler

GROUP = "onnxsmith.compilers"


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str = ""
    devices: tuple[str, ...] = ()
    reason: str = ""
    hint: str = ""
    artifact_kind: str = ""
    options: tuple[dict[str, object], ...] = ()
    """The backend's declared ``--option`` settings (:meth:`onnxsmith.options.Option.to_json`)."""


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def refresh() -> None:
    """Forget discovered plugins (after installing or removing one in this process, e.g. in tests)."""
    _entry_points.cache_clear()
    get_backend.cache_clear()


def backend_names() -> list[str]:
    return sorted(_entry_points())


@functools.lru_cache(maxsize=None)
def get_backend(name: str) -> Compiler:
    """The backend plugin ``name`` (its vendor library is not imported yet).

    Checked at load: the class subclasses :class:`~onnxsmith.plugin.Compiler` (whose definition already refused
    unknown, e.g. misspelt, hook names), its ``name`` equals the entry-point name, and it constructs without
    arguments. A plugin that fails any of these is a :class:`BackendError` naming it (exit 4)."""
    eps = _entry_points()
    if name not in eps:
        close = difflib.get_close_matches(name, eps, n=1)
        raise UserInputError(f"unknown backend '{name}'", f"installed backends: {', '.join(sorted(eps)) or 'none'}",
                             f"did you mean '{close[0]}'?" if close else
                             "check the spelling, or install the plugin package that provides it")
    where = f"backend plugin '{name}' ({getattr(eps[name], 'value', '?')})"
    try:
        cls = eps[name].load()  # type: ignore[attr-defined]
    except Exception as exc:  # a broken third-party plugin must not break the CLI
        raise BackendError(f"{where} failed to load", first_line(exc),
                           "reinstall the plugin, or run with --debug for the traceback") from exc
    if not (isinstance(cls, type) and issubclass(cls, Compiler)):
        raise BackendError(f"{where} is not a backend", "the entry point must name a subclass of "
                           "onnxsmith.plugin.Compiler", "see the README's 'Writing a backend'")
    if cls.name != name:
        raise BackendError(f"{where} is misnamed", f"its class says name = {cls.name!r}, its entry point "
                           f"{name!r}; bundles record the name and are loaded by it", "make the two equal")
    try:
        return cls()
    except Exception as exc:
        raise BackendError(f"{where} cannot be constructed", f"{type(exc).__name__}: {first_line(exc)}",
                           "a backend's constructor takes no arguments and imports no vendor library") from exc


def backend_status(name: str, probe_devices: bool = True) -> BackendStatus:
    """Whether a backend is usable here, and why not (with the backend's own install hint)."""
    try:
        backend = get_backend(name)
    except OnnxsmithError as exc:
        return BackendStatus(name, False, reason=f"{exc.what}: {exc.why}" if exc.why else exc.what, hint=exc.hint)
    options = tuple(o.to_json() for o in backend.options)
    base = {"artifact_kind": backend.artifact_kind, "options": options}
    try:
        backend.check_environment()
        devices = tuple(backend.devices()) if probe_devices else ()
        return BackendStatus(name, True, backend.version(), devices, **base)  # type: ignore[arg-type]
    except MissingDependencyError as exc:
        return BackendStatus(name, False, reason=exc.what, hint=exc.hint, **base)  # type: ignore[arg-type]
    except OnnxsmithError as exc:
        return BackendStatus(name, False, reason=f"{exc.what}: {exc.why}" if exc.why else exc.what, hint=exc.hint,
                             **base)  # type: ignore[arg-type]
    except Exception as exc:  # vendor libraries fail in many ways (driver missing, ABI mismatch...)
        return BackendStatus(name, False, reason=first_line(exc), hint=backend.install_command(),
                             **base)  # type: ignore[arg-type]
