"""Nothing lost, nothing left: bundles do not share files with the cache, SIGTERM cleans up like Ctrl-C, and what a
SIGKILL leaves behind is swept by a later run (never a live build of another process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import helper

from onnxsmith.bundle import Bundle
from onnxsmith.build.cache import CompileCache, owner_tag
from tests.cli.test_cli import cli
from tests.hostile.harness import cli_env, model, vi


@pytest.fixture
def relu(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "relu.onnx"
    path.parent.mkdir()
    onnx.save_model(model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])]), str(path))
    return path


# --- item 4: a bundle's files are its own ----------------------------------------------------------------------------

def test_editing_a_bundle_in_place_leaves_the_cache_and_sibling_bundles_intact(
        relu: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):
        code, _, err = cli(["compile", str(relu), "-b", "onnxruntime", "-o", str(tmp_path / name)], capsys)
        assert code == 0, err
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    key = manifest["cache"]["key"]
    edited = tmp_path / "a" / "artifact" / manifest["artifact"]["files"][0]
    with open(edited, "r+b") as f:  # an in-place edit, as an editor or a script would make it
        f.seek(0)
        f.write(b"\xde\xad\xbe\xef")
    with pytest.raises(Exception, match="was modified"):
        Bundle.open(tmp_path / "a")
    assert CompileCache().lookup(key) is not None, "the edit reached the cache entry"
    Bundle.open(tmp_path / "b")  # the sibling still verifies
    code, out, err = cli(["compile", str(relu), "-b", "onnxruntime", "-o", str(tmp_path / "c"), "--json"], capsys)
    assert code == 0 and json.loads(out)["cache"]["hit"] is True, err
    Bundle.open(tmp_path / "c")


# --- item 8: SIGTERM and SIGKILL --------------------------------------------------------------------------------------

def _slow_compile(relu: Path, tmp_path: Path, out: str) -> tuple[subprocess.Popen[str], Path, Path]:
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "onnxsmith", "compile", str(relu), "-b", "crashy", "--option",
                             "crash=sleep", "-o", str(tmp_path / out)], env=cli_env(cache, tmp), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(cache.glob("artifacts/*/.*/partial.bin")):  # the backend is inside compile()
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, cache, tmp


def _ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".ses") if folder.is_dir() else []


def test_sigterm_cleans_up_like_ctrl_c(relu: Path, tmp_path: Path) -> None:
    proc, cache, tmp = _slow_compile(relu, tmp_path, "out")
    assert any(name.startswith("onnxsmith-model-") for name in _ours(tmp))  # the model copy in $TMPDIR
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines() == ["terminated"], err
    assert list(cache.glob("artifacts/*/.*")) == [], "a partial build was left in the cache"
    assert _ours(tmp) == [], "left in $TMPDIR"
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out-*")) == []
    with pytest.raises(ProcessLookupError):  # the compiling child went with it
        os.killpg(proc.pid, 0)


def test_what_sigkill_leaves_is_swept_later_but_never_a_live_build(relu: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    proc, cache, tmp = _slow_compile(relu, tmp_path, "out")
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: the CLI and its compiling child
    proc.communicate(timeout=60)
    stale = [*cache.glob("artifacts/*/.*"), *(tmp / name for name in _ours(tmp))]
    assert any(p.parent.parent.name == "artifacts" for p in stale) and any(p.parent == tmp for p in stale)
    shard = next(p.parent for p in stale if p.parent.parent.name == "artifacts")
    live = subprocess.Popen(["sleep", "120"])
    try:
        host = owner_tag().split("h", 1)[1]
        alive_build = shard / f".0123456789ab-p{live.pid}h{host}-live"  # a concurrent process's build
        fresh = shard / f".0123456789ab-p{proc.pid}h{host}-fresh"  # dead owner, but too recent to judge
        alive_build.mkdir()
        fresh.mkdir()
        hour_ago = time.time() - 3600
        for path in [*stale, alive_build]:
            os.utime(path, (hour_ago, hour_ago))
        import tempfile

        monkeypatch.setenv("TMPDIR", str(tmp))
        monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(cache))
        monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
        code, _, err = cli(["compile", str(relu), "-b", "onnxruntime", "-o", str(tmp_path / "next")], capsys)
        assert code == 0, err
        assert [p for p in stale if p.exists()] == [], "stale private directories were not swept"
        assert alive_build.is_dir() and fresh.is_dir()
    finally:
        live.kill()
        live.wait()


def test_the_compiling_child_ends_when_the_cli_is_killed(relu: Path, tmp_path: Path) -> None:
    """SIGKILL on the CLI alone (not its process group): the compiling child notices it was orphaned and ends,
    instead of building on for nobody while holding the cache shard's lock."""
    proc, cache, tmp = _slow_compile(relu, tmp_path, "out")
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == proc.pid
                and b"onnxsmith.build.isolate" in _cmdline(p)]
    assert children, "no compiling child found"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in children):
        assert time.monotonic() < deadline, "the orphaned compiling child is still running"
        time.sleep(0.1)


def _parent(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
