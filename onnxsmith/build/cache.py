"""Content-addressed compile cache.

Key = sha256 over the model fingerprint, target fingerprint, backend and its version, precision, options,
calibration fingerprint and onnxsmith version. An entry is a directory holding the artifact files and
``entry.json`` (the artifact record plus each file's sha256). Entries are built in a private temporary
directory and renamed into place, so a reader never sees half an entry; when two processes build the same key,
the first rename wins and the other build is discarded. An entry whose files no longer match their checksums is
removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from onnxsmith.errors import UserInputError
from onnxsmith.dirs import cache_root, check_writable
from onnxsmith.plugin import Artifact

ENTRY_FILE = "entry.json"


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


STALE_SECONDS = 15 * 60
"""A private directory left by a dead process is swept once it is this old (and its owner is gone)."""
_OWNER = re.compile(r"^(?:\.|onnxsmith-).*-p(\d+)h([0-9a-f]{8})-[^/]*$")


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """This host and PID namespace: a pid means the same process only within one namespace, so a process in
    another one (a container, ``unshare --pid`` as the Ray test clusters use) never sweeps this one's live
    directories as a dead owner's, nor the other way round."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``p<pid>h<host>``, put in every private directory's name so a later run can tell a dead process's
    leftovers (SIGKILL, power loss) from a live build of a concurrent process."""
    return f"p{os.getpid()}h{_host()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


def sweep_stale(parent: Path, min_age: float = STALE_SECONDS) -> list[Path]:
    """Remove the private directories under ``parent`` whose owner died: made on this host by a process that no
    longer exists, and untouched for ``min_age`` seconds. A live build (any other process's, or ours) is never
    touched, nor anything without an onnxsmith owner tag."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _OWNER.match(entry.name)
        if not match or match.group(2) != _host() or int(match.group(1)) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
        except OSError:
            continue
        if not _alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


_swept: set[str] = set()


def sweep_once(parent: Path) -> None:
    """:func:`sweep_stale` on ``parent``, at most once per process."""
    if str(parent) not in _swept:
        _swept.add(str(parent))
        sweep_stale(parent)


@contextlib.contextmanager
def private_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary directory under ``parent`` (same file system, so it can be renamed into place), named with
    its owner so that a later run sweeps it if this process is killed before its ``finally`` runs."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_once(parent)
    path = Path(tempfile.mkdtemp(prefix=f".{prefix}-{owner_tag()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename ``tmp`` to ``final`` atomically; False when ``final`` already exists (another writer won)."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if final.exists():
            return False
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an existing directory: where the kernel can, the two are swapped in one
    step, so no interrupt or SIGKILL can leave ``final`` missing (the previous result, left at ``tmp``, is then
    removed); elsewhere with one rename each way, the previous one put back when the second fails."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = final.with_name(f".{final.name}.old-{owner_tag()}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if not final.exists():
                os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


class CompileCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_root()) / "artifacts"

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> tuple[Artifact, Path] | None:
        """A verified entry, or None; a corrupted entry is removed so it gets rebuilt."""
        directory = self.entry_dir(key)
        record_path = directory / ENTRY_FILE
        if not record_path.exists():
            return None
        try:
            record = json.loads(record_path.read_text())
            artifact = Artifact.from_json(record["artifact"])
            for name, digest in record["sha256"].items():
                if sha256_file(directory / name) != digest:
                    raise ValueError(f"{name} changed")
        except (OSError, ValueError, KeyError, TypeError):
            self.evict(key)
            return None
        return artifact, directory

    def evict(self, key: str) -> None:
        directory = self.entry_dir(key)
        if directory.exists():
            trash = directory.with_name(f".{directory.name}.bad-{owner_tag()}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(directory, trash)
            except OSError:
                return
            shutil.rmtree(trash, ignore_errors=True)

    def check_usable(self) -> None:
        """A user error naming the cache directory when it is a file or cannot be written."""

        root = self.root.parent
        named = "ONNXSMITH_CACHE_DIR" if os.environ.get("ONNXSMITH_CACHE_DIR") else "the cache directory"
        hint = "point ONNXSMITH_CACHE_DIR at a writable directory, or pass --no-cache"
        if root.exists() and not root.is_dir():
            raise UserInputError(f"cannot use the compile cache '{root}'", f"{named} is a file, not a directory",
                                 hint)
        check_writable(self.root, root, f"the compile cache ({named})", hint)

    def get_or_build(self, key: str, build: Callable[[Path], Artifact]) -> tuple[Artifact, Path, bool]:
        """The entry for ``key``, building it with ``build(workdir)`` when missing. Returns (artifact, dir, hit)."""
        self.check_usable()
        if str(self.root) not in _swept:  # leftovers of killed builds in every shard, once per process
            _swept.add(str(self.root))
            for shard in self.root.iterdir() if self.root.is_dir() else ():
                if shard.is_dir() and not shard.is_symlink():
                    sweep_once(shard)
        found = self.lookup(key)
        if found:
            return (*found, True)
        parent = self.entry_dir(key).parent
        with private_dir(parent, key[:12]) as tmp:
            artifact = build(tmp)
            files = _artifact_files(tmp, artifact)
            record = {"key": key, "artifact": artifact.to_json(),
                      "sha256": {name: sha256_file(tmp / name) for name in files}}
            (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=2))
            if not publish_dir(tmp, self.entry_dir(key)):
                found = self.lookup(key)
                if found is None:  # the winner's entry is unreadable: replace it with ours
                    replace_dir(tmp, self.entry_dir(key))
        found = self.lookup(key)
        if found is None:
            raise RuntimeError(f"cache entry {key} vanished right after it was written")
        return (*found, False)


def _artifact_files(directory: Path, artifact: Artifact) -> list[str]:
    """Every regular file under ``directory`` (relative paths); artifact.files must all exist."""
    for name in artifact.files:
        if not (directory / name).exists():
            raise RuntimeError(f"backend {artifact.backend} listed '{name}' but did not write it")
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
