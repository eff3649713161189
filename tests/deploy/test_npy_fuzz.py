"""The ``.npy`` reader every C++ deployment program shares (``deploy.hpp``), attacked with malformed files: a small
harness that calls ``npy::load`` built with ``-fsanitize=address,undefined``, fed a corpus written here (every few
bytes of a truncated valid file, huge, negative and junk dims, unknown and big-endian dtypes, Fortran order, header
lengths beyond the file, nested tuples, missing data, trailing data) and a few hundred seeded random mutations. Each
malformed file is one error line naming the file (exit 1), each valid one loads with NumPy's shape and bytes, and the
sanitizers report nothing. Then the deployment programs that build here (OpenVINO, TVM; ONNX Runtime's C++ API has
no headers here) are built with the same flags and fed malformed inputs and their example input."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxsmith.cli import cli
from onnxsmith.deploy import COMMON
from tests.deploy.test_programs import (assert_equal_outputs, compile_digits, onnxsmith_run, outputs_of, programs,
                                        python_env, shell)
from tests.models import make_cnn

if shutil.which("g++") is None:
    pytest.skip("g++ is not installed (apt-get install g++)", allow_module_level=True)

SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# A sanitizer report exits with its own status (not 1, the programs' error status) and halts at the first finding.
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=86:abort_on_error=0:halt_on_error=1",
                 "UBSAN_OPTIONS": "exitcode=87:halt_on_error=1:print_stacktrace=1",
                 # oneTBB (OpenVINO's threading) dlopens libtbbbind with RTLD_DEEPBIND, which ASan refuses outright;
                 # this documented oneTBB switch drops that flag. No other exception is needed: leak detection and
                 # ODR checks stay on.
                 "TBB_ENABLE_SANITIZERS": "1"}

HARNESS = r"""
#include "deploy.hpp"
// harness OUT_DIR FILE...: loads each FILE; prints "I ok DESCR [SHAPE]" and saves it again as OUT_DIR/I.npy, or
// "I error: MESSAGE". Exit 1 when any FILE was refused.
// harness --save-checks OUT_DIR: npy::save with a wrong size, a negative dim and an unknown dtype must each throw
// and leave no file.
int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "--save-checks") {
    const std::string out = std::string(argv[2]) + "/bad.npy";
    const float data[6] = {0, 1, 2, 3, 4, 5};
    struct Case { std::string descr; std::vector<int64_t> shape; size_t bytes; } cases[] = {
        {"<f4", {2, 3}, 20}, {"<f4", {2, 3}, 28}, {"<f4", {-2, -3}, 24}, {"<f4", {int64_t(1) << 62, 4}, 0},
        {"<U4", {6}, 24}, {">f4", {6}, 24}, {"<f4", std::vector<int64_t>(65, 1), 4}};
    for (const Case& c : cases) {
      try {
        npy::save(out, c.descr, c.shape, data, c.bytes);
        std::cout << "saved " << c.descr << " " << npy::shape_text(c.shape) << "\n";
      } catch (const std::exception& e) {
        std::cout << "refused: " << e.what() << "\n";
      }
      if (std::filesystem::exists(out) || std::filesystem::exists(out + ".part")) std::cout << "left a file\n";
    }
    return 0;
  }
  int status = 0;
  for (int i = 2; i < argc; ++i) {
    try {
      npy::Array a = npy::load(argv[i]);
      npy::save(std::string(argv[1]) + "/" + std::to_string(i - 2) + ".npy", a.descr, a.shape, a.data.data(),
                a.data.size());
      std::cout << i - 2 << " ok " << a.descr << " " << npy::shape_text(a.shape) << "\n";
    } catch (const std::exception& e) {
      std::cout << i - 2 << " error: " << e.what() << "\n";
      status = 1;
    }
  }
  return status;
}
"""


# --- writing .npy files by hand --------------------------------------------------------------------------------

def npy(header: str | bytes, data: bytes = b"", version: tuple[int, int] = (1, 0), length: int | None = None) -> bytes:
    """A .npy file: magic, VERSION, the header's length (LENGTH, or the real one), HEADER, DATA."""
    text = header.encode("latin1") if isinstance(header, str) else header
    size = len(text) if length is None else length
    field = size.to_bytes(2 if version[0] == 1 else 4, "little", signed=False)
    return b"\x93NUMPY" + bytes(version) + field + text + data


