"""Strings, sequences and optionals in data files: plain ``.npy`` arrays, never pickles.

The convention (inputs in ``run --input``/``--data`` files, outputs in ``run --output`` and the worst examples):

- a **string** tensor is a fixed-width numpy text array: unicode (``'<U'``, what ``np.array(["a", "bc"])``
  gives) or UTF-8 bytes (``'|S'``, decoded on reading). Object arrays are never read (loading them runs pickle);
  a string element may hold at most :data:`onnxsmith.data.npyfile.MAX_STRING_CHARS` characters.
- a **sequence** ``NAME`` is stored as its elements ``NAME.0``, ``NAME.1``, ... ``NAME.{n-1}`` (each stored by
  these same rules, so a sequence of sequences is ``NAME.0.0``...) and ``NAME.length``, a 0-d integer array
  holding n. ``NAME.length`` may be left out when there is at least one element (n is then the number of
  consecutive elements from ``NAME.0``); an empty sequence is ``NAME.length = 0``. onnxsmith always writes it.
- an **optional** ``NAME`` that holds a value is stored as that value (``NAME``, or ``NAME.0``... for an optional
  sequence); an absent one is the key ``NAME.none`` (by convention ``np.array(True)``; only its presence counts).

A model whose sequence or optional ``NAME`` sits beside another input or output named ``NAME.something`` is refused
at load (the keys would collide). Python::

    np.savez("x.npz", **onnxsmith.data.values.flatten_values({"seq": [a, b], "text": np.array(["hi"])}))
    values = onnxsmith.data.values.read_values("y.npz")   # {"seq": [a, b], "text": array(['hi'], dtype='<U2')}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.model import TensorSpec

STRING = "string"
"""The element type name of ONNX string tensors (``TensorSpec.dtype``)."""
LENGTH = "length"
NONE = "none"
MAX_SEQUENCE = 100_000
"""The most elements one sequence in a data file may declare."""


def is_text(dtype: Any) -> bool:
    """A numpy text dtype: fixed-width unicode or bytes (never object)."""
    import numpy as np

    return np.dtype(dtype).kind in "US"


def text_array(arr: np.ndarray, where: str, name: str) -> np.ndarray:
    """A string input's array as native unicode: UTF-8 bytes decoded, code points checked (no surrogates, none past
    U+10FFFF: a forged ``.npy`` can hold any 32-bit value)."""
    import numpy as np

    if arr.dtype.kind == "S":
        try:
            return np.char.decode(arr, "utf-8") if arr.size else arr.astype(f"<U{max(arr.dtype.itemsize, 1)}")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where} holds invalid text", f"array '{name}' is bytes ({arr.dtype}) and not UTF-8 "
                            f"({exc.reason} at byte {exc.start})", "store text as unicode: np.array([...], "
                            "dtype=str), or encode it as UTF-8") from exc
    if arr.dtype.kind != "U":
        raise DataError(f"{where} does not fit the model", f"array '{name}' is {arr.dtype}, the input takes strings",
                        "give a numpy text array: np.array(['...'], dtype=str)")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.size and arr.dtype.itemsize:
        codes = np.ascontiguousarray(arr).view(np.uint32)
        bad = (codes > 0x10FFFF) | ((codes >= 0xD800) & (codes <= 0xDFFF))
        if bad.any():
            raise DataError(f"{where} holds invalid text", f"array '{name}' has {int(bad.sum())} character(s) that "
                            f"are not Unicode (first U+{int(codes[bad][0]):X})", "save the text again with numpy")
    return arr


def to_plain(value: Any) -> Any:
    """A runtime's output as data-file values: object arrays of ``str``/``bytes`` become ``'<U'`` arrays, sequences
    lists, an absent optional ``None``; numeric arrays stay as they are."""
    import numpy as np

    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    arr = np.asarray(value)
    if arr.dtype != object:
        return arr
    items = arr.reshape(-1).tolist()
    if not all(isinstance(v, (str, bytes)) for v in items):
        return arr  # not text: left for the caller to refuse (flatten does)
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in items]
    width = max((len(v) for v in flat), default=1) or 1
    return np.asarray(flat, dtype=f"<U{width}").reshape(arr.shape)


def flatten(key: str, value: Any) -> dict[str, np.ndarray]:
    """One value as the arrays that store it under ``key`` (module docstring): a list is a sequence, ``None`` an
    absent optional, anything else a tensor."""
    import numpy as np

    if value is None:
        return {f"{key}.{NONE}": np.array(True)}
    if isinstance(value, (list, tuple)):
        arrays: dict[str, np.ndarray] = {f"{key}.{LENGTH}": np.array(len(value), dtype=np.int64)}
        for i, element in enumerate(value):
            arrays.update(flatten(f"{key}.{i}", element))
        return arrays
    arr = to_plain(value)
    if arr.dtype == object:
        raise DataError(f"cannot store '{key}'", "it holds Python objects", "give numbers or strings")
    return {key: arr}


def flatten_values(values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every value by the convention: what ``np.savez(path, **flatten_values(values))`` needs."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in values.items():
        arrays.update(flatten(key, value))
    return arrays


def is_structured(value: Any) -> bool:
    """A sequence (list) or an absent optional (``None``): a value with no sample axis."""
    return value is None or isinstance(value, (list, tuple))


def keys_for(name: str, names: Collection[str]) -> list[str]:
    """The keys of ``names`` that store the sequence or optional ``name``."""
    return [n for n in names if n == name or n.startswith(name + ".")]


def _prefixes(names: Collection[str]) -> set[str]:
    found: set[str] = set()
    for n in names:
        parts = n.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return found


def assemble(spec: TensorSpec, names: Collection[str], read: Callable[[str], np.ndarray], where: str) -> Any:
    """The value of the sequence or optional input ``spec`` from the arrays ``names`` (``read(key)`` loads one):
    lists for sequences, ``None`` for an absent optional, each element tensor checked against the element type."""
    present = set(names)
    prefixes = _prefixes(present)

    def has(key: str) -> bool:
        return key in present or key in prefixes

    def leaf(key: str) -> Any:
        if key not in present:
            raise DataError(f"{where} does not fit the model", f"no array '{key}' for {spec.type_text()} input "
                            f"'{spec.name}'", _HINT)
        return check_element(read(key), spec, where, key)

    def build(key: str, wrap: tuple[str, ...]) -> Any:
        if not wrap:
            return leaf(key)
        head, rest = wrap[0], wrap[1:]
        if head == "optional":
            marker = f"{key}.{NONE}"
            holds = key in present or any(n.startswith(key + ".") and n != marker for n in present)
            if marker in present and holds:
                raise DataError(f"{where} does not fit the model", f"'{marker}' marks the optional '{key}' absent, "
                                "but it has arrays too", "give either the value or the marker")
            if marker in present:
                return None
            if not holds:
                raise DataError(f"{where} does not fit the model", f"no array for optional input '{key}' "
                                f"({spec.type_text()})", f"give its value, or '{marker}' = np.array(True) for an "
                                "absent one")
            return build(key, rest)
        length_key = f"{key}.{LENGTH}"
        if key in present:
            raise DataError(f"{where} does not fit the model", f"'{key}' is one array, and input '{spec.name}' takes "
                            f"a {spec.type_text()}", _HINT)
        count = 0
        while count <= MAX_SEQUENCE and has(f"{key}.{count}"):
            count += 1
        if length_key in present:
            declared = _length(read(length_key), where, length_key)
            if declared != count:
                raise DataError(f"{where} does not fit the model", f"'{length_key}' says {declared} elements, and "
                                f"{count} (from '{key}.0' on, consecutive) are present", _HINT)
        elif count == 0:
            raise DataError(f"{where} does not fit the model", f"no array for sequence input '{key}' "
                            f"({spec.type_text()})", f"give '{key}.0', '{key}.1', ... or '{length_key}' = 0 for an "
                            "empty sequence")
        if count > MAX_SEQUENCE:
            raise DataError(f"{where} is too large", f"sequence '{key}' has more than {MAX_SEQUENCE} elements")
        stray = sorted(n for n in present if n.startswith(key + ".") and n != length_key
                       and not _index_below(n[len(key) + 1:], count))
        if stray:
            raise DataError(f"{where} does not fit the model", f"'{stray[0]}' is not an element of sequence '{key}' "
                            f"(elements {key}.0 to {key}.{count - 1}, consecutive)", _HINT)
        return [build(f"{key}.{i}", rest) for i in range(count)]

    return build(spec.name, spec.wrap)


_HINT = "store a sequence NAME as NAME.0, NAME.1, ... and NAME.length (see onnxsmith.data.values)"


def _index_below(rest: str, count: int) -> bool:
    head = rest.split(".", 1)[0]
    return head.isdigit() and int(head) < count and str(int(head)) == head


def _length(arr: np.ndarray, where: str, key: str) -> int:
    import numpy as np

    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise DataError(f"{where} does not fit the model", f"'{key}' is {arr.dtype} of shape {arr.shape}, not one "
                        "integer", f"save it as np.array(N)")
    value = int(np.asarray(arr).reshape(-1)[0])
    if not 0 <= value <= MAX_SEQUENCE:
        raise DataError(f"{where} does not fit the model", f"'{key}' is {value}, outside 0..{MAX_SEQUENCE}")
    return value


def check_element(arr: np.ndarray, spec: TensorSpec, where: str, key: str) -> np.ndarray:
    """One tensor (an element of a sequence or optional, or a string input) checked against ``spec.dtype``."""
    import numpy as np

    if spec.dtype == STRING:
        return text_array(arr, where, key)
    if np.dtype(arr.dtype).name != spec.dtype:
        raise DataError(f"{where} does not fit the model", f"array '{key}' is {arr.dtype}, the "
                        f"{spec.type_text()} input '{spec.name}' takes {spec.dtype}",
                        f"convert it with .astype('{spec.dtype}')")
    return arr


def check_value(value: Any, spec: TensorSpec, where: str, key: str | None = None) -> None:
    """A value given in Python (``Bundle.run``, ``module:function`` data) matches the sequence or optional
    ``spec``: lists where a sequence goes, ``None`` only where an optional is absent, element dtypes."""
    import numpy as np

    def walk(v: Any, wrap: tuple[str, ...], at: str) -> None:
        if wrap and wrap[0] == "optional":
            if v is not None:
                walk(v, wrap[1:], at)
            return
        if wrap:
            if not isinstance(v, (list, tuple)):
                raise DataError(f"{where} does not fit the model", f"'{at}' is a {type(v).__name__}, the input "
                                f"takes a {' of '.join(wrap)}", "give a list of arrays")
            for i, element in enumerate(v):
                walk(element, wrap[1:], f"{at}.{i}")
            return
        if v is None or isinstance(v, (list, tuple)):
            raise DataError(f"{where} does not fit the model", f"'{at}' is {'None' if v is None else 'a list'}, "
                            f"where {spec.type_text()} input '{spec.name}' takes a {spec.dtype} tensor")
        check_element(np.asarray(v), spec, where, at)

    walk(value, spec.wrap, key or spec.name)


def describe(value: Any) -> str:
    """``sequence of 3``, ``absent``, ``2x3 float32``: for summaries."""
    import numpy as np

    if value is None:
        return "absent"
    if isinstance(value, (list, tuple)):
        return f"sequence of {len(value)}"
    arr = np.asarray(value)
    return f"{'x'.join(map(str, arr.shape)) or 'scalar'} {'string' if arr.dtype.kind in 'US' else arr.dtype}"


def read_values(path: str | os.PathLike[str], specs: Collection[TensorSpec] = ()) -> dict[str, Any]:
    """An ``.npz`` written by onnxsmith (``run --output``) read back without pickle: the arrays of ``specs``' sequences
    and optionals assembled into lists and ``None``, every other array as it is."""
    from pathlib import Path

    from onnxsmith.data.npyfile import ArrayFiles, check_budget

    where = f"'{path}'"
    with ArrayFiles.npz(Path(path), where) as source:
        names = source.names
        check_budget([(source.header(n), None) for n in names], where)
        values: dict[str, Any] = {}
        taken: set[str] = set()
        for spec in specs:
            if spec.wrap:
                values[spec.name] = assemble(spec, keys_for(spec.name, names), source.read, where)
                taken.update(keys_for(spec.name, names))
        dtypes = {s.name: s.dtype for s in specs if not s.wrap}
        for name in names:
            if name not in taken:
                values[name] = source.read(name, as_type=dtypes.get(name))
    return values
