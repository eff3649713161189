"""bfloat16/float8 data is checked by its dtype, not its item size: ml_dtypes arrays of another type, and raw void
items of the same size, are refused with one line; arrays np.save wrote for the input's type read back as it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxsmith.data.dataset import check_against_model
from onnxsmith.data.sources import open_dataset
from onnxsmith.errors import DataError
from onnxsmith.model import TensorSpec
from onnxsmith.data.npyfile import ArrayFiles
from onnxsmith.data.values import read_values

ml_dtypes = pytest.importorskip("ml_dtypes")


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_raw_void_items_do_not_pass_for_bfloat16(tmp_path: Path) -> None:
    spec = (TensorSpec("x", "bfloat16", (1, 3)),)
    raw = np.frombuffer(b"\x80?\x00@\x00?", dtype="V2").reshape(1, 3)  # 2-byte items that are not bfloat16
    np.savez(tmp_path / "raw.npz", x=raw)
    with pytest.raises(DataError) as exc:  # was: read as bfloat16 (same item size)
        open_dataset(tmp_path / "raw.npz", spec)
    assert "array 'x' holds 2-byte raw void items" in _one_line(exc) and "takes bfloat16" in str(exc.value)
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "x.npy", raw)
    with pytest.raises(DataError, match="raw void items"):
        open_dataset(tmp_path / "folder", spec)
    with pytest.raises(DataError, match="raw void items"):  # in memory (module:function data): any void is raw
        check_against_model({"x": raw}, spec, "data")
    saved = np.array([[1.0, 2.0, 0.5]], dtype=ml_dtypes.bfloat16)
    np.savez(tmp_path / "bf16.npz", x=saved)
    with ArrayFiles.npz(tmp_path / "bf16.npz", "data") as files:
        assert files.header("x").typed_void and files.read("x", as_type="bfloat16").dtype == ml_dtypes.bfloat16
    with ArrayFiles.npz(tmp_path / "raw.npz", "data") as files:
        assert not files.header("x").typed_void and files.read("x", as_type="bfloat16").dtype.kind == "V"
    assert open_dataset(tmp_path / "bf16.npz", spec).arrays["x"].dtype == ml_dtypes.bfloat16
    assert read_values(tmp_path / "bf16.npz", spec)["x"].dtype == ml_dtypes.bfloat16


def test_another_ml_dtypes_type_of_the_same_size_is_refused(tmp_path: Path) -> None:
    spec = (TensorSpec("x", "float8_e4m3fn", (1, 3)),)
    other = np.array([[1, 2, -3]], dtype=ml_dtypes.int4)  # numpy kind 'V', 1-byte items, like float8_e4m3fn
    with pytest.raises(DataError) as exc:  # was: accepted (same item size), its int4 bits read as float8
        check_against_model({"x": other}, spec, "data")
    assert "array 'x' is int4, the input takes float8_e4m3fn" in _one_line(exc)
    assert "astype(ml_dtypes.float8_e4m3fn)" in str(exc.value)
    np.savez(tmp_path / "f8.npz", x=np.array([[1.0, 2.0]], dtype=ml_dtypes.float8_e4m3fn))  # 1-byte items
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path / "f8.npz", (TensorSpec("x", "bfloat16", (1, 2)),))
    assert "1-byte void items np.save wrote for an ml_dtypes array" in _one_line(exc)
