"""The hostile-input harness: run the real CLI in a subprocess and check what a user relies on when they give it
something wrong.

Each case asserts: the exit code's category; stderr is exactly one line, starting with ``error:``; no
``Traceback`` anywhere; nothing half-written (no output directory that was not there before, no private build
directory, ``.tmp`` file or probe left anywhere under the world, an empty ``$TMPDIR``); and no file opened outside
the model folder, the bundle, the data, the cache and the case's own folder, besides the interpreter's own files
(checked by the audit hook ``site/sitecustomize.py`` installs in every process the CLI starts, children included).
Files a vendor library opens from C or C++ do not raise Python audit events and are not seen.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
TEST_BACKENDS = "crashy=tests.hostile.crashing_backend:CrashingCompiler"
LEFTOVER = re.compile(r"(^\..*-p\d+h[0-9a-f]{8}-)|(\.tmp$)|(^\.onnxsmith-probe-)|(\.(old|bad)-)")
EXIT = {"bad input": 2, "missing dependency": 3, "backend failure": 4, "unsupported": 5, "check failed": 6}


def _interpreter_roots() -> list[str]:
    """What any Python process here may open: the interpreter, the venv, site-packages (this one and the shared
    one a .pth adds), the package sources of the editable install, and the kernel's pseudo-files."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/proc", "/sys", "/dev", "/usr/lib", "/usr/share/zoneinfo",
             "/etc/localtime", "/etc/os-release", "/usr/lib/os-release", "/etc/ld.so.cache",
             # OpenVINO's telemetry reads and writes ~/intel when the openvino package is imported: the vendor's,
             # not onnxsmith's (reported, not hidden: it is listed here by name)
             os.path.expanduser("~/intel")}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and Path(entry).resolve() != REPO and "site-packages" in entry:
            roots.add(entry)
    roots.update(str(REPO / name) for name in ("onnxsmith", "compilers", "targets", "profiles", "tests/hostile",
                                               "onnxsmith.egg-info", "tests/__init__.py", "tests/__pycache__"))
    return sorted({os.path.realpath(r) for r in roots} | roots)


INTERPRETER = _interpreter_roots()


def model(nodes: list, inputs: list, outputs: list, inits: Sequence = (), opset: int = 17) -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def vi(name: str, shape: Sequence, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)


