"""Strings, sequences and optionals: the pickle-free .npz convention (onnxsmith.data.values), through load, the data
layer, ONNX Runtime, ``run`` and the comparison engine; backends that cannot take them refuse before compiling."""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsmith.data.sources import open_dataset
from onnxsmith.errors import DataError, ModelError
from onnxsmith.model import TensorSpec, load_model
from onnxsmith.check.numerics import compare
from onnxsmith.data.values import flatten_values, read_values
from tests.cli.test_cli import _assert_one_line_error, cli

FLOAT_SEQ = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))


def _save(tmp_path: Path, name: str, nodes: list, inputs: list, outputs: list, opset: int = 17) -> Path:
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9 if opset >= 19 else 8
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(m, str(path))
    return path


@pytest.fixture
def concat_path(tmp_path: Path) -> Path:
    """Equal on strings (opset 19) and an Identity on the text."""
    return _save(tmp_path, "text", [helper.make_node("Equal", ["a", "b"], ["same"]),
                                    helper.make_node("Identity", ["a"], ["echo"])],
                 [helper.make_tensor_value_info("a", TensorProto.STRING, ["N", 3]),
                  helper.make_tensor_value_info("b", TensorProto.STRING, ["N", 3])],
                 [helper.make_tensor_value_info("same", TensorProto.BOOL, ["N", 3]),
                  helper.make_tensor_value_info("echo", TensorProto.STRING, ["N", 3])], opset=19)


@pytest.fixture
def insert_path(tmp_path: Path) -> Path:
    """SequenceInsert: a sequence and a tensor in, a sequence out."""
    return _save(tmp_path, "insert", [helper.make_node("SequenceInsert", ["s", "t"], ["out"])],
                 [helper.make_value_info("s", FLOAT_SEQ), helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
                 [helper.make_value_info("out", FLOAT_SEQ)])


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling while the test runs fails it."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used to read data")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


# --- strings in the data layer ------------------------------------------------------------------------------------
def test_text_arrays_load_as_strings_and_batch(concat_path: Path, tmp_path: Path, no_pickle: None) -> None:
    model = load_model(concat_path, {"a": (2, 3), "b": (2, 3)})
    assert [s.dtype for s in model.inputs] == ["string", "string"] and model.outputs[1].dtype == "string"
    a = np.array([["x", "yy", ""], ["é", "z", "long text"], ["p", "q", "r"], ["1", "2", "3"]])
    b = np.char.encode(a, "utf-8")  # UTF-8 bytes ('|S') are decoded
    np.savez(tmp_path / "d.npz", a=a, b=b)
    data = open_dataset(tmp_path / "d.npz", model.inputs, known_batch=model.batch_inputs)
    assert len(data) == 4 and data.arrays["b"].dtype.kind == "U"
    assert (data.arrays["b"] == a).all()
    feeds = list(data.batches())
    assert [f["a"].shape for f in feeds] == [(2, 3), (2, 3)]
    assert data.fingerprint() == open_dataset(tmp_path / "d.npz", model.inputs).fingerprint()


@pytest.mark.parametrize("make, message", [
    (lambda: np.array([["a", "b", "c"]], dtype=object), "Python objects"),
    (lambda: np.array([[1, 2, 3]], np.int64), "takes strings"),
    (lambda: np.array([[b"\xff", b"a", b"b"]]), "not UTF-8"),
    (lambda: np.array([[0xDC00, 65, 66]], np.uint32).view("<U1"), "not Unicode"),
])
def test_bad_text_is_refused_in_one_line(concat_path: Path, tmp_path: Path, make, message: str) -> None:
    model = load_model(concat_path, {"a": (1, 3), "b": (1, 3)})
    np.savez(tmp_path / "d.npz", a=make(), b=np.array([["a", "b", "c"]]))
    with pytest.raises(DataError, match=message) as exc:
        open_dataset(tmp_path / "d.npz", model.inputs)
    assert "\n" not in exc.value.one_line()


def test_an_object_array_carrying_a_payload_never_runs(concat_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = b"\x80\x04\x95" + f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (1, 3)})
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.writestr("a.npy", header.getvalue() + payload)
        archive.writestr("b.npy", _npy(np.array([["a", "b", "c"]])))
    with pytest.raises(DataError, match="Python objects"):
        open_dataset(tmp_path / "d.npz", load_model(concat_path, {"a": (1, 3), "b": (1, 3)}).inputs)
    assert not marker.exists()


def _npy(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, arr)
    return out.getvalue()


