"""Data files: .npz/.npy against the model's inputs, generated inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxsmith.data.dataset import synthetic
from onnxsmith.data.sources import open_dataset
from onnxsmith.errors import DataError
from onnxsmith.model import TensorSpec, load_model


def test_npz_with_labels(cnn_path: Path, tmp_path: Path) -> None:
    model = load_model(cnn_path)
    np.savez(tmp_path / "d.npz", input=np.zeros((5, 3, 16, 16), np.float32), label=np.arange(5), extra=np.ones(2))
    data = open_dataset(tmp_path / "d.npz", model.inputs, labels="label")
    assert len(data) == 5 and list(data.arrays) == ["input"] and data.labels.tolist() == [0, 1, 2, 3, 4]
    assert [b["input"].shape for b in data.batches(1)][:2] == [(1, 3, 16, 16)] * 2


@pytest.mark.parametrize("array, message", [
    (np.zeros((5, 3, 8, 8), np.float32), "has shape 5x3x8x8"),
    (np.zeros((5, 3, 16, 16), np.float64), "is float64"),
    (np.zeros((3, 16, 16), np.float32), "samples along the first axis"),
])
def test_mismatches_are_clear(cnn_path: Path, tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "d.npz", input=array)
    with pytest.raises(DataError, match=message):
        open_dataset(tmp_path / "d.npz", load_model(cnn_path).inputs)


def test_missing_input_array_and_label_key(cnn_path: Path, tmp_path: Path) -> None:
    inputs = load_model(cnn_path).inputs
    np.savez(tmp_path / "d.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(DataError, match=r"no array for input\(s\) input \(arrays present: image\)"):
        open_dataset(tmp_path / "d.npz", inputs)
    np.savez(tmp_path / "e.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(DataError, match="no array 'label'"):
        open_dataset(tmp_path / "e.npz", inputs, labels="label")


def test_not_an_npz(cnn_path: Path, tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_text("nope")
    with pytest.raises(DataError, match="not a valid"):
        open_dataset(tmp_path / "d.npz", load_model(cnn_path).inputs)
    with pytest.raises(DataError, match="no such file or folder"):
        open_dataset(tmp_path / "none.npz", load_model(cnn_path).inputs)


def test_synthetic_is_seeded_and_respects_embedding_bounds(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.ones((7, 4), np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 50])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 50, 4])], [table])
    path = tmp_path / "emb.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    a, b = synthetic(model, 4, seed=1), synthetic(model, 4, seed=1)
    assert np.array_equal(a.arrays["ids"], b.arrays["ids"]) and a.arrays["ids"].max() < 7
    assert a.arrays["ids"].shape == (4, 50) and a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e8m0fnu"])
def test_types_numpy_lacks_read_back_as_the_input_type(dtype: str, tmp_path: Path) -> None:
    """np.savez writes ml_dtypes bfloat16/float8 arrays as void items; the input's type reads them back."""
    import ml_dtypes

    values = np.array([[1.0, 2.0, 0.5]], dtype=getattr(ml_dtypes, dtype))
    np.savez(tmp_path / "x.npz", x=values)
    assert np.load(tmp_path / "x.npz")["x"].dtype.kind == "V"
    data = open_dataset(tmp_path / "x.npz", (TensorSpec("x", dtype, (1, 3)),))
    assert data.arrays["x"].dtype == getattr(ml_dtypes, dtype)
    np.testing.assert_array_equal(data.arrays["x"].astype(np.float32), [[1.0, 2.0, 0.5]])
