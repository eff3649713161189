"""User strings (tensor names, the model's file name, target ids and options) made safe for each place onnxsmith
writes them: one function per language, and one mapping from names to file names.

Nothing here trusts its input: a name may hold quotes, backslashes, newlines, NUL, ``$(...)``, ``\\(...)`` or
``" } input {``. Literals (:func:`python`, :func:`cpp`, :func:`swift`, :func:`pbtxt`) keep the string exactly,
escaped so the language reads back the same characters; :func:`text` is for comments, docstrings and titles, which
never need the exact string: it keeps a single line of plain characters and replaces the rest. File names come from
:func:`file_stems` only, so no name can make onnxsmith or a generated program write outside its folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable

TEXT_SAFE = re.compile(r"[^A-Za-z0-9 ._,:/+=@%-]")
"""What :func:`text` keeps: no quote, backslash, backtick, ``$``, ``?``, bracket or parenthesis, no control
character, nothing outside ASCII. Placed in code by mistake, such text can only name or compare, never call."""
STEM_SAFE = re.compile(r"[^A-Za-z0-9._-]")
STEM_MAX = 64
HASH_DIGITS = (0, 8, 16, 64)


def text(value: object, limit: int = 160) -> str:
    """``value`` as one line of plain characters for a comment, docstring or title (others become ``_``)."""
    line = TEXT_SAFE.sub("_", " ".join(str(value).split()))
    return line if len(line) <= limit else line[:limit - 3] + "..."


def python(value: object) -> str:
    """A Python literal of ``value`` (str, int, float, bool, None and lists, tuples, dicts of them): ``ascii()``,
    which escapes every quote, backslash, control and non-ASCII character of a string."""
    return ascii(value)


def cpp(value: str) -> str:
    """A C++ narrow string literal holding ``value``'s UTF-8 bytes: printable ASCII as is except ``"``, ``\\`` and
    ``?`` (trigraphs), everything else as a three-digit octal escape (which, unlike ``\\x``, never swallows a
    following digit)."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in '"\\?':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def swift(value: str) -> str:
    """A Swift string literal: ``\\`` and ``"`` escaped (so no ``\\(...)`` interpolation), every character outside
    printable ASCII as ``\\u{...}``."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(f"\\u{{{ord(char):x}}}")
    return '"' + "".join(out) + '"'


def pbtxt(value: str) -> str:
    """A protobuf text-format string (Triton's ``config.pbtxt``): printable ASCII as is except ``"``, ``'`` and
    ``\\``, every other byte of the UTF-8 encoding as an octal escape, which the text parser reads back as bytes."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in "\"'\\":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def shell(value: str) -> str:
    """One POSIX shell word (``shlex.quote``)."""
    return shlex.quote(value)


def json_in_html(value: object) -> str:
    """``value`` as JSON to sit inside ``<script type="application/json">``: the text a browser hands to
    ``JSON.parse`` is exactly ``json.dumps(value)``. Script content is raw text, so HTML escaping would corrupt it
    (``&quot;`` stays literal); instead ``<``, ``>``, ``&`` and U+2028/U+2029 become JSON ``\\u`` escapes, so no
    ``</script>`` or ``<!--`` can end or change the element."""
    text = json.dumps(value, default=str, allow_nan=False, ensure_ascii=False)
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def markdown_code(value: object) -> str:
    """A Markdown code span of ``value`` on one line: control characters become spaces and the fence is longer
    than any run of backticks inside."""
    line = "".join(c if c.isprintable() else " " for c in str(value))
    longest = max((len(run) for run in re.findall("`+", line)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if line.startswith("`") or line.endswith("`") or not line.strip() else ""
    return f"{fence}{pad}{line}{pad}{fence}"


def _stem(name: str, digits: int) -> str:
    cleaned = STEM_SAFE.sub("_", name).lstrip(".-") or "tensor"
    if not digits:
        return cleaned[:STEM_MAX]
    cleaned = cleaned[:STEM_MAX // 2]
    return f"{cleaned}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:digits]}"


def file_stems(names: Iterable[str]) -> dict[str, str]:
    """Each name's file stem (``NAME.npy`` is ``stem + '.npy'``) in one folder: the name itself when it is a safe
    file name (only ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``, at most 64 characters), else its safe
    characters and a short hash of the name; names whose stems would collide (letter case ignored, for macOS and
    Windows) all get the hash. The same names give the same stems everywhere, so a reader finds what a writer
    wrote."""
    unique = list(dict.fromkeys(names))
    digits = {n: 0 if _stem(n, 0) == n else HASH_DIGITS[1] for n in unique}
    for _ in HASH_DIGITS:
        stems = {n: _stem(n, digits[n]) for n in unique}
        seen: dict[str, list[str]] = {}
        for name, stem in stems.items():
            seen.setdefault(stem.casefold(), []).append(name)
        clashes = [n for group in seen.values() if len(group) > 1 for n in group]
        if not clashes:
            return stems
        for name in clashes:  # a longer hash for each name of a clash
            digits[name] = HASH_DIGITS[min(HASH_DIGITS.index(digits[name]) + 1, len(HASH_DIGITS) - 1)]
    raise RuntimeError("file_stems: names still collide with full-length hashes")  # two equal sha256 digests
