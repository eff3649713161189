"""Error hierarchy and exit codes.

Every error a user can cause is an :class:`OnnxsmithError`; its message reads
``what failed: why. Hint: fix``. Anything else escaping to the CLI is a bug in
onnxsmith (exit code 1, traceback with ``--debug``).

Exit codes (documented in the README):

== =====================================================================
0  success
1  internal error (a bug: please report it with ``--debug`` output)
2  bad input: model, data, target, profile, bundle or option
3  missing dependency: a backend's library is not installed
4  backend failure: the vendor compiler or runtime raised, or the PyTorch exporter could not handle the model
5  unsupported here: the target or precision cannot run on this machine
6  check failed: validation out of tolerance, or no step met the constraints
== =====================================================================
"""

from __future__ import annotations

from typing import Any


class OnnxsmithError(Exception):
    """Base of all user-facing errors."""

    exit_code = 2

    def __init__(self, what: str, why: str = "", hint: str = "") -> None:
        self.what = what
        self.why = why
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.what
        if self.why:
            text += f": {self.why}"
        text = text.rstrip(".") + "."
        if self.hint:
            text += f" Hint: {self.hint.rstrip('.')}."
        # one line, and no control character (ESC, BEL...) from a user's name reaches the terminal raw
        return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in " ".join(text.split()))


class UserInputError(OnnxsmithError):
    """Bad model, data, target, profile, bundle or option (exit 2)."""

    exit_code = 2


class ModelError(UserInputError):
    """The ONNX model cannot be read or is invalid."""


class DataError(UserInputError):
    """Input, calibration or validation data does not match the model."""


class TargetError(UserInputError):
    """Unknown or malformed target or profile file."""


class BundleError(UserInputError):
    """A bundle is missing files, was modified, or was built by another backend version."""


class MissingDependencyError(OnnxsmithError):
    """A backend's Python package is not installed (exit 3)."""

    exit_code = 3

    def __init__(self, package: str, extra: str, why: str = "", hint: str = "") -> None:
        super().__init__(
            f"{package} is not installed",
            why or (f"the '{extra}' backend needs it" if extra else "onnxsmith needs it"),
            hint or (f"pip install 'onnxsmith[{extra}]'" if extra else f"pip install {package}"),
        )
        self.package = package
        self.extra = extra


class BackendError(OnnxsmithError):
    """The vendor compiler or runtime failed (exit 4); the vendor exception is ``__cause__``."""

    exit_code = 4


class UnsupportedError(OnnxsmithError):
    """The target, device or precision cannot be used on this machine or backend (exit 5)."""

    exit_code = 5


class CheckFailedError(OnnxsmithError):
    """Validation out of tolerance, or no candidate met the constraints (exit 6)."""

    exit_code = 6


def to_wire(exc: OnnxsmithError) -> dict[str, Any]:
    """``exc`` as plain data for another process (JSON or pickle): its class name, what / why / hint, its exit code
    (a plugin's own error class keeps its code) and a missing dependency's package and extra."""
    data: dict[str, Any] = {"class": type(exc).__name__, "what": exc.what, "why": exc.why, "hint": exc.hint,
                            "exit_code": exc.exit_code}
    for name in ("package", "extra"):
        if isinstance(getattr(exc, name, None), str):
            data[name] = getattr(exc, name)
    return data


def from_wire(data: dict[str, Any]) -> OnnxsmithError:
    """The error :func:`to_wire` encoded, as this module's class of that name (a class this module does not have,
    a plugin's own, becomes a :class:`BackendError`) with the exit code it had."""
    cls = globals().get(str(data.get("class")))
    if not (isinstance(cls, type) and issubclass(cls, OnnxsmithError)):
        cls = BackendError
    exc = cls.__new__(cls)
    OnnxsmithError.__init__(exc, str(data.get("what", "")), str(data.get("why", "")), str(data.get("hint", "")))
    exc.exit_code = int(data.get("exit_code", cls.exit_code))
    for name in ("package", "extra"):
        if isinstance(data.get(name), str):
            setattr(exc, name, data[name])
    return exc


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of a vendor exception, for use as a ``why``."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return type(exc).__name__
