"""Output directories: what ``-o DIR`` may replace, and what it must never touch.

Every verb that writes a directory (``compile``, ``optimize``) replaces it as a whole, so before anything is written
the directory is checked here:

* it may not exist yet, be empty, or hold a previous result of the same verb (an onnxsmith bundle for ``compile``,
  an evidence card for ``optimize``);
* anything else that is not empty is refused unless the user says ``--force``;
* it is refused even with ``--force`` when it is, or contains, one of the verb's inputs (the model, its external
  data, calibration or validation data) or the compile cache, or lies inside the cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from onnxsmith.errors import UserInputError

KINDS = {
    "bundle": ("manifest.json", "an onnxsmith bundle"),
    "optimize": ("card.json", "an 'onnxsmith optimize' result"),
    "precision": ("precision.json", "an 'onnxsmith debug precision' result"),
    "distill": ("distill.json", "an 'onnxsmith distill' result"),
    "compare": ("compare.json", "an 'onnxsmith compare' result"),
}


def _is_result(path: Path, kind: str) -> bool:
    marker, _ = KINDS[kind]
    try:
        data = json.loads((path / marker).read_text())
    except (OSError, ValueError):
        return False
    if kind == "bundle":
        return isinstance(data, dict) and "files" in data and "format_version" in data
    if kind == "distill":
        return isinstance(data, dict) and "student" in data and "settings" in data
    return isinstance(data, dict) and ("cells" if kind == "compare" else "steps") in data


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def cache_root() -> Path:
    """``$ONNXSMITH_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxsmith``, else ``~/.cache/onnxsmith``."""
    if os.environ.get("ONNXSMITH_CACHE_DIR"):
        return Path(os.environ["ONNXSMITH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxsmith"


def check_writable(path: Path, given: str | os.PathLike[str], what: str, hint: str) -> None:
    """Refuse ``path`` (a directory to create or write into) when its nearest existing ancestor is not a directory
    or no file can be created there; the probe it makes is removed at once."""
    import tempfile

    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"cannot write {what} '{given}'", f"'{ancestor}' is not a directory", hint)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".onnxsmith-probe-", dir=ancestor))
    except OSError as exc:
        raise UserInputError(f"cannot write {what} '{given}'", f"nothing can be created in '{ancestor}' "
                             f"({exc.strerror or type(exc).__name__})", hint) from exc


def check_output_file(output: str | os.PathLike[str], option: str = "--output") -> Path:
    """Refuse an output file that is a directory or cannot be written; returns it resolved. Writes nothing."""
    given = Path(output)
    path = given.resolve()
    if path.is_dir():
        raise UserInputError(f"cannot write to '{given}'", "it is a directory", f"give a file name for {option}")
    check_writable(path.parent, given, "the output file", f"choose a writable place for {option}")
    return path


def check_output_dir(output: str | os.PathLike[str], kind: str, protected: Iterable[str | os.PathLike[str]] = (),
                     force: bool = False, option: str = "-o") -> Path:
    """Refuse an output directory that would destroy something; returns it resolved. Writes nothing."""
    given = Path(output)
    path = given.resolve()
    if path.exists() and not path.is_dir():
        raise UserInputError(f"cannot write to '{given}'", "it is a file, not a directory",
                             f"give a new directory with {option}")
    cache = cache_root().resolve()
    if _contains(path, cache) or _contains(cache, path):
        raise UserInputError(f"cannot write to '{given}'", f"it {'contains' if _contains(path, cache) else 'is inside'} "
                             f"the compile cache ({cache})", f"choose a directory outside the cache for {option}")
    for item in protected:
        if not item:
            continue
        inner = Path(item).resolve()
        if _contains(path, inner):
            raise UserInputError(f"cannot write to '{given}'", f"it contains '{item}', one of this command's inputs, "
                                 "and the output directory is replaced as a whole",
                                 f"choose a new directory for {option}, e.g. out/")
    check_writable(path, given, "the output directory", f"choose a writable place for {option}")
    if path.is_dir() and any(path.iterdir()) and not _is_result(path, kind) and not force:
        _, what = KINDS[kind]
        raise UserInputError(f"output directory '{given}' is not empty", f"it is not {what}, and writing there "
                             "would replace everything in it", f"choose a new or empty directory for {option}, or "
                             "pass --force to replace it")
    return path
