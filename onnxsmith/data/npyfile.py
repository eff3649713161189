"""``.npy`` arrays, alone, in a folder or inside an ``.npz``, read header first.

Every array's header (shape, dtype, memory order) is parsed before any of its data is read or decompressed, and
checked: no Python objects (text is fixed-width ``'<U'``/``'|S'`` data, at most :data:`MAX_STRING_CHARS` wide),
the data the header claims must fit in what the file (or zip member) holds, and all the
bytes to load together must stay under a cap (:data:`DEFAULT_MAX_BYTES`, overridden by ``$ONNXSMITH_MAX_DATA_BYTES``,
e.g. ``16GiB``). Only the rows asked for are read (C-order arrays keep their samples contiguous), so a big file costs
the memory of the samples used, and a forged or zip-bomb file is refused in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from onnxsmith.errors import DataError, UserInputError, first_line
from onnxsmith.units import fmt_bytes

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MAX_BYTES = 4 * 2**30
"""Default cap on the bytes one data option loads (4 GiB)."""
MAX_BYTES_VARIABLE = "ONNXSMITH_MAX_DATA_BYTES"
MAX_STRING_CHARS = 2**20
"""The widest text element (fixed-width ``'<U'`` characters or ``'|S'`` bytes) a data file may declare."""
_CHUNK = 16 * 2**20
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
"""What numpy, zipfile and zlib raise on a malformed file (``RuntimeError``: an encrypted zip member)."""


def max_bytes() -> int:
    """The byte cap: ``$ONNXSMITH_MAX_DATA_BYTES`` (``4GiB``, ``500MB``, ``1000000``), else 4 GiB."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise UserInputError(f"invalid {MAX_BYTES_VARIABLE} '{text}'", "expected a positive size such as 4GiB, "
                             "500MB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclasses.dataclass(frozen=True)
class ArrayHeader:
    """What an ``.npy`` header declares, before any data is read (quacks like an array for shape checks)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    typed_void: bool = False
    """Void items that ``np.save`` wrote for a typed scalar numpy lacks (an ml_dtypes bfloat16/float8 array): its
    descr carries a byte order (``'<V2'``), where raw void data says ``'|V2'``."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array header")
        return self.shape[0]

    def rows_bytes(self, rows: int | None) -> int:
        """Bytes read for the first ``rows`` samples (all of them when None or when the order is Fortran)."""
        if rows is None or self.fortran_order or not self.shape or rows >= self.shape[0]:
            return self.nbytes
        return rows * math.prod(self.shape[1:]) * self.dtype.itemsize

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.shape)) or 'scalar'} {self.dtype}"


Opener = Callable[[], IO[bytes]]