def header(descr: str = "'<f4'", order: str = "False", shape: str = "(2, 3)") -> str:
    text = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}"
    return text + " " * (63 - (10 + len(text)) % 64) + "\n"


def saved(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    from io import BytesIO

    out = BytesIO()
    np.lib.format.write_array(out, array, version=version, allow_pickle=False)
    return out.getvalue()


VALID = {  # name -> the array NumPy wrote (each dtype a program may take; 0-d, empty, 1-d; format 1.0, 2.0, 3.0)
    "f4": (np.arange(24, dtype=np.float32).reshape(2, 3, 4), None),
    "f2": (np.linspace(-1, 1, 6).astype(np.float16), None),
    "f8-0d": (np.array(3.25), None),
    "i1": (np.arange(-4, 4, dtype=np.int8).reshape(2, 4), None),
    "i2": (np.arange(6, dtype=np.int16), None),
    "i4-v2": (np.arange(6, dtype=np.int32).reshape(3, 2), (2, 0)),
    "i8-v3": (np.arange(5, dtype=np.int64), (3, 0)),
    "u1": (np.arange(9, dtype=np.uint8).reshape(3, 3), None),
    "u2": (np.arange(4, dtype=np.uint16), None),
    "u4": (np.arange(4, dtype=np.uint32), None),
    "u8": (np.arange(4, dtype=np.uint64), None),
    "b1": (np.array([True, False, True]), None),
    "empty": (np.zeros((0, 5), np.float32), None),
}

F4 = np.arange(6, dtype=np.float32).tobytes()  # the data of a (2, 3) float32 array


def malformed() -> dict[str, bytes]:
    """Named malformed files, each with what its error must say."""
    valid = saved(VALID["f4"][0])
    cases = {f"truncated-{n}": valid[:n] for n in range(0, len(valid), 5)}
    cases.update({
        "empty-file": b"",
        "not-npy": b"PK\x03\x04" + valid[4:],
        "version-4.0": valid[:6] + b"\x04\x00" + valid[8:],
        "version-1.1": valid[:6] + b"\x01\x01" + valid[8:],
        "huge-dims": npy(header(shape="(4611686018427387904, 4)")),
        "huge-dims-3": npy(header(shape="(2147483648, 2147483648, 4)")),
        "dim-over-int64": npy(header(shape="(9223372036854775808,)")),
        "dim-20-digits": npy(header(shape="(99999999999999999999, 1)")),
        "gigabyte-without-data": npy(header(shape="(268435456,)")),
        "negative-dim": npy(header(shape="(-1, 6)"), F4),
        "negative-dims": npy(header(shape="(-2, -3)"), F4),
        "dim-junk-x": npy(header(shape="(2x, 3)"), F4),
        "dim-float": npy(header(shape="(2.0, 3)"), F4),
        "dim-hex": npy(header(shape="(0x2, 3)"), F4),
        "dim-long": npy(header(shape="(2L, 3L)"), F4),
        "dim-plus": npy(header(shape="(+2, 3)"), F4),
        "dim-quoted": npy(header(shape="('2', 3)"), F4),
        "dim-empty": npy(header(shape="(2, , 3)"), F4),
        "shape-list": npy(header(shape="[2, 3]"), F4),
        "shape-unclosed": npy(header(shape="(2, 3"), F4),
        "nested-parentheses": npy(header(shape="((2, 3), 1)"), F4),
        "deep-parentheses": npy(header(shape="(" * 5000 + ")" * 5000)),
        "rank-65": npy(header(shape="(" + "1, " * 65 + ")"), F4[:4]),
        "dtype-unicode": npy(header(descr="'<U4'"), F4),
        "dtype-object": npy(header(descr="'|O'"), F4),
        "dtype-complex": npy(header(descr="'<c8'"), F4 * 2),
        "dtype-name": npy(header(descr="'float32'"), F4),
        "dtype-i3": npy(header(descr="'<i3'"), F4),
        "dtype-stoul": npy(header(descr="'<f99999999999999999999'"), F4),
        "dtype-empty": npy(header(descr="''"), F4),
        "dtype-not-string": npy(header(descr="4"), F4),
        "dtype-structured": npy(header(descr="[('a', '<f4')]"), F4),
        "dtype-escape": npy(header(descr="'<f\\x34'"), F4),
        "dtype-newline": npy(header(descr="'<f4\n'"), F4),
        "big-endian": npy(header(descr="'>f4'"), np.arange(6, dtype=">f4").tobytes()),
        "big-endian-i8": npy(header(descr="'>i8'"), F4 * 2),
        "fortran-order": npy(header(order="True"), F4),
        "order-junk": npy(header(order="0"), F4),
        "header-beyond-file": npy(header(), F4, length=1000),
        "header-length-huge": npy(header(), F4, version=(2, 0), length=0xFFFFFFFF),
        "header-length-64k": npy(header() + " " * 70000, F4, version=(2, 0)),
        "header-length-zero": npy(b"", F4, length=0),
        "header-not-dict": npy("('<f4', False, (2, 3))\n", F4),
        "header-missing-shape": npy("{'descr': '<f4', 'fortran_order': False}\n", F4),
        "header-missing-descr": npy("{'fortran_order': False, 'shape': (2, 3)}\n", F4),
        "header-duplicate-key": npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}\n", F4),
        "header-unknown-key": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}\n", F4),
        "header-unclosed": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), ", F4),
        "header-after-dict": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} junk\n", F4),
        "header-nul": npy(header().rstrip().rstrip(" ") + "\0" * 8 + "\n", F4),
        "header-latin1": npy(header(descr="'<f\xe94'"), F4),
        "header-unterminated-string": npy("{'descr': '<f4", F4),
        "empty-shape-no-data": npy(header(shape="()")),
        "short-data": npy(header(), F4[:-1]),
        "trailing-data": npy(header(), F4 + b"\0"),
        "two-arrays": valid + valid,
    })
    return cases


