"""The sample convention through the real CLI: inputs without a batch dimension, scalar inputs, empty dimensions.

Each test is a case the ONNX backend node tests showed onnxsmith losing (issue 10, conformance).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.cli.test_cli import cli


def _save(path: Path, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
          outputs: list[onnx.ValueInfoProto]) -> Path:
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxsmith-tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _batchnorm(tmp_path: Path, batch: int | str) -> Path:
    """BatchNormalization whose scale, bias, mean and variance are graph inputs (as in the ONNX node tests)."""
    vec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("scale", "bias", "mean", "var")]
    return _save(tmp_path / "bn.onnx",
                 [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 5]), *vec],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 4, 5])])


def _bn_reference(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    shape = (1, 3, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * scale.reshape(shape) + bias.reshape(shape)


def _bn_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"scale": rng.standard_normal(3).astype(np.float32), "bias": rng.standard_normal(3).astype(np.float32),
            "mean": rng.standard_normal(3).astype(np.float32),
            "var": rng.uniform(0.5, 2.0, 3).astype(np.float32)}


def _compile_run(model: Path, tmp_path: Path, feeds: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str],
                 *shape_args: str) -> tuple[int, str, str, dict[str, np.ndarray]]:
    bundle = tmp_path / "bundle"
    code, _, err = cli(["compile", str(model), "-b", "onnxruntime", "-o", str(bundle), *shape_args], capsys)
    assert code == 0, err
    np.savez(tmp_path / "x.npz", **feeds)
    code, out, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output",
                          str(tmp_path / "y.npz"), "--json"], capsys)
    outputs = dict(np.load(tmp_path / "y.npz")) if code == 0 else {}
    return code, out, err, outputs


def test_inputs_of_exactly_the_model_shapes_are_one_feed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """x is 2x3x4x5, scale/bias/mean/var are 3: the arrays do not share a first axis, and the file is one feed."""
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, 4, 5)).astype(np.float32), **_bn_params(rng)}
    code, out, err, outputs = _compile_run(_batchnorm(tmp_path, 2), tmp_path, feeds, capsys)
    assert code == 0, err
    assert json.loads(out)["samples"] == 1
    np.testing.assert_allclose(outputs["y"], _bn_reference(**feeds), rtol=1e-4, atol=1e-5)


def test_batched_input_is_split_and_the_others_go_whole_to_every_feed(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """x has a dynamic batch (compiled as 1): 6 samples run as 6 feeds, each with the same 3-element parameters."""
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((6, 3, 4, 5)).astype(np.float32), **_bn_params(rng)}
    code, out, err, outputs = _compile_run(_batchnorm(tmp_path, "N"), tmp_path, feeds, capsys)
    assert code == 0, err
    assert json.loads(out)["samples"] == 6
    np.testing.assert_allclose(outputs["y"], _bn_reference(**feeds), rtol=1e-4, atol=1e-5)


def test_a_parameter_of_the_wrong_shape_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((6, 3, 4, 5)).astype(np.float32), **_bn_params(rng)}
    feeds["bias"] = np.zeros(4, np.float32)
    code, _, err, _ = _compile_run(_batchnorm(tmp_path, "N"), tmp_path, feeds, capsys)
    assert code == 2 and "'bias' has shape 4" in err and "no batch dimension" in err
    assert len(err.strip().splitlines()) == 1


def test_scalar_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 0-d input (ONNX node tests: Pow, Clip's min/max...) runs; it was an internal IndexError."""
    model = _save(tmp_path / "add.onnx", [helper.make_node("Add", ["x", "s"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                   helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    code, out, err, outputs = _compile_run(model, tmp_path, {"x": x, "s": np.array(0.5, np.float32)}, capsys)
    assert code == 0, err
    np.testing.assert_array_equal(outputs["y"], x + 0.5)


def test_zero_sized_dimension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--shape data=2x0x4`` compiles and runs: empty tensors are valid ONNX, and the backend runs them."""
    model = _save(tmp_path / "relu.onnx", [helper.make_node("Relu", ["data"], ["y"])],
                  [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", "L", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", 4])])
    data = np.zeros((2, 0, 4), np.float32)
    code, out, err, outputs = _compile_run(model, tmp_path, {"data": data}, capsys, "--shape", "data=2x0x4")
    assert code == 0, err
    assert outputs["y"].shape == (2, 0, 4)
    assert json.loads(out)["outputs"]["y"]["shape"] == [2, 0, 4]


@pytest.mark.parametrize("batch", [2, "N"])
def test_validate_and_profile_feed_parameters_whole(batch: int | str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """validate and profile, with generated inputs and with a data file, give the 3-element inputs whole."""
    rng = np.random.default_rng(3)
    bundle = tmp_path / "bundle"
    code, _, err = cli(["compile", str(_batchnorm(tmp_path, batch)), "-b", "onnxruntime", "-o", str(bundle)], capsys)
    assert code == 0, err
    code, out, err = cli(["validate", str(bundle), "--samples", "8", "--json"], capsys)
    assert code == 0 and json.loads(out)["samples"] == 8 * (batch if isinstance(batch, int) else 1), err
    np.savez(tmp_path / "v.npz", x=rng.standard_normal((4, 3, 4, 5)).astype(np.float32), **_bn_params(rng))
    code, out, err = cli(["validate", str(bundle), "--data", str(tmp_path / "v.npz"), "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["samples"] == 4 and record["cosine_min"] > 0.9999, err
    code, out, err = cli(["profile", str(bundle), "-p", "quick", "--input", str(tmp_path / "v.npz"), "--json"],
                         capsys)
    assert code == 0 and json.loads(out)["latency_ms"]["p50"] > 0, err


def test_labelled_data_of_exactly_the_compiled_batch_is_that_many_samples(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Labels count samples: 2 labelled images for a batch-2 bundle are 2 samples, not one feed."""
    rng = np.random.default_rng(4)
    bundle = tmp_path / "bundle"
    code, _, err = cli(["compile", str(_batchnorm(tmp_path, "N")), "-b", "onnxruntime", "-o", str(bundle),
                        "--shape", "x=2x3x4x5"], capsys)
    assert code == 0, err
    np.savez(tmp_path / "v.npz", x=rng.standard_normal((2, 3, 4, 5)).astype(np.float32), label=np.array([0, 1]),
             **_bn_params(rng))
    code, out, err = cli(["validate", str(bundle), "--data", str(tmp_path / "v.npz"), "--labels", "label", "--json"],
                         capsys)
    assert code == 0 and json.loads(out)["samples"] == 2, err


def test_openvino_scalar_input_wired_to_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OpenVINO: a 0-d input fed as 0-d, and an input whose port keeps only the output's name (Einsum '->',
    ONNX node test test_einsum_scalar) is still found by its position."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    model = _save(tmp_path / "einsum.onnx", [helper.make_node("Einsum", ["x"], ["y"], equation="->")],
                  [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [])],
                  [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [])])
    bundle = tmp_path / "bundle"
    code, _, err = cli(["compile", str(model), "-b", "openvino", "--precision", "fp32", "-o", str(bundle)], capsys)
    assert code == 0, err
    np.savez(tmp_path / "x.npz", x=np.array(2.5))
    code, _, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "y.npz")],
                       capsys)
    assert code == 0, err
    assert np.load(tmp_path / "y.npz")["y"] == 2.5


def test_openvino_compile_of_scalar_integer_inputs_survives(tmp_path: Path) -> None:
    """Range(start, limit, delta) with int32 scalar inputs: the compile-time blob check must not feed values that
    divide by zero inside OpenVINO (SIGFPE killed the process). Run in a subprocess, since a crash would be fatal."""
    pytest.importorskip("openvino", reason="openvino is not installed")
    import subprocess
    import sys

    scalars = [helper.make_tensor_value_info(n, TensorProto.INT32, []) for n in ("start", "limit", "delta")]
    model = _save(tmp_path / "range.onnx", [helper.make_node("Range", ["start", "limit", "delta"], ["y"])],
                  scalars, [helper.make_tensor_value_info("y", TensorProto.INT32, [None])])
    bundle = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", "compile", str(model), "-b", "openvino", "--precision",
                           "fp32", "-o", str(bundle)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.savez(tmp_path / "x.npz", start=np.array(10, np.int32), limit=np.array(6, np.int32),
             delta=np.array(-3, np.int32))
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", "run", str(bundle), "--input", str(tmp_path / "x.npz"),
                           "--output", str(tmp_path / "y.npz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], [10, 7])