def test_absurd_string_widths_are_refused_from_the_header(tmp_path: Path) -> None:
    spec = (TensorSpec("a", "string", (1, 3)),)
    for descr, message in (("<U1048577", "1,048,577 characters"), ("|S2000000", "2,000,000 characters"),
                           ("|S4000000000", "not a valid dtype")):  # numpy's own limit: itemsize < 2**31
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": (1, 3)})
        with zipfile.ZipFile(tmp_path / "w.npz", "w") as archive:
            archive.writestr("a.npy", header.getvalue() + bytes(16))
        with pytest.raises(DataError, match=message) as exc:
            open_dataset(tmp_path / "w.npz", spec)
        assert "\n" not in exc.value.one_line()
    # wide but honest text is read; the byte cap counts its full width
    np.savez(tmp_path / "ok.npz", a=np.array([["x" * 1000, "", "y"]]))
    assert open_dataset(tmp_path / "ok.npz", spec).arrays["a"][0, 0] == "x" * 1000


def test_generated_inputs_refuse_strings_and_sequences(concat_path: Path, insert_path: Path) -> None:
    from onnxsmith.data.dataset import synthetic

    with pytest.raises(DataError, match="input 'a' takes string.*validate --data"):
        synthetic(load_model(concat_path, {"a": (1, 3), "b": (1, 3)}), 2)
    with pytest.raises(DataError, match="input 's' takes sequence of float32"):
        synthetic(load_model(insert_path), 2)


# --- sequences and optionals in the data layer ---------------------------------------------------------------------
def test_sequences_and_optionals_round_trip_without_pickle(tmp_path: Path, no_pickle: None) -> None:
    a, b = np.ones((2, 3), np.float32), np.arange(4, dtype=np.float32)
    values = {"seq": [a, b], "empty": [], "nested": [[a], []], "absent": None, "text": np.array(["hi", "é"]),
              "present": [b]}
    arrays = flatten_values(values)
    assert sorted(arrays) == ["absent.none", "empty.length", "nested.0.0", "nested.0.length", "nested.1.length",
                              "nested.length", "present.0", "present.length", "seq.0", "seq.1", "seq.length", "text"]
    assert all(arr.dtype != object for arr in arrays.values())
    np.savez(tmp_path / "v.npz", **arrays)
    specs = [TensorSpec("seq", "float32", (), ("sequence",)), TensorSpec("empty", "float32", (), ("sequence",)),
             TensorSpec("nested", "float32", (), ("sequence", "sequence")),
             TensorSpec("absent", "float32", (), ("optional", "sequence")),
             TensorSpec("present", "float32", (), ("optional", "sequence"))]
    back = read_values(tmp_path / "v.npz", specs)
    assert back["absent"] is None and back["empty"] == [] and back["nested"][1] == []
    assert [x.tolist() for x in back["seq"]] == [a.tolist(), b.tolist()] and back["nested"][0][0].shape == (2, 3)
    assert back["text"].tolist() == ["hi", "é"] and back["present"][0].tolist() == b.tolist()


@pytest.mark.parametrize("arrays, message", [
    ({"s.0": np.ones(2, np.float32), "s.2": np.ones(2, np.float32)}, "'s.2' is not an element"),
    ({"s.0": np.ones(2, np.float32), "s.length": np.array(3)}, "says 3 elements"),
    ({"s.length": np.array(10**9)}, "outside"),
    ({"s.length": np.array([1.5])}, "not one integer"),
    ({"s": np.ones((2, 2), np.float32)}, "is one array"),
    ({"s.0": np.ones(2, np.float64)}, "is float64"),
    ({}, "s.length' = 0 for an empty sequence"),
])
def test_bad_sequences_are_refused_in_one_line(insert_path: Path, tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "d.npz", t=np.zeros(2, np.float32), **arrays)
    with pytest.raises(DataError, match=message) as exc:
        open_dataset(tmp_path / "d.npz", load_model(insert_path).inputs)
    assert "\n" not in exc.value.one_line()


def test_sequence_keys_count_against_the_byte_cap(insert_path: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "d.npz", t=np.zeros(2, np.float32), **{f"s.{i}": np.zeros(1000, np.float32)
                                                                 for i in range(5)})
    monkeypatch.setenv("ONNXSMITH_MAX_DATA_BYTES", "10000")
    with pytest.raises(DataError, match="too large"):
        open_dataset(tmp_path / "d.npz", load_model(insert_path).inputs)


def test_names_that_collide_with_the_convention_are_refused_at_load(tmp_path: Path) -> None:
    path = _save(tmp_path, "clash", [helper.make_node("SequenceInsert", ["s", "s.0"], ["out"])],
                 [helper.make_value_info("s", FLOAT_SEQ), helper.make_tensor_value_info("s.0", TensorProto.FLOAT, [2])],
                 [helper.make_value_info("out", FLOAT_SEQ)])
    with pytest.raises(ModelError, match="starts with 's.'"):
        load_model(path)


def test_maps_are_still_refused_at_load(tmp_path: Path) -> None:
    map_type = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    path = _save(tmp_path, "map", [helper.make_node("Identity", ["m"], ["y"])],
                 [helper.make_value_info("m", map_type)], [helper.make_value_info("y", map_type)])
    with pytest.raises(ModelError, match="input 'm' is a map"):
        load_model(path)