# Each named case's error must say this (the file's name is checked on every line).
EXPECTED = {
    "empty-file": "not a .npy file", "not-npy": "not a .npy file", "version-4.0": "version 4.0",
    "version-1.1": "version 1.1", "huge-dims": "overflows", "huge-dims-3": "overflows",
    "dim-over-int64": "over 2**63-1", "dim-20-digits": "over 2**63-1",
    "gigabyte-without-data": "holds 0 bytes of data, its header declares 1073741824",
    "negative-dim": "negative dim", "negative-dims": "negative dim", "dim-junk-x": "not digits",
    "dim-float": "not digits", "dim-hex": "not digits", "dim-long": "not digits", "dim-plus": "not digits",
    "dim-quoted": "not digits", "dim-empty": "not digits", "shape-list": "not a tuple", "shape-unclosed": "not digits",
    "nested-parentheses": "not digits", "deep-parentheses": "not digits", "rank-65": "over 64 dims",
    "dtype-unicode": "unsupported dtype '<U4'", "dtype-object": "unsupported dtype '|O'",
    "dtype-complex": "unsupported dtype '<c8'", "dtype-name": "unsupported dtype 'float32'",
    "dtype-i3": "unsupported dtype '<i3'", "dtype-stoul": "unsupported dtype '<f99999999999999999999'",
    "dtype-empty": "unsupported dtype ''", "dtype-not-string": "no quoted string for the descr",
    "dtype-structured": "no quoted string for the descr", "dtype-escape": "an escape, a control byte",
    "dtype-newline": "an escape, a control byte", "big-endian": "big-endian ('>f4')",
    "big-endian-i8": "big-endian ('>i8')", "fortran-order": "Fortran order", "order-junk": "neither True nor False",
    "header-beyond-file": "declares a 1000-byte header, the file holds 142 bytes after the header length",
    "header-length-huge": "declares a 4294967295-byte header (at most 65536)",
    "header-length-64k": "(at most 65536)", "header-length-zero": "does not start with '{'",
    "header-not-dict": "does not start with '{'", "header-missing-shape": "has no 'shape'",
    "header-missing-descr": "has no 'descr'", "header-duplicate-key": "repeats 'descr'",
    "header-unknown-key": "unknown key 'x'", "header-unclosed": "no quoted string for a key",
    "header-after-dict": "more after its closing '}'", "header-nul": "more after its closing '}'",
    "header-latin1": "a non-ASCII byte in the descr", "header-unterminated-string": "unterminated string",
    "empty-shape-no-data": "holds 0 bytes of data, its header declares 4",
    "short-data": "holds 23 bytes of data, its header declares 24",
    "trailing-data": "holds 1 bytes after the 24 its header declares",
    "two-arrays": "holds 224 bytes after the 96 its header declares", "missing": "cannot open",
    "directory": "is a directory",
}


