"""Declared, typed backend options: each backend lists its ``--option KEY=VALUE`` settings as :class:`Option`s, and
the core parses and checks every value against that declaration, with one error type (``UserInputError``, exit 2).

The same declaration is what ``onnxsmith doctor``, ``targets show`` and ``compile --help`` list, and what a target
file's ``[device.<backend>]`` table is checked against.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UserInputError

if TYPE_CHECKING:
    from onnxsmith.plugin import Compiler

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


@dataclasses.dataclass(frozen=True)
class Option:
    """One backend setting: name, type (``int``, ``float``, ``bool``, ``str`` or ``list`` of strings), default,
    one-line help, and the allowed values or range."""

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, value: Any, where: str = "--option") -> Any:
        """``value`` (a string from the command line, or a TOML value) as this option's type; one-line errors."""

        def bad(why: str) -> UserInputError:
            return UserInputError(f"invalid {where} {self.name}={value}", why,
                                  f"{self.name}: {self.help}" if self.help else "")

        if self.type is bool:
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            raise bad("expected on or off (1/0, true/false, yes/no)")
        if self.type is list:
            items = value if isinstance(value, list) else [v for v in str(value).split(",")]
            items = [str(v).strip() for v in items if str(v).strip()]
            unknown = [v for v in items if self.choices and v not in self.choices]
            if unknown:
                raise bad(f"'{unknown[0]}' is not one of {', '.join(self.choices)}")
            return items
        if self.type in (int, float):
            if isinstance(value, bool):
                raise bad(f"expected {'an integer' if self.type is int else 'a number'}")
            try:
                number = self.type(str(value).strip()) if not isinstance(value, (int, float)) else self.type(value)
            except (TypeError, ValueError, OverflowError):
                raise bad(f"expected {'an integer' if self.type is int else 'a number'}") from None
            if self.type is int and isinstance(value, float) and not float(value).is_integer():
                raise bad("expected an integer")
            if isinstance(number, float) and not math.isfinite(number):
                raise bad("expected a finite number")
            if (self.minimum is not None and number < self.minimum) or \
                    (self.maximum is not None and number > self.maximum):
                raise bad(f"expected {_range_text(self.minimum, self.maximum)}")
            if self.choices and number not in self.choices:
                raise bad(f"allowed values: {', '.join(map(str, self.choices))}")
            return number
        text = str(value).strip()
        if self.choices:
            word = text.lower()
            if word not in self.choices:
                raise bad(f"allowed values: {', '.join(self.choices)}")
            return word
        return text

    def describe(self) -> str:
        """``name (type, default X; a|b): help`` for listings."""
        kind = "list" if self.type is list else self.type.__name__
        parts = [kind]
        if self.choices:
            parts.append("|".join(map(str, self.choices)))
        if self.minimum is not None or self.maximum is not None:
            parts.append(_range_text(self.minimum, self.maximum))
        if self.default not in (None, "", ()):
            parts.append(f"default {self.default}")
        return f"{self.name} ({', '.join(parts)}): {self.help}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": "list" if self.type is list else self.type.__name__,
                "default": self.default, "help": self.help, "choices": list(self.choices),
                "minimum": self.minimum, "maximum": self.maximum}


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def split_option_args(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--option KEY=VALUE`` strings as a dict (syntax only; :func:`parse_backend_options` checks them)."""
    options: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"invalid --option '{value}'", "expected KEY=VALUE", "for example --option threads=2")
        options[key.strip()] = val.strip()
    return options


def parse_backend_options(backend: Compiler, raw: Mapping[str, Any], where: str = "--option") -> dict[str, Any]:
    """Check ``raw`` against ``backend.options`` and parse each value to its declared type."""
    declared = {o.name: o for o in backend.options}
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            raise UserInputError(f"unknown {backend.name} option '{key}'",
                                 f"{backend.name} takes {', '.join(declared) or 'no options'}",
                                 f"did you mean '{close[0]}'?" if close else
                                 "see 'onnxsmith doctor' for each backend's options")
        parsed[key] = declared[key].parse(value, f"{backend.name} {where}")
    return parsed
