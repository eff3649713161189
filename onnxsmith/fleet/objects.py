"""Content-addressed transfer: files and folders packed as deterministic tar bytes named by their sha256.

The driver puts each distinct payload into Ray's object store once; a worker keeps what it unpacked under
``<cache>/fleet/objects/<sha256>/`` and fetches a payload only when that folder is missing, so a model, its data and
an artifact are never sent twice to the same worker.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

from onnxsmith.errors import UserInputError


def pack(paths: dict[str, Path]) -> bytes:
    """A tar of ``{name in archive: file or folder}``: sorted members, zero mtimes and owners, so equal content gives
    equal bytes (and an equal sha256)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(paths):
            root = paths[name]
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for path in files:
                if path.is_symlink():
                    raise UserInputError(f"cannot send {path} to the fleet", "it is a symbolic link",
                                         "pass the file it points to")
                arcname = name if path == root else f"{name}/{path.relative_to(root).as_posix()}"
                info = tarfile.TarInfo(arcname)
                info.size = path.stat().st_size
                info.mode = 0o644
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    return buf.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def objects_root() -> Path:
    from onnxsmith.build.cache import cache_root

    return cache_root() / "fleet" / "objects"


def cached(sha: str) -> Path | None:
    path = objects_root() / sha
    return path if (path / ".complete").is_file() else None


def unpack(sha: str, data: bytes) -> Path:
    """Unpack ``data`` (checked against ``sha``) into the worker's object folder once; returns the folder."""
    if digest(data) != sha:
        raise UserInputError("a fleet payload arrived damaged", f"its sha256 is not {sha}", "run the compare again")
    done = cached(sha)
    if done:
        return done
    root = objects_root()
    root.mkdir(parents=True, exist_ok=True)
    from onnxsmith.build.cache import owner_tag

    tmp = root / f".{sha[:16]}-{owner_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(tmp, filter="data")
    (tmp / ".complete").write_text(sha)
    try:
        os.rename(tmp, root / sha)
    except OSError:  # another task unpacked the same payload first
        shutil.rmtree(tmp, ignore_errors=True)
    return root / sha


def unpack_to(data: bytes, dest: Path) -> None:
    """Unpack a payload into ``dest`` (an empty private folder)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
