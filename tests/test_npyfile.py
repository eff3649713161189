"""Data files are read header first: forged headers, zip bombs and oversized data are refused before decompressing,
and only the samples needed are read."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxsmith.data.sources import open_dataset
from onnxsmith.errors import DataError, UserInputError
from onnxsmith.model import TensorSpec
from onnxsmith.data.npyfile import DEFAULT_MAX_BYTES, MAX_BYTES_VARIABLE, max_bytes
from tests.cli.test_cli import _assert_one_line_error, cli

CNN = (TensorSpec("input", "float32", (1, 3, 16, 16)),)
BOMB_SAMPLES = 500_000  # 500000x3x16x16 float32: 1.5 GB decompressed, 1.5 MB on disk


def _npy_header(shape: tuple[int, ...], dtype: str = "float32") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_zeros_npz(path: Path, name: str, shape: tuple[int, ...], dtype: str = "float32") -> Path:
    """A valid .npz of zeros written without compressing them: one deflated block of 16 MiB of zeros, ended by a
    full flush (no back-references across it), repeated; so GBs of data cost a second and MBs of disk."""
    header = _npy_header(shape, dtype)
    total, chunk = int(np.prod(shape)) * np.dtype(dtype).itemsize, 16 << 20

    def deflate(data: bytes, mode: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(mode)

    full, rest = divmod(total, chunk)
    first, block, last = deflate(header, zlib.Z_FULL_FLUSH), deflate(bytes(chunk), zlib.Z_FULL_FLUSH), \
        deflate(bytes(rest), zlib.Z_FINISH)
    crc, zeros = zlib.crc32(header), bytes(chunk)
    for _ in range(full):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    csize, usize, fname = len(first) + full * len(block) + len(last), len(header) + total, f"{name}.npy".encode()
    assert usize < 2**32  # no zip64 records written here
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, usize, len(fname), 0) + fname)
        f.write(first)
        for _ in range(full):
            f.write(block)
        f.write(last)
        offset = f.tell()
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, csize, usize,
                              len(fname), 0, 0, 0, 0, 0, 0) + fname
        f.write(central)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), offset, 0))
    return path


def test_the_zeros_npz_writer_makes_files_numpy_reads(tmp_path: Path) -> None:
    path = write_zeros_npz(tmp_path / "z.npz", "input", (3, 5, 1000, 1000))  # 60 MB: 4 blocks and a rest
    with np.load(path) as npz:
        array = npz["input"]
    assert array.shape == (3, 5, 1000, 1000) and not array.any()
    assert path.stat().st_size < 100_000


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_zeros_npz(tmp_path_factory.mktemp("bomb") / "bomb.npz", "input", (BOMB_SAMPLES, 3, 16, 16))


def _forged(path: Path, shape: tuple[int, ...]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("input.npy", _npy_header(shape) + bytes(16))
    return path


def test_a_tiny_npz_claiming_1e12_elements_is_refused_at_once(cnn_path: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    forged = _forged(tmp_path / "forged.npz", (10**12,))
    assert forged.stat().st_size < 300
    for args in (["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(tmp_path / "b"), "--calibration"],
                 ["validate", str(tmp_path / "b"), "--data"], ["run", str(tmp_path / "b"), "--input"]):
        start = time.process_time()  # CPU time: wall time varies with the machine's load
        _assert_one_line_error(*cli([*args, str(forged)], capsys), 2,
                               "declares 1000000000000 float32 (3725.3 GiB) but the file holds 16 B of data")
        assert time.process_time() - start < 2
        if args[0] == "compile":  # the later verbs need the bundle
            assert cli(args[:-1], capsys)[0] == 0


def _run_measured(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run the CLI in a fresh process; its exit code, stderr, CPU seconds in main() (wall time varies with the
    machine's load) and peak RSS (VmHWM, MB)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the forking pytest worker's
    code = ("import io, json, sys, time, contextlib\nfrom onnxsmith.cli import main\n"
            "def peak_mb():\n    for line in open('/proc/self/status'):\n        if line.startswith('VmHWM:'):\n"
            "            return int(line.split()[1]) / 1024\n"
            "err = io.StringIO()\nstart = time.process_time()\n"
            "with contextlib.redirect_stderr(err):\n    try:\n        main(sys.argv[1:])\n"
            "    except SystemExit as exc:\n        status = exc.code or 0\n"
            "print(json.dumps({'code': status, 'err': err.getvalue(), 'cpu_seconds': time.process_time() - start,"
            " 'peak_mb': peak_mb()}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_zip_bomb_over_the_cap_is_refused_without_decompressing(bomb: Path, bundle: Path) -> None:
    result = _run_measured(["run", str(bundle), "--input", str(bomb)], {MAX_BYTES_VARIABLE: "256MiB"})
    assert result["code"] == 2 and len(result["err"].strip().splitlines()) == 1, result
    assert "is too large: loading it takes 1.4 GiB" in result["err"] and "256.0 MiB cap" in result["err"]
    assert result["cpu_seconds"] < 3 and result["peak_mb"] < 300, result  # the array alone is 1.5 GB


def test_a_zip_bomb_of_the_wrong_shape_is_refused_before_decompressing(cnn_path: Path, tmp_path: Path) -> None:
    odd = write_zeros_npz(tmp_path / "odd.npz", "input", (BOMB_SAMPLES, 3, 16, 17))  # 1.6 GB, under the default cap
    result = _run_measured(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(tmp_path / "c"),
                            "--calibration", str(odd)])
    assert result["code"] == 2 and "array 'input' has shape 500000x3x16x17" in result["err"], result
    assert result["cpu_seconds"] < 3 and result["peak_mb"] < 300, result  # decompressing: 1.5 GB, seconds
    assert not (tmp_path / "c").exists()


def test_validate_reads_only_the_samples_it_checks(bomb: Path, bundle: Path) -> None:
    result = _run_measured(["validate", str(bundle), "--data", str(bomb), "--samples", "8", "--json"])
    assert result["code"] == 0, result
    assert json.loads((bundle / "validation.json").read_text())["samples"] == 8
    assert result["peak_mb"] < 400, result  # 8 samples read, not 1.5 GB


def test_only_the_rows_asked_for_are_read_in_either_memory_order(tmp_path: Path) -> None:
    data = np.random.default_rng(0).standard_normal((7, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "c.npz", input=data, unused=np.zeros(3))
    np.savez_compressed(tmp_path / "f.npz", input=np.asfortranarray(data))
    np.save(tmp_path / "one.npy", data)
    for name in ("c.npz", "f.npz", "one.npy"):
        np.testing.assert_array_equal(open_dataset(tmp_path / name, CNN, limit=3).arrays["input"], data[:3])
        np.testing.assert_array_equal(open_dataset(tmp_path / name, CNN).arrays["input"], data)
    exact = (TensorSpec("input", "float32", (7, 3, 16, 16)),)  # exactly the input's shape: one feed, read whole
    whole = open_dataset(tmp_path / "c.npz", exact, limit=3)
    assert whole.one_feed and whole.arrays["input"].shape == (7, 3, 16, 16)


def test_object_arrays_truncated_members_and_bad_caps_are_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 2, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"holds Python objects \(object\), which are not read"):
        open_dataset(tmp_path / "obj.npy", CNN)
    data = np.ones((4, 3, 16, 16), np.float32)
    (tmp_path / "cut.npy").write_bytes(_npy_header(data.shape) + data.tobytes()[:-100])
    with pytest.raises(DataError, match=r"declares 4x3x16x16 float32 \(12.0 KiB\) but the file holds"):
        open_dataset(tmp_path / "cut.npy", CNN)
    assert max_bytes() == DEFAULT_MAX_BYTES == 4 * 2**30
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "1.5GB")
    assert max_bytes() == 1_500_000_000
    (tmp_path / "neg.npy").write_bytes(_npy_header((-1, 3, 16, 16)) + bytes(64))
    with pytest.raises(DataError, match=r"declares a negative dimension \(-1, 3, 16, 16\)"):
        open_dataset(tmp_path / "neg.npy", CNN)
    np.save(tmp_path / "good.npy", data)
    assert len(open_dataset(tmp_path / "good.npy", CNN)) == 4
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "lots")
    with pytest.raises(UserInputError, match=f"invalid {MAX_BYTES_VARIABLE} 'lots'"):
        open_dataset(tmp_path / "good.npy", CNN)


def test_the_cap_covers_npy_folders_and_image_folders_before_decoding(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"{i}.npy", np.zeros((3, 16, 16), np.float32))  # 3 KiB each
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8), "RGB").save(images / f"{i}.png")
    (images / "preprocess.toml").write_text("")
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "10KiB")
    assert len(open_dataset(folder, CNN, limit=3)) == 3  # 9 KiB: only the samples read count
    with pytest.raises(DataError, match=r"too large: loading it takes 12.0 KiB .* more than the 10.0 KiB cap"):
        open_dataset(folder, CNN)
    assert len(open_dataset(images, CNN, limit=2)) == 2
    with pytest.raises(DataError, match=r"4 images of 16x16x3 take 12.0 KiB, more than the 10.0 KiB cap"):
        open_dataset(images, CNN)
