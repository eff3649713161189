"""What every Core ML module shares: coremltools and onnx2coreml imported lazily (and quietly), and the files of a
saved ``.mlpackage`` (a folder, listed file by file in an artifact)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxsmith.errors import MissingDependencyError
from onnxsmith.plugin import Artifact

MAIN_FILE = "model.mlpackage"


def package_files(workdir: Path) -> tuple[str, ...]:
    """Every file of the saved package, ``Manifest.json`` first: an ``.mlpackage`` is a folder, and an artifact
    lists files (each one is checksummed in the bundle)."""
    root = workdir / MAIN_FILE
    files = sorted(p.relative_to(workdir).as_posix() for p in root.rglob("*") if p.is_file())
    first = f"{MAIN_FILE}/Manifest.json"
    return (first, *[f for f in files if f != first])


@contextlib.contextmanager
def openable_package(package: Path) -> Iterator[Path]:
    """``package``, or a private copy with the empty folders its ``Manifest.json`` names recreated.

    A program whose weights all fit inline leaves ``Data/com.apple.CoreML/weights`` empty; a bundle lists files,
    so the copy in a bundle lacks that folder and coremltools refuses the package ("Item does not exist"). The
    bundle itself is never written to."""
    import json
    import shutil
    import tempfile

    try:
        items = json.loads((package / "Manifest.json").read_text()).get("itemInfoEntries", {}).values()
        missing = [str(item["path"]) for item in items if not (package / "Data" / str(item["path"])).exists()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        missing = []
    if not missing:
        yield package
        return
    with tempfile.TemporaryDirectory(prefix="onnxsmith-mlpackage-") as tmp:
        copy = Path(tmp) / package.name
        shutil.copytree(package, copy)
        for path in missing:
            if ".." not in Path(path).parts and not Path(path).is_absolute():
                (copy / "Data" / path).mkdir(parents=True, exist_ok=True)
        yield copy


def package_path(artifact: Artifact, directory: Path) -> Path:
    """The ``.mlpackage`` folder of an artifact (bundles before the file list named the folder itself)."""
    return directory / Path(artifact.files[0]).parts[0]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence coremltools' import warnings (untested sklearn/torch versions, no macOS proxies) and progress bars."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def coremltools() -> Any:
    try:
        with quiet():
            import coremltools as ct
    except ImportError as exc:
        raise MissingDependencyError("coremltools", "coreml") from exc
    return ct


def onnx2coreml() -> Any:
    coremltools()
    try:
        with quiet():
            import onnx2coreml as converter
    except ImportError as exc:
        raise MissingDependencyError("onnx2coreml", "coreml", "the 'coreml' backend converts ONNX with it") from exc
    return converter
