"""Loading ONNX safely: checker, shapes, external data, fingerprints."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from onnxsmith.errors import ModelError, UserInputError
from onnxsmith.model import load_model
from onnxsmith.model.shapes import parse_shape_overrides
from tests.models import make_cnn, make_mlp


def _external_model(tmp_path: Path, location: str = "weights.bin") -> Path:
    model = make_mlp()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        proto = onnx.load_model(str(path), load_external_data=False)
        for init in proto.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(proto, str(path))
    return path


def test_loads_signature_opset_and_fingerprint(cnn_path: Path) -> None:
    model = load_model(cnn_path)
    assert model.opset == 17
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("input", "float32", (1, 3, 16, 16))]
    assert model.outputs[0].shape == (1, 10)
    assert len(model.fingerprint) == 64
    assert load_model(cnn_path).fingerprint == model.fingerprint


def test_not_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text('{"not": "onnx"}')
    with pytest.raises(ModelError, match="not an ONNX file"):
        load_model(path)


def test_truncated_file_is_a_clear_error(cnn_path: Path, tmp_path: Path) -> None:
    data = cnn_path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(cut)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="file not found"):
        load_model(tmp_path / "nope.onnx")


def test_external_data_loads_and_is_fingerprinted(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    model = load_model(path, {"x": (2, 32)})
    assert model.inputs[0].shape == (2, 32)
    before = model.fingerprint
    data = tmp_path / "weights.bin"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert load_model(path, {"x": (2, 32)}).fingerprint != before


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd"])
def test_external_data_outside_directory_is_rejected(tmp_path: Path, location: str) -> None:
    path = _external_model(tmp_path, location)
    with pytest.raises(ModelError, match="unsafe external data"):
        load_model(path)


def test_external_data_symlink_out_of_directory_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    inside = tmp_path / "model"
    outside.mkdir()
    inside.mkdir()
    path = _external_model(inside)
    (inside / "weights.bin").rename(outside / "weights.bin")
    os.symlink(outside / "weights.bin", inside / "weights.bin")
    with pytest.raises(ModelError, match="outside the model's directory"):
        load_model(path)


def test_short_external_data_is_rejected(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelError, match="truncated external data"):
        load_model(path)


def test_missing_external_data_is_rejected(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="missing external data"):
        load_model(path)


def test_dynamic_batch_defaults_to_one_with_a_note(mlp_path: Path) -> None:
    model = load_model(mlp_path)
    assert model.inputs[0].shape == (1, 32)
    assert model.outputs[0].shape == (1, 10)
    assert any("dynamic batch" in n for n in model.notes)


def test_shape_override_fixes_dims(mlp_path: Path) -> None:
    model = load_model(mlp_path, parse_shape_overrides(["x=8x32"]))
    assert model.inputs[0].shape == (8, 32)
    assert model.outputs[0].shape == (8, 10)
    assert onnx.load_model(str(model.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 8


def test_dynamic_non_batch_dim_needs_a_shape(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq"])])
    path = tmp_path / "dyn.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserInputError, match=r"dynamic dims 1 \('seq'\).*--shape x=1xN"):
        load_model(path)
    assert load_model(path, {"x": (1, 7)}).inputs[0].shape == (1, 7)


@pytest.mark.parametrize("bad", ["x", "x=", "x=1xA", "=1x2", "x=-1x3"])
def test_bad_shape_option(bad: str) -> None:
    with pytest.raises(UserInputError, match="--shape"):
        parse_shape_overrides([bad])


def test_shape_option_for_unknown_input(cnn_path: Path) -> None:
    with pytest.raises(UserInputError, match="no input of that name"):
        load_model(cnn_path, {"nope": (1, 2)})


def test_checker_failure_is_reported(tmp_path: Path) -> None:
    model = make_cnn()
    model.graph.node[0].input[1] = "missing_weight"
    path = tmp_path / "bad.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match="ONNX checker"):
        load_model(path)