class ArrayFiles:
    """Named ``.npy`` arrays (an ``.npz``'s members, or files), their headers parsed lazily, data read on demand."""

    def __init__(self, members: dict[str, tuple[Opener, int, str]], where: str,
                 archive: zipfile.ZipFile | None = None) -> None:
        self._members = members  # name -> (open the stream, bytes the member holds, file name for messages)
        self._headers: dict[str, ArrayHeader] = {}
        self.where = where
        self._archive = archive

    @classmethod
    def npz(cls, path: Path, where: str) -> ArrayFiles:
        """The ``.npy`` members of an ``.npz`` (keys without ``.npy``, as ``numpy.load`` names them)."""
        try:
            archive = zipfile.ZipFile(path)
        except READ_ERRORS as exc:
            raise DataError(f"cannot read {where}", f"not a valid .npz file ({first_line(exc)})",
                            "save it with numpy.savez(path, input_name=array)") from exc
        members: dict[str, tuple[Opener, int, str]] = {}
        for info in archive.infolist():
            if info.filename.endswith(".npy") and not info.is_dir():
                members[info.filename[:-4]] = ((lambda i=info: archive.open(i)), info.file_size, info.filename)
        return cls(members, where, archive)

    @classmethod
    def files(cls, paths: dict[str, Path], where: str) -> ArrayFiles:
        """Plain ``.npy`` files, keyed by the given names."""
        members: dict[str, tuple[Opener, int, str]] = {}
        for name, path in paths.items():
            try:
                size = path.stat().st_size
            except OSError as exc:
                raise DataError(f"cannot read {where}", f"'{path.name}': {first_line(exc)}") from exc
            members[name] = ((lambda p=path: open(p, "rb")), size, path.name)
        return cls(members, where)

    def __enter__(self) -> ArrayFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._archive is not None:
            self._archive.close()

    @property
    def names(self) -> list[str]:
        return list(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def header(self, name: str) -> ArrayHeader:
        if name not in self._headers:
            opener, size, file_name = self._members[name]
            try:
                with opener() as fp:
                    self._headers[name] = _parse_header(fp, name, size, file_name, self.where)
            except DataError:
                raise
            except READ_ERRORS as exc:
                raise _invalid(self.where, file_name, exc) from exc
        return self._headers[name]

    def headers(self, names: Iterable[str] | None = None) -> dict[str, ArrayHeader]:
        return {n: self.header(n) for n in (self.names if names is None else names)}

    def read(self, name: str, rows: int | None = None, as_type: str | None = None) -> np.ndarray:
        """The array ``name``, or its first ``rows`` samples; check the budget with :func:`check_budget` first.
        ``as_type``: the input's dtype; typed void items of that ml_dtypes type's size are read back as it."""
        header = self.header(name)
        opener, _, file_name = self._members[name]
        try:
            with opener() as fp:
                _parse_header(fp, name, self._members[name][1], file_name, self.where)
                return typed_view(_read_data(fp, header, rows, file_name, self.where), header, as_type)
        except DataError:
            raise
        except READ_ERRORS as exc:
            raise _invalid(self.where, file_name, exc) from exc


def check_budget(parts: Iterable[tuple[ArrayHeader, int | None]], where: str, limit: int | None = None) -> int:
    """Refuse before reading when the arrays' ``(header, rows)`` parts add up to more than the byte cap."""
    parts = list(parts)
    total = sum(h.rows_bytes(rows) for h, rows in parts)
    limit = max_bytes() if limit is None else limit
    if total > limit:
        biggest = max(parts, key=lambda p: p[0].rows_bytes(p[1]))[0]
        raise DataError(f"{where} is too large", f"loading it takes {fmt_bytes(total)} ('{biggest.name}' is "
                        f"{biggest.describe()}), more than the {fmt_bytes(limit)} cap",
                        f"use fewer samples, or raise the cap with {MAX_BYTES_VARIABLE}=16GiB")
    return total


def _invalid(where: str, file_name: str, exc: BaseException) -> DataError:
    return DataError(f"cannot read {where}", f"'{file_name}' is not a valid .npy array ({first_line(exc)})",
                     "save arrays with numpy.save or numpy.savez")


def _parse_header(fp: IO[bytes], name: str, available: int, file_name: str, where: str) -> ArrayHeader:
    from numpy.lib import format as npformat

    tap = _Tap(fp)  # the header's text too: its descr tells typed void items ('<V2') from raw ones ('|V2')
    version = npformat.read_magic(tap)
    if version == (1, 0):
        shape, fortran_order, dtype = npformat.read_array_header_1_0(tap)
    elif version == (2, 0):
        shape, fortran_order, dtype = npformat.read_array_header_2_0(tap)
    else:  # 3.0 (utf-8 field names) has no public reader
        shape, fortran_order, dtype = npformat._read_array_header(tap, version)
    typed = dtype.kind == "V" and dtype.names is None and bool(re.search(rb"'descr':\s*'[<>=]V\d+'", tap.seen))
    header = ArrayHeader(name, tuple(int(d) for d in shape), dtype, bool(fortran_order), typed)
    if any(d < 0 for d in header.shape):
        raise DataError(f"cannot read {where}", f"the header of '{file_name}' declares a negative dimension "
                        f"{header.shape}", "the file is forged or corrupt: save it again with numpy.save")
    if dtype.hasobject:
        raise DataError(f"cannot read {where}", f"'{file_name}' holds Python objects ({dtype}), which are not read "
                        "(loading them could run code)", "save numeric arrays")
    _check_text_width(dtype, file_name, where)
    data_bytes = available - fp.tell()
    if header.nbytes > data_bytes:
        raise DataError(f"cannot read {where}", f"the header of '{file_name}' declares {header.describe()} "
                        f"({fmt_bytes(header.nbytes)}) but the file holds {fmt_bytes(max(data_bytes, 0))} of data",
                        "the file is truncated or forged: save it again with numpy.save or numpy.savez")
    return header


class _Tap:
    """Reads through to ``fp``, keeping what was read (the header: a few hundred bytes)."""

    def __init__(self, fp: IO[bytes]) -> None:
        self.fp, self.seen = fp, b""

    def read(self, size: int = -1) -> bytes:
        data = self.fp.read(size)
        self.seen += data
        return data


def typed_view(array: np.ndarray, header: ArrayHeader, as_type: str | None) -> np.ndarray:
    """``array`` as ml_dtypes' ``as_type`` when the header holds typed void items of that type's size; otherwise as
    read (raw void data stays void, and the dtype check refuses it for a bfloat16 or float8 input)."""
    if not header.typed_void or not as_type:
        return array
    import ml_dtypes
    import numpy as np

    kind = getattr(ml_dtypes, as_type, None)
    if kind is None or np.dtype(kind).itemsize != header.dtype.itemsize:
        return array
    return array.view(kind)


def _check_text_width(dtype: np.dtype, file_name: str, where: str) -> None:
    """Text arrays (``'<U'``, ``'|S'``) are plain fixed-width data; a forged header may declare absurd widths."""
    if dtype.kind not in "US":
        return
    chars = dtype.itemsize // (4 if dtype.kind == "U" else 1)
    if chars > MAX_STRING_CHARS:
        raise DataError(f"cannot read {where}", f"'{file_name}' declares text elements of {chars:,} characters "
                        f"({dtype}), more than the {MAX_STRING_CHARS:,} read", "store long text in fewer, shorter "
                        "elements, or check the file: it may be forged")
    if dtype.names is None and chars == 0:
        raise DataError(f"cannot read {where}", f"'{file_name}' declares text elements of width 0 ({dtype})",
                        "save it again with numpy (np.array([''], dtype=str) has width 1)")


def _read_data(fp: IO[bytes], header: ArrayHeader, rows: int | None, file_name: str, where: str) -> np.ndarray:
    import numpy as np

    partial = rows is not None and not header.fortran_order and header.shape and rows < header.shape[0]
    shape = (rows, *header.shape[1:]) if partial else header.shape
    array = np.empty(shape[::-1] if header.fortran_order else shape, dtype=header.dtype)
    view = memoryview(array.reshape(-1).view(np.uint8)) if array.size and header.dtype.itemsize else memoryview(b"")
    done = 0
    while done < len(view):
        chunk = fp.read(min(_CHUNK, len(view) - done))
        if not chunk:
            raise DataError(f"cannot read {where}", f"'{file_name}' ends after {done} of {len(view)} data bytes",
                            "the file is truncated: save it again")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    if header.fortran_order:
        array = array.transpose()
        if rows is not None and header.shape and rows < header.shape[0]:
            array = np.ascontiguousarray(array[:rows])
    return array
