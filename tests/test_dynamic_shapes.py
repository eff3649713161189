"""Dynamic shapes: ``--shape NAME=MIN:OPT:MAX`` and ``--batch``, the manifest's ``shape_ranges``, ``run`` inside
the range only, ``profile``/``validate`` at min, opt and max, and backends that cannot saying so before compiling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsmith.errors import UserInputError
from onnxsmith.model import load_model
from onnxsmith.model.shapes import ShapeRange, parse_batch, parse_shape, parse_shape_overrides
from tests.cli.test_cli import cli
from tests.models import make_cnn

RANGE = "input=1x3x16x16:4x3x16x16:16x3x16x16"


@pytest.fixture
def dyn_cnn(tmp_path: Path) -> Path:
    """The tiny CNN with a dynamic batch dim 'N'."""
    path = tmp_path / "cnn-dyn.onnx"
    onnx.save_model(make_cnn(batch="N"), str(path))
    return path


def test_shape_grammar() -> None:
    assert parse_shape("x=1x3x224x224") == ("x", (1, 3, 224, 224))
    assert parse_shape("x=1x3:4x3:8x3") == ("x", ShapeRange((1, 3), (4, 3), (8, 3)))
    assert parse_shape("x=2x3:2x3:2x3") == ("x", (2, 3))  # three equal shapes are one fixed shape
    assert parse_shape("a=b=1x2") == ("a=b", (1, 2))  # the name may hold '=' (the last one splits)
    for bad, why in (("x=1x3:4x3", "three shapes"), ("x=1x3:float32", "NAME=DIMS or NAME=MIN:OPT:MAX"),
                     ("x=4x3:1x3:8x3", "grow from MIN"), ("x=1x3:4x3x1:8x3", "different ranks"),
                     ("x=1x3:4x3:8x3:float16", "NAME=DIMS or NAME=MIN:OPT:MAX")):
        with pytest.raises(UserInputError, match=why):
            parse_shape(bad)
    # a caller that takes a trailing ':dtype' strips it first; what is left parses as usual
    value = "x=1x3:4x3:8x3:float16"
    assert parse_shape(value.rsplit(":", 1)[0])[1] == ShapeRange((1, 3), (4, 3), (8, 3))
    assert parse_batch("8") == (8, 8, 8) and parse_batch("1..32") == (1, 32, 32) and parse_batch("1..32@8") == (1, 8, 32)
    for bad in ("0..4", "4..2", "1..8@9", "x"):
        with pytest.raises(UserInputError, match="--batch"):
            parse_batch(bad)


def test_load_keeps_ranged_dims_symbolic(dyn_cnn: Path) -> None:
    model = load_model(dyn_cnn, parse_shape_overrides([RANGE]))
    assert model.inputs[0].shape == ("N", 3, 16, 16) and model.outputs[0].shape == ("N", 10)
    assert model.shape_ranges == {"input": ShapeRange((1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16))}
    assert model.inputs_at("max")[0].shape == (16, 3, 16, 16)
    saved = onnx.load(str(model.path))  # what backends read keeps the symbol
    assert saved.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    with pytest.raises(UserInputError, match="dim 1 is fixed to 3 in the model, the option gives 1..3"):
        load_model(dyn_cnn, parse_shape_overrides(["input=1x1x16x16:2x2x16x16:4x3x16x16"]))


def test_batch_option_and_shared_symbols(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 4])])
    path = tmp_path / "add.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    by_batch = load_model(path, batch=parse_batch("1..32@8"))
    assert by_batch.shape_ranges == {n: ShapeRange((1, 4), (8, 4), (32, 4)) for n in ("x", "y")}
    # 'y' shares the symbol B with 'x', so it takes x's range
    shared = load_model(path, parse_shape_overrides(["x=1x4:2x4:6x4"]))
    assert shared.shape_ranges["y"] == ShapeRange((1, 4), (2, 4), (6, 4))
    assert load_model(path, batch=parse_batch("3")).inputs[0].shape == (3, 4)
    with pytest.raises(UserInputError, match="no input left for it has a dynamic first"):
        load_model(path, {"x": (1, 4), "y": (1, 4)}, batch=parse_batch("1..4"))
    static = tmp_path / "static.onnx"
    onnx.save_model(make_cnn(), str(static))
    with pytest.raises(UserInputError, match="no input of the model has a dynamic first"):
        load_model(static, batch=parse_batch("1..4"))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_artifact_runs_the_range(backend: str, dyn_cnn: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b"
    code, out, _ = cli(["compile", str(dyn_cnn), "-b", backend, "--shape", RANGE, "-o", str(bundle), "--json"], capsys)
    assert code == 0, out
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["shape_ranges"] == {"input": {"min": [1, 3, 16, 16], "opt": [4, 3, 16, 16], "max": [16, 3, 16, 16]}}
    assert manifest["model"]["signature"]["inputs"][0]["shape"] == ["N", 3, 16, 16]
    rng = np.random.default_rng(0)
    for batch in (1, 7, 16):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        np.savez(tmp_path / "x.npz", input=x)
        code, out, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output",
                              str(tmp_path / "y.npz"), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["samples"] == batch
        with np.load(tmp_path / "y.npz") as y:
            from tests.models import ort_reference

            np.testing.assert_allclose(y["probs"], ort_reference(load_model(dyn_cnn, {"input": x.shape}),
                                                                 {"input": x})["probs"],
                                       rtol=1e-4, atol=1e-5)
    np.savez(tmp_path / "x17.npz", input=np.zeros((17, 3, 16, 16), np.float32))
    code, out, err = cli(["run", str(bundle), "--input", str(tmp_path / "x17.npz")], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "outside the compiled range [1..16]x3x16x16: dim 0 is 17, the bundle takes 1 to 16" in err

    code, out, _ = cli(["profile", str(bundle), "-p", "quick", "--iterations", "3", "--seconds", "0", "--json"],
                       capsys)
    record = json.loads(out)
    assert code == 0 and [p["batch"] for p in record["shapes"]] == [1, 4, 16] and record["batch"] == 4
    assert [p["point"] for p in record["shapes"]] == ["min", "opt", "max"]
    assert all(p["latency_ms"]["p50"] > 0 and p["baseline_latency_ms"]["p50"] > 0 for p in record["shapes"])
    assert record["shapes"][2]["flops"] == 4 * record["shapes"][1]["flops"]  # FLOPs at each point's batch
    comparison = record["comparison"]  # the interleaved artifact-vs-baseline runs are at OPT, the headline point
    assert comparison["point"] == "opt" and len(comparison["artifact_runs_p50_ms"]) >= 2
    assert len(comparison["artifact_runs_p50_ms"]) == len(comparison["baseline_runs_p50_ms"])
    assert record["environment"]["usable_cores"] >= 1

    code, out, _ = cli(["validate", str(bundle), "--samples", "16", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["passed"]
    assert [(p["point"], p["shape"]["input"][0], p["samples"]) for p in result["shapes"]] == \
        [("min", 1, 16), ("opt", 4, 16), ("max", 16, 16)]
    assert result["samples"] == 48 and result["worst"][0]["file"].startswith("examples/")


def test_validate_with_data_splits_it_per_point(dyn_cnn: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b"
    assert cli(["compile", str(dyn_cnn), "-b", "onnxruntime", "--batch", "2..8@4", "-o", str(bundle)], capsys)[0] == 0
    np.savez(tmp_path / "val.npz", input=np.random.default_rng(1).standard_normal((6, 3, 16, 16)).astype(np.float32),
             label=np.arange(6) % 10)
    code, out, _ = cli(["validate", str(bundle), "--data", str(tmp_path / "val.npz"), "--labels", "label", "--json"],
                       capsys)
    result = json.loads(out)
    points = {p["point"]: p for p in result["shapes"]}
    assert code == 0 and points["min"]["samples"] == 6 and points["opt"]["samples"] == 4  # 6 = 3 feeds of 2, 1 of 4
    assert "skipped" in points["max"]  # 6 samples cannot fill a batch of 8


def test_a_backend_that_cannot_says_so_before_compiling(dyn_cnn: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("coremltools")
    out_dir = tmp_path / "b"
    code, _, err = cli(["compile", str(dyn_cnn), "-t", "apple/m3", "-b", "coreml", "--shape", RANGE, "-o",
                        str(out_dir)], capsys)
    assert code == 5 and err.count("\n") == 1
    assert "cannot compile the shape range input=[1..16]x3x16x16" in err and "fixed input shapes only" in err
    assert not out_dir.exists()


def test_tvm_compiles_the_range_as_relax_symbolic_shapes(mlp_path: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tvm")
    bundle = tmp_path / "b"
    code, out, err = cli(["compile", str(mlp_path), "-b", "tvm", "--batch", "1..8@4", "-o", str(bundle)], capsys)
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["artifact"]["metadata"]["dynamic_shapes"]["upper_bounds"] == {"N": 8}
    assert [f for f in manifest["artifact"]["files"] if f.endswith(".so")] == ["model.so"]  # one library
    for batch in (1, 5, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 32)).astype(np.float32)
        np.savez(tmp_path / "x.npz", x=x)
        assert cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "y.npz")],
                   capsys)[0] == 0
        from onnxsmith.check.reference import reference_runner

        with np.load(tmp_path / "y.npz") as y, reference_runner(mlp_path) as ref:  # the dynamic original
            want = ref.run({"x": x})["logits"]
            np.testing.assert_allclose(y["logits"], want, rtol=1e-4, atol=1e-5)
    np.savez(tmp_path / "x9.npz", x=np.zeros((9, 32), np.float32))
    code, _, err = cli(["run", str(bundle), "--input", str(tmp_path / "x9.npz")], capsys)
    assert code == 2 and "dim 0 is 9, the bundle takes 1 to 8" in err


def test_inputs_sharing_a_symbol_must_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "add.onnx"))
    bundle = tmp_path / "b"
    assert cli(["compile", str(tmp_path / "add.onnx"), "-b", "onnxruntime", "--batch", "1..8", "-o", str(bundle)],
               capsys)[0] == 0
    np.savez(tmp_path / "ok.npz", x=np.ones((3, 4), np.float32), y=np.ones((3, 4), np.float32))
    np.savez(tmp_path / "bad.npz", x=np.ones((3, 4), np.float32), y=np.ones((5, 4), np.float32))
    assert cli(["run", str(bundle), "--input", str(tmp_path / "ok.npz")], capsys)[0] == 0
    code, _, err = cli(["run", str(bundle), "--input", str(tmp_path / "bad.npz")], capsys)
    assert code == 2 and "inputs 'x' and 'y' disagree on dim 'B': 3 vs 5" in err