def mutations(seed: int, count: int) -> list[bytes]:
    """COUNT seeded random mutations of the valid files: bytes of the prefix and header replaced, inserted or
    deleted (with the characters the header grammar turns on), the length field rewritten, the file cut or grown."""
    rng = random.Random(seed)
    sources = [saved(a, v) for a, v in VALID.values()]
    special = b"(),:'\" {}-0123456789LTFx<>|\n\0\xff\x93"
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(sources))
        prefix = 10 if data[6] == 1 else 12
        end = prefix + int.from_bytes(data[8:prefix], "little")
        dict_end = data.index(b"}") + 1  # most mutations land in the dict, the rest anywhere up to the data
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            limit = dict_end if rng.random() < 0.7 else end + 4
            at = rng.randrange(0, min(len(data), limit)) if data else 0
            byte = rng.choice(special) if rng.random() < 0.7 else rng.randrange(256)
            if op < 0.4 and data:
                data[at] = byte
            elif op < 0.55:
                data.insert(at, byte)
            elif op < 0.7 and data:
                del data[at]
            elif op < 0.8:
                field = rng.choice([0, 1, end, end + 1, 0xFFFF, rng.randrange(1 << 16)])
                data[8:10] = (field & 0xFFFF).to_bytes(2, "little")
            elif op < 0.9:
                del data[rng.randrange(0, len(data) + 1):]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        out.append(bytes(data))
    return out


