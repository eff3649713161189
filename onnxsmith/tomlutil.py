"""Small helpers to read TOML data files and report errors with file and key."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxsmith.errors import TargetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise TargetError(f"cannot read {path}", "file not found") from exc
    except IsADirectoryError as exc:
        raise TargetError(f"cannot read {path}", "it is a directory, not a .toml file") from exc
    except OSError as exc:
        raise TargetError(f"cannot read {path}", exc.strerror or type(exc).__name__) from exc
    except UnicodeDecodeError as exc:
        raise TargetError(f"cannot read {path}", f"it is not a text file (byte {exc.start} is not UTF-8)",
                          "give a TOML text file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"cannot read {path}", f"invalid TOML ({exc})") from exc


class Fields:
    """Typed access to a TOML table that names the file and key in every error."""

    def __init__(self, data: Mapping[str, Any], path: Path | str, prefix: str = "") -> None:
        self.data = data
        self.path = path
        self.prefix = prefix

    def _fail(self, key: str, why: str) -> TargetError:
        return TargetError(f"invalid {self.path}", f"key '{self.prefix}{key}' {why}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., choices: tuple[Any, ...] = ()) -> Any:
        if key not in self.data:
            if default is ...:
                raise self._fail(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self._fail(key, f"must be {names}, got {type(value).__name__}")
        if choices and value not in choices:
            raise self._fail(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value

    def str_list(self, key: str, default: Any = ..., choices: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, default)
        for item in value:
            if not isinstance(item, str):
                raise self._fail(key, "must be a list of strings")
            if choices and item not in choices:
                raise self._fail(key, f"has {item!r}; allowed: {', '.join(choices)}")
        return tuple(value)

    def table(self, key: str, required: bool = False) -> Fields:
        value = self.get(key, dict, ... if required else {})
        return Fields(value, self.path, f"{self.prefix}{key}.")

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self._fail(extra[0], f"is not known (allowed: {', '.join(sorted(allowed))})")
