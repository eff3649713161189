"""The compile cache: hits, corruption, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from onnxsmith.build.cache import CompileCache
from onnxsmith.plugin import Artifact


def _artifact(name: str = "a.bin") -> Artifact:
    return Artifact("test", "1", "cpu", "fp32", "fp32", (name,))


def _builder(calls: list[int], content: bytes = b"payload"):
    def build(workdir: Path) -> Artifact:
        calls.append(1)
        (workdir / "a.bin").write_bytes(content)
        return _artifact()
    return build


def test_second_lookup_is_a_hit(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    calls: list[int] = []
    art, entry, hit = cache.get_or_build("k" * 64, _builder(calls))
    assert not hit and (entry / "a.bin").read_bytes() == b"payload"
    art2, entry2, hit2 = cache.get_or_build("k" * 64, _builder(calls))
    assert hit2 and entry2 == entry and art2 == art and len(calls) == 1


def test_corrupted_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)
    calls: list[int] = []
    _, entry, _ = cache.get_or_build("c" * 64, _builder(calls))
    (entry / "a.bin").write_bytes(b"garbage")
    assert cache.lookup("c" * 64) is None
    _, entry, hit = cache.get_or_build("c" * 64, _builder(calls))
    assert not hit and len(calls) == 2 and (entry / "a.bin").read_bytes() == b"payload"


def test_failed_build_leaves_no_entry(tmp_path: Path) -> None:
    cache = CompileCache(tmp_path)

    def broken(workdir: Path) -> Artifact:
        (workdir / "a.bin").write_bytes(b"half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cache.get_or_build("f" * 64, broken)
    assert cache.lookup("f" * 64) is None
    assert not [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]


def _race(root: str, key: str, content: bytes, barrier: multiprocessing.synchronize.Barrier) -> None:
    import time

    cache = CompileCache(Path(root))

    def build(workdir: Path) -> Artifact:
        barrier.wait()
        (workdir / "a.bin").write_bytes(content)
        time.sleep(0.05)
        return _artifact()

    cache.get_or_build(key, build)


def test_two_processes_building_the_same_key_leave_one_valid_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    key = "r" * 64
    procs = [ctx.Process(target=_race, args=(str(tmp_path), key, c, barrier)) for c in (b"one", b"two")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    found = CompileCache(tmp_path).lookup(key)
    assert found is not None
    assert (found[1] / "a.bin").read_bytes() in (b"one", b"two")
    leftovers = [p.name for p in found[1].parent.iterdir() if p.name != key]
    assert leftovers == []


def test_sweep_leaves_another_pid_namespaces_directories(tmp_path: Path) -> None:
    """A pid means one process only within its PID namespace: a directory made by a process in another namespace
    (a container, ``unshare --pid``) whose pid looks dead from here is not swept; our own dead owner's is."""
    import hashlib
    import socket
    import subprocess
    import time

    from onnxsmith.build.cache import owner_tag, sweep_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    ours = owner_tag().split("h", 1)[1]
    other = hashlib.sha256(f"{socket.gethostname()}\0pid:[1]".encode()).hexdigest()[:8]
    assert other != ours
    mine = tmp_path / f".build-p{dead.pid}h{ours}-x"
    theirs = tmp_path / f".build-p{dead.pid}h{other}-x"
    for path in (mine, theirs):
        path.mkdir()
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert sweep_stale(tmp_path) == [mine]
    assert theirs.is_dir() and not mine.exists()


def test_owner_tag_differs_in_another_pid_namespace() -> None:
    """The real case: a process in a new PID namespace (same host name) gets another owner tag, so the pids it
    sees, which mean other processes here, are never taken for dead owners of this namespace's directories."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    from onnxsmith.build.cache import owner_tag

    proc = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c",
                           "from onnxsmith.build.cache import owner_tag; print(owner_tag())"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode:
        pytest.skip(f"cannot make a PID namespace here: {proc.stderr.strip()[:200]}")
    assert proc.stdout.split("h", 1)[1].strip() != owner_tag().split("h", 1)[1]