# --- the harness ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("npy-harness")
    (where / "harness.cpp").write_text(HARNESS)
    built = subprocess.run(["g++", "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE.split(),
                            f"-I{COMMON}", "harness.cpp", "-o", "harness"], cwd=where, capture_output=True, text=True,
                           timeout=300)
    if built.returncode != 0 and "cannot find" in built.stderr and "asan" in built.stderr:
        pytest.skip(f"g++ cannot link the sanitizers here: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    return where / "harness"


def load_all(harness: Path, files: list[Path], out: Path) -> tuple[int, list[str]]:
    """Runs the harness over FILES; its exit status and one line per file (a sanitizer report fails here)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(harness), str(out), *map(str, files)], capture_output=True, timeout=300,
                          env={**os.environ, **SANITIZER_ENV})
    assert done.stderr == b"", done.stderr.decode(errors="replace")[-4000:]
    assert done.returncode in (0, 1), (done.returncode, done.stdout[-2000:])
    lines = done.stdout.decode("ascii").splitlines()  # the messages escape whatever a file held: ASCII only
    assert [line.split(" ", 1)[0] for line in lines] == [str(i) for i in range(len(files))], lines[-5:]
    return done.returncode, [line.split(" ", 1)[1] for line in lines]


def write(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / f"{name}.npy").write_bytes(data)
    return [folder / f"{name}.npy" for name in files]


def test_valid_files_load_with_numpys_shape_and_bytes_and_save_back_the_same(harness: Path, tmp_path: Path) -> None:
    files = {name: saved(array, version) for name, (array, version) in VALID.items()}
    # the header grammar NumPy's reader takes beyond what np.save writes: any key order, double quotes, no
    # trailing comma or padding, tabs
    files["reordered"] = npy("{\"shape\": (2,3), 'descr':'<f4',\t'fortran_order': False}", F4)
    status, lines = load_all(harness, write(tmp_path / "in", files), tmp_path / "out")
    assert status == 0, lines
    for i, (name, data) in enumerate(files.items()):
        want = np.load(tmp_path / "in" / f"{name}.npy", allow_pickle=False)
        assert lines[i] == f"ok {want.dtype.str} {list(want.shape)}", (name, lines[i])
        again = np.load(tmp_path / "out" / f"{i}.npy", allow_pickle=False)
        assert again.dtype == want.dtype and again.shape == want.shape and again.tobytes() == want.tobytes(), name
        assert (tmp_path / "out" / f"{i}.npy").read_bytes() == saved(want), name  # what np.save writes, byte for byte


def test_each_malformed_file_is_one_error_line_naming_it_with_exit_1(harness: Path, tmp_path: Path) -> None:
    cases = malformed()
    paths = write(tmp_path / "in", cases)
    paths += [tmp_path / "missing.npy", tmp_path / "in"]  # no such file; a directory
    for path, name in zip(paths, [*cases, "missing", "directory"]):
        done = subprocess.run([str(harness), str(tmp_path / "out"), str(path)], capture_output=True, timeout=60,
                              env={**os.environ, **SANITIZER_ENV})
        assert done.stderr == b"", (name, done.stderr.decode(errors="replace")[-3000:])
        assert done.returncode == 1, (name, done.returncode, done.stdout)
        line = done.stdout.decode("ascii")
        assert line.count("\n") == 1 and line.startswith("0 error: ") and str(path) in line, (name, line)
        assert name.startswith("truncated-") or EXPECTED[name] in line, (name, line)
    assert not (tmp_path / "out").exists()


def test_seeded_random_mutations_load_as_numpy_does_or_fail_in_one_line(harness: Path, tmp_path: Path) -> None:
    """What the reader accepts NumPy reads the same way (dtype, shape, bytes, nothing after the data); everything
    else is one error line; the sanitizers see no overflow, no out-of-bounds read, no undefined behaviour."""
    files = {f"m{i}": data for i, data in enumerate(mutations(seed=24, count=400))}
    paths = write(tmp_path / "in", files)
    _, lines = load_all(harness, paths, tmp_path / "out")
    accepted = 0
    for i, (path, line) in enumerate(zip(paths, lines)):
        if line.startswith("error: "):
            assert str(path) in line, line
            continue
        accepted += 1
        want = np.load(path, allow_pickle=False)
        assert line == f"ok {want.dtype.str} {list(want.shape)}", (path, line)
        assert np.load(tmp_path / "out" / f"{i}.npy").tobytes() == want.tobytes()
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            read_header(f)
            assert path.stat().st_size == f.tell() + want.nbytes, path  # nothing after the data
    assert 0 < accepted < len(files) - 100, accepted  # the corpus holds both kinds, mostly malformed


def test_save_refuses_sizes_that_do_not_match_and_leaves_no_file(harness: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(harness), "--save-checks", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **SANITIZER_ENV})
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("refused: cannot write ") for line in lines), lines
    assert "holds 24 bytes, 20 were given" in lines[0] and "holds 24 bytes, 28 were given" in lines[1]
    assert "negative dim" in lines[2] and "overflows" in lines[3]
    assert "unsupported dtype '<U4'" in lines[4] and "unsupported dtype '>f4'" in lines[5] and "64 dims" in lines[6]
    assert list(tmp_path.iterdir()) == []


# --- the deployment programs, built with the same sanitizers ---------------------------------------------------

def sanitized_build(bundle: Path, folder: str = "cpp") -> Path:
    """Builds the program with the README's commands plus the sanitizer flags (its own build folder)."""
    where = bundle / "deploy" / folder
    flags = f'-DCMAKE_CXX_FLAGS="{SANITIZE} -g" -DCMAKE_EXE_LINKER_FLAGS="{SANITIZE}"'
    build = [c.replace(" -B build", " -B build-asan") + f" {flags}" if c.startswith("cmake -S") else
             c.replace("--build build", "--build build-asan") for c in programs(bundle)[folder]["build"]]
    shell(build, where, python_env())
    return where


def run_program(where: Path, inputs: list[Path], out: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["./build-asan/deploy", "../../artifact", str(out), *map(str, inputs)], cwd=where,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **python_env(), **SANITIZER_ENV})
    assert done.returncode in (0, 1), (done.returncode, done.stderr[-4000:])
    return done