# --- the comparison engine: text exactly, sequences by structure -------------------------------------------------
def test_string_outputs_compare_exactly_without_cosine() -> None:
    want = {"t": np.array([["a", "b"], ["c", "d"]]), "y": np.ones((2, 2), np.float32)}
    same = compare(dict(want), want)
    assert same.mismatched == 0 and same.per_output["t"] == {"exact_match": 1.0, "mismatched_samples": 0}
    got = {"t": np.array([["a", "b"], ["c", "D"]]), "y": np.ones((2, 2), np.float32)}
    diff = compare(got, want)
    assert diff.mismatched == 1 and diff.first_mismatch == 1 and diff.order[0] == 1
    assert diff.cosine_min == pytest.approx(1.0) and "cosine_min" not in diff.per_output["t"]


def test_sequence_outputs_compare_by_structure_then_values() -> None:
    a = np.array([1.0, 2.0], np.float32)
    want = {"s": [[a, a * 2], None]}  # two samples: a sequence, then an absent optional
    assert compare({"s": [[a, a * 2], None]}, want).mismatched == 0
    shorter = compare({"s": [[a], None]}, want)
    assert shorter.mismatched == 1 and shorter.per_output["s"]["structure_mismatches"] == 1
    assert compare({"s": [[a, a * 2], [a]]}, want).mismatched == 1
    drift = compare({"s": [[a, a * -2], None]}, want)
    assert drift.mismatched == 0 and drift.cosine[0] < 0.5 and drift.max_abs_error == pytest.approx(8.0)


# --- through the CLI: ONNX Runtime runs them; other backends refuse before compiling -----------------------------
def test_strings_through_compile_run_and_validate(concat_path: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b"
    code, _, err = cli(["compile", str(concat_path), "-b", "onnxruntime", "--shape", "a=2x3", "--shape", "b=2x3",
                        "-o", str(bundle)], capsys)
    assert code == 0, err
    a = np.array([["x", "y", "z"], ["é", "", "w"], ["1", "2", "3"], ["4", "5", "6"]])
    b = np.array([["x", "n", "z"], ["é", "", "q"], ["1", "2", "3"], ["4", "5", "7"]])
    np.savez(tmp_path / "x.npz", a=a, b=b)
    code, out, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output",
                          str(tmp_path / "y.npz"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["outputs"]["echo"]["dtype"] == "string"
    with np.load(tmp_path / "y.npz", allow_pickle=False) as saved:  # plain '<U' data, no pickle needed
        assert saved["echo"].tolist() == a.tolist() and saved["same"].tolist() == (a == b).tolist()
    code, out, err = cli(["validate", str(bundle), "--data", str(tmp_path / "x.npz"), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["passed"] and result["per_output"]["echo"]["exact_match"] == 1.0
    assert "`echo` 100.00 % of samples equal" in (bundle / "report.md").read_text()
    _assert_one_line_error(*cli(["validate", str(bundle)], capsys), 2, "validate --data")


def test_sequences_through_compile_run_validate_and_profile(insert_path: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b"
    code, _, err = cli(["compile", str(insert_path), "-b", "onnxruntime", "-o", str(bundle)], capsys)
    assert code == 0, err
    one, two = np.ones((2, 3), np.float32), np.arange(4, dtype=np.float32)
    np.savez(tmp_path / "x.npz", t=np.array([7, 8], np.float32), **{"s.0": one, "s.1": two})
    code, out, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output",
                          str(tmp_path / "y.npz")], capsys)
    assert code == 0, err
    assert "out: sequence of 3" in out
    back = read_values(tmp_path / "y.npz", [TensorSpec("out", "float32", (), ("sequence",))])
    assert [v.tolist() for v in back["out"]] == [one.tolist(), two.tolist(), [7.0, 8.0]]
    code, out, err = cli(["validate", str(bundle), "--data", str(tmp_path / "x.npz"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["passed"] and json.loads(out)["per_output"]["out"]["structure_mismatches"] == 0
    code, out, err = cli(["profile", str(bundle), "--input", str(tmp_path / "x.npz"), "-p", "quick", "--json",
                          "--no-baseline"], capsys)
    assert code == 0, err
    assert json.loads(out)["latency_ms"]["p50"] > 0


@pytest.mark.parametrize("backend", ["openvino", "tvm"])
def test_other_backends_refuse_before_compiling(backend: str, concat_path: Path, insert_path: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    _assert_one_line_error(*cli(["compile", str(concat_path), "-b", backend, "--shape", "a=1x3", "--shape", "b=1x3",
                                 "-o", str(tmp_path / "o1")], capsys), 5, "input 'a' (string)")
    _assert_one_line_error(*cli(["compile", str(insert_path), "-b", backend, "-o", str(tmp_path / "o2")], capsys),
                           5, "input 's' (sequence of float32)")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_the_target_default_skips_backends_that_cannot_take_strings(concat_path: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["compile", str(concat_path), "--target", "host", "--shape", "a=1x3", "--shape", "b=1x3",
                        "-o", str(tmp_path / "b"), "--json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["backend"] == "onnxruntime"