@dataclasses.dataclass
class World:
    """One module's inputs, built once: ``models/``, ``data/``, ``outside/`` (never to be read), ``cache/`` and a
    compiled ``bundles/good``."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def bundle(self) -> Path:
        return self.root / "bundles" / "good"

    def leftovers(self) -> list[str]:
        found = []
        for path in self.root.rglob("*"):
            if LEFTOVER.search(path.name) and "cases" not in path.relative_to(self.root).parts[:1]:
                found.append(str(path.relative_to(self.root)))
        return found


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    opened: list[str]
    case_dir: Path


def cli_env(cache: Path, tmp: Path, audit_log: Path | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: test backends registered, the audit hook on when ``audit_log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(REPO)]),
           "ONNXSMITH_TEST_BACKENDS": TEST_BACKENDS, "ONNXSMITH_CACHE_DIR": str(cache), "TMPDIR": str(tmp),
           "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("ONNXSMITH_BUNDLE_KEY", None)
    if audit_log is not None:
        env["ONNXSMITH_AUDIT_LOG"] = str(audit_log)
    return env


def run_cli(world: World, case_dir: Path, args: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> Result:
    """``python -m onnxsmith ARGS`` with the audit hook and test backends, ``$TMPDIR`` inside ``case_dir``."""
    tmp = case_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    full_env = cli_env(world.cache, tmp, case_dir / "audit")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", *args], capture_output=True, text=True,
                          env=full_env, cwd=case_dir, timeout=timeout)
    opened = []
    for part in case_dir.glob("audit.*"):
        opened += [line.split("\t")[0] for line in part.read_text().splitlines() if line]
        part.unlink()
    return Result(proc.returncode, proc.stdout, proc.stderr, opened, case_dir)


def check_error(world: World, result: Result, category: str, message: str | Callable[[str], bool],
                allowed: Sequence[Path] = (), absent: Sequence[Path] = ()) -> str:
    """The user-facing contract of one failing command; returns the error line."""
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything, everything
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line:\n{result.stderr}"
    line = lines[0]
    assert result.code == EXIT[category], f"exit {result.code}, expected {EXIT[category]} ({category}): {line}"
    assert "internal error" not in line and "this is a bug" not in line, line
    assert (message(line) if callable(message) else message.lower() in line.lower()), line
    assert world.leftovers() == [], f"half-written files left: {world.leftovers()}"
    tmp = result.case_dir / "tmp"
    # `.ses`: ONNX Runtime writes this session-id file into $TMPDIR when it is imported; it is not ours
    left = [p.name for p in tmp.iterdir() if p.name != ".ses"] if tmp.exists() else []
    assert left == [], f"left in $TMPDIR: {left}"
    for path in absent:
        assert not path.exists(), f"{path} was written"
    check_reads(world, result, allowed)
    return line


def check_reads(world: World, result: Result, allowed: Sequence[Path] = ()) -> None:
    roots = [*INTERPRETER, str(world.models), str(world.data), str(world.cache), str(world.root / "bundles"),
             str(result.case_dir), *(str(p) for p in allowed)]
    roots = [r.rstrip("/") for r in roots]
    outside = sorted({p for p in result.opened
                      if not any(p == r or p.startswith(r + "/") for r in roots)})
    assert not outside, f"opened outside the model folder, bundle, data and cache: {outside}"
    secret = str(world.outside)
    assert not any(p == secret or p.startswith(secret + "/") for p in result.opened), "read the outside folder"


def build_world(root: Path) -> World:
    """Models, data and a compiled bundle for the cases; the `outside` folder holds what must never be read."""
    world = World(root)
    for folder in (world.models, world.data, world.outside, world.cache, root / "bundles", root / "cases"):
        folder.mkdir(parents=True, exist_ok=True)
    m = world.models
    relu = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    onnx.save_model(relu, str(m / "relu.onnx"))
    dyn = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 4])], [vi("y", ["N", 4])])
    onnx.save_model(dyn, str(m / "dyn.onnx"))
    two = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", "M"])], [vi("y", ["N", "M"])])
    onnx.save_model(two, str(m / "dyn2.onnx"))
    op99 = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])], opset=99)
    onnx.save_model(op99, str(m / "opset99.onnx"))
    strings = model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [1, 4], TensorProto.STRING)],
                    [vi("y", [1, 4], TensorProto.STRING)])
    onnx.save_model(strings, str(m / "strings.onnx"))
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    sequence = model([helper.make_node("Identity", ["s"], ["t"])], [helper.make_value_info("s", seq_type)],
                     [helper.make_value_info("t", seq_type)])
    onnx.save_model(sequence, str(m / "sequence.onnx"))
    no_out = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [])
    onnx.save_model(no_out, str(m / "no_outputs.onnx"))
    huge = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4_000_000_000_000])],
                 [vi("y", [1, 4_000_000_000_000])])
    onnx.save_model(huge, str(m / "huge.onnx"))
    unknown_op = model([helper.make_node("NoSuchOp", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    onnx.save_model(unknown_op, str(m / "unknown_op.onnx"))
    gather = model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
                   [vi("x", [1, 4]), vi("i", [1], TensorProto.INT64)], [vi("y", [1, 1])])
    onnx.save_model(gather, str(m / "gather.onnx"))
    (m / "empty.onnx").write_bytes(b"")
    (m / "json.onnx").write_text('{"not": "onnx"}')
    (m / "garbage.onnx").write_bytes(bytes(range(256)) * 8)
    (m / "truncated.onnx").write_bytes((m / "relu.onnx").read_bytes()[:25])
    marker = world.outside / "pwned"
    (m / "pickle.onnx").write_bytes(b"\x80\x04\x95" + f"cos\nsystem\n(Vtouch {marker}\ntR.".encode())
    (m / "folder.onnx").mkdir()
    _external_models(world)
    _data(world)
    (world.outside / "evil.onnx").write_bytes((m / "relu.onnx").read_bytes())
    (world.outside / "passwd").write_text("root:x:0:0\n")
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", "compile", str(m / "relu.onnx"), "-b", "onnxruntime",
                           "-o", str(world.bundle)], capture_output=True, text=True,
                          env={**os.environ, "ONNXSMITH_CACHE_DIR": str(world.cache)})
    assert proc.returncode == 0, proc.stderr
    for name in ("strings", "sequence"):  # ONNX Runtime takes string tensors and sequences
        proc = subprocess.run([sys.executable, "-m", "onnxsmith", "compile", str(m / f"{name}.onnx"), "-b",
                               "onnxruntime", "-o", str(root / "bundles" / name)], capture_output=True, text=True,
                              env={**os.environ, "ONNXSMITH_CACHE_DIR": str(world.cache)})
        assert proc.returncode == 0, proc.stderr
    return world


def _external_models(world: World) -> None:
    """One folder per external-data model (the data must sit beside it)."""
    weights = np.ones((4, 4), np.float32)
    base = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])],
                 [onnx.numpy_helper.from_array(weights, "w")])

    def save(name: str, edit: Callable[[dict[str, str]], None] | None = None) -> Path:
        folder = world.models / name
        folder.mkdir()
        onnx.save_model(copy.deepcopy(base), str(folder / "model.onnx"), save_as_external_data=True, location="model.data",
                        size_threshold=0)
        if edit:
            proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
            entries = {e.key: e.value for e in proto.graph.initializer[0].external_data}
            edit(entries)
            del proto.graph.initializer[0].external_data[:]
            for key, value in entries.items():
                proto.graph.initializer[0].external_data.add(key=key, value=value)
            onnx.save_model(proto, str(folder / "model.onnx"))
        return folder

    save("ext-ok")
    save("ext-absolute", lambda e: e.update(location=str(world.outside / "secret.data")))
    save("ext-dotdot", lambda e: e.update(location="../../outside/secret.data"))
    save("ext-missing", lambda e: e.update(location="nowhere.data"))
    save("ext-negative", lambda e: e.update(offset="-16"))
    save("ext-truncated", lambda e: e.update(length="100000"))
    folder = save("ext-directory")
    (folder / "model.data").unlink()
    (folder / "model.data").mkdir()
    (world.outside / "secret.data").write_bytes(weights.tobytes())
    folder = save("ext-symlink")
    (folder / "model.data").unlink()
    (folder / "model.data").symlink_to(world.outside / "secret.data")
    folder = save("ext-hardlink")
    (folder / "model.data").unlink()
    (world.outside / "linked.data").write_bytes(weights.tobytes())
    os.link(world.outside / "linked.data", folder / "model.data")


def _data(world: World) -> None:
    d = world.data
    rng = np.random.default_rng(0)
    np.savez(d / "x.npz", x=rng.standard_normal((3, 4)).astype(np.float32))
    np.savez(d / "wrong_name.npz", input=np.zeros((3, 4), np.float32))
    np.savez(d / "wrong_shape.npz", x=np.zeros((3, 5), np.float32))
    np.savez(d / "wrong_dtype.npz", x=np.zeros((3, 4), np.float64))
    np.savez(d / "nan.npz", x=np.full((3, 4), np.nan, np.float32))
    np.savez(d / "inf.npz", x=np.full((3, 4), np.inf, np.float32))
    np.savez(d / "labels.npz", x=np.zeros((3, 4), np.float32), label=np.arange(3))
    np.savez(d / "empty.npz", x=np.zeros((0, 4), np.float32))
    np.savez(d / "gather_oob.npz", x=np.ones((1, 4), np.float32), i=np.array([10], np.int64))
    marker = world.outside / "pwned"
    np.savez(d / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    (d / "pickle.npy").write_bytes(b"\x80\x04\x95" + f"cos\nsystem\n(Vtouch {marker}\ntR.".encode())
    (d / "garbage.npz").write_bytes(b"PK\x03\x04" + bytes(200))
    (d / "text.npz").write_text("x,y\n1,2\n")
    (d / "folder.npz").mkdir()
    _text_and_sequence_data(d)


def _npz_with_header(path: Path, name: str, header: dict, data: bytes) -> None:
    """An .npz whose member ``name`` carries a hand-written .npy header (a forged file)."""
    import io
    import zipfile

    from numpy.lib import format as npformat

    member = io.BytesIO()
    npformat.write_array_header_1_0(member, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", member.getvalue() + data)


def _text_and_sequence_data(d: Path) -> None:
    """Strings for models/strings.onnx (x: 1x4 string) and sequences for models/sequence.onnx (s: seq of float)."""
    np.savez(d / "strings.npz", x=np.array([["a", "bc", "", "\u00e9t\u00e9"]]))
    np.savez(d / "strings_objects.npz", x=np.array([["a", "b", "c", "d"]], dtype=object))  # pickled by numpy
    _npz_with_header(d / "strings_wide.npz", "x", {"descr": "<U2000000", "fortran_order": False, "shape": (1, 4)},
                     bytes(64))
    np.savez(d / "strings_bad_utf8.npz", x=np.array([[b"\xff\xfe", b"a", b"b", b"c"]]))
    np.savez(d / "strings_surrogate.npz", x=np.array([[0xD800, 65, 66, 0x110000]], np.uint32).view("<U1"))
    one, two = np.ones((2, 3), np.float32), np.zeros((4,), np.float32)
    np.savez(d / "seq.npz", **{"s.0": one, "s.1": two, "s.length": np.array(2)})
    np.savez(d / "seq_one_array.npz", s=one)
    np.savez(d / "seq_gap.npz", **{"s.0": one, "s.2": two})
    np.savez(d / "seq_length_lie.npz", **{"s.0": one, "s.length": np.array(5)})
    np.savez(d / "seq_huge_length.npz", **{"s.length": np.array(10**12)})
    np.savez(d / "seq_objects.npz", **{"s.0": np.array([{"a": 1}], dtype=object)})
    np.savez(d / "seq_wrong_dtype.npz", **{"s.0": np.ones(3, np.float64)})