def assert_refuses_malformed(where: Path, tmp: Path, valid: bytes, shape: str) -> None:
    """A handful of malformed inputs: one error line naming the file, exit 1, no output written."""
    cases = {"huge-dims": (npy(header(shape="(4611686018427387904, 4)")), "overflows"),
             "negative-dim": (npy(header(shape="(-4, 4)"), F4), "negative dim"),
             "header-length-huge": (npy(header(shape=shape), version=(2, 0), length=0xFFFFFFFF), "(at most 65536)"),
             "gigabyte-without-data": (npy(header(shape="(268435456,)")), "holds 0 bytes of data"),
             "truncated": (valid[:-7], "bytes of data, its header declares"),
             "trailing-data": (valid + b"\0\0\0\0", "holds 4 bytes after the"),
             "big-endian": (npy(header(descr="'>f4'", shape=shape)), "big-endian")}
    paths = write(tmp / "malformed", {name: data for name, (data, _) in cases.items()})
    for path, (name, (_, expected)) in zip(paths, cases.items()):
        done = run_program(where, [path], tmp / "out")
        assert done.returncode == 1 and done.stdout == "", (name, done.stdout, done.stderr[-3000:])
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {path}: "), (name, done.stderr)
        assert expected in done.stderr, (name, done.stderr)
    assert not (tmp / "out").exists()


RANGE = "input=1x3x16x16:4x3x16x16:16x3x16x16"


@pytest.fixture(scope="module")
def openvino_range_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OpenVINO bundle compiled for a batch range (one artifact, dynamic dim 0): its C++ program once died on
    its own example input (each get_shape() of a dynamic output reallocated the Shape it returned)."""
    pytest.importorskip("openvino")
    tmp = tmp_path_factory.mktemp("deploy-asan")
    model = tmp / "cnn-dyn.onnx"
    onnx.save_model(make_cnn(batch="N"), str(model))
    out = tmp / "cnn-openvino-range"
    result = CliRunner().invoke(cli, ["compile", str(model), "--target", "host", "--backend", "openvino",
                                      "--shape", RANGE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_openvino_program_of_a_shape_range_bundle_under_sanitizers(openvino_range_bundle: Path,
                                                                   tmp_path: Path) -> None:
    """Built with ASan/UBSan: the example input (OPT) and MIN and MAX batches give `onnxsmith run`'s outputs;
    malformed inputs are one error line each."""
    from onnxsmith.compilers.openvino.deployment import toolchain_missing

    if toolchain_missing():
        pytest.skip(toolchain_missing())
    bundle = openvino_range_bundle
    where = sanitized_build(bundle)
    example = bundle / "deploy" / "example"
    assert np.load(example / "input.npy").shape == (4, 3, 16, 16)
    rng = np.random.default_rng(24)
    for batch in (None, 1, 16):
        folder = example if batch is None else tmp_path / f"batch{batch}"
        if batch is not None:
            folder.mkdir()
            np.save(folder / "input.npy", rng.standard_normal((batch, 3, 16, 16)).astype(np.float32))
        out = where / f"out-{batch}"
        done = run_program(where, [folder / "input.npy"], out)
        assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
        got = {name: np.load(out / f"{name}.npy") for name in programs(bundle)["cpp"]["outputs"]}
        want = run_cli(bundle, folder, tmp_path / f"run-{batch}.npz")
        assert_equal_outputs(got, want)
    assert_refuses_malformed(where, tmp_path, (example / "input.npy").read_bytes(), "(4, 3, 16, 16)")


def run_cli(bundle: Path, inputs: Path, out: Path) -> dict[str, np.ndarray]:
    result = CliRunner().invoke(cli, ["run", str(bundle), "--input", str(inputs), "--output", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow  # the TVM runtime headers make the ASan build about 40 s of CPU on its own
def test_tvm_program_under_sanitizers(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The program the (2**62, 4) file corrupted the heap of: malformed inputs refused, the example matches."""
    pytest.importorskip("tvm")
    from onnxsmith.compilers.tvm.deployment import toolchain_missing
    from onnxsmith.compilers.tvm.targets import machine_arch

    if toolchain_missing(machine_arch()):
        pytest.skip(toolchain_missing(machine_arch()))
    bundle = compile_digits(tmp_path_factory.mktemp("deploy-asan"), "tvm", "host")
    where = sanitized_build(bundle)
    example = bundle / "deploy" / "example" / "image.npy"
    done = run_program(where, [example], where / "out")
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert_equal_outputs(outputs_of(where, programs(bundle)["cpp"]["outputs"]), onnxsmith_run(bundle, tmp_path))
    assert_refuses_malformed(where, tmp_path, example.read_bytes(), "(1, 1, 8, 8)")
