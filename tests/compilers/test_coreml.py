"""Core ML backend: conversion runs everywhere coremltools + onnx2coreml install; prediction only on macOS."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxsmith.errors import TargetError, UnsupportedError
from onnxsmith.model import load_model
from onnxsmith.plugin import Artifact, CompileRequest
from onnxsmith.targets import Target, parse_target
from tests.models import make_mlp

pytest.importorskip("coremltools", reason="coremltools is not installed")
pytest.importorskip("onnx2coreml", reason="onnx2coreml is not installed")

from onnxsmith.compilers.coreml import CoreMLCompiler, can_evaluate, evaluate_program  # noqa: E402
from onnxsmith.compilers.coreml.conversion import program_summary  # noqa: E402
from onnxsmith.compilers.coreml.options import parse_options  # noqa: E402

ON_MAC = platform.system() == "Darwin"


def apple_target(**device: object) -> Target:
    return parse_target({
        "id": "apple/test-m2", "name": "Apple M2", "vendor": "apple", "kind": "soc", "backends": ["coreml"],
        "precisions": ["fp32", "fp16", "int8"],
        "peak": {"fp32_tflops": 3.6, "fp16_tflops": 15.8, "memory_bandwidth_gbps": 100.0, "source": "test"},
        "requires": {"arch": "aarch64", "os": "darwin"}, "device": {"coreml": dict(device)},
    }, "apple-test.toml")


def compile_to(path: Path, precision: str, workdir: Path, target: Target | None = None,
               **options: str) -> tuple[Artifact, Path]:
    from onnxsmith.profiles import load_profile

    workdir.mkdir(parents=True, exist_ok=True)
    request = CompileRequest(load_model(path), target or apple_target(), precision, load_profile("quick"),
                             options=options)
    from onnxsmith.build.compile import checked_request

    return CoreMLCompiler().compile(checked_request(CoreMLCompiler(), request), workdir), workdir


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("coreml") / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture(scope="module")
def mlp_artifacts(mlp_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Artifact, Path]]:
    root = tmp_path_factory.mktemp("coreml-builds")
    return {p: compile_to(mlp_file, p, root / p, weight_threshold="512") for p in ("fp32", "fp16", "int8")}


def _weights_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in (package / "Data" / "com.apple.CoreML" / "weights").rglob("*") if p.is_file())


def test_mlp_converts_to_a_valid_mlpackage(mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    import coremltools as ct

    artifact, workdir = mlp_artifacts["fp32"]
    package = workdir / "model.mlpackage"
    assert artifact.files[0] == "model.mlpackage/Manifest.json" and package.is_dir()
    assert "model.mlpackage/Data/com.apple.CoreML/model.mlmodel" in artifact.files  # every file, each checksummed
    manifest = json.loads((package / "Manifest.json").read_text())
    entries = {e["path"] for e in manifest["itemInfoEntries"].values()}
    assert "com.apple.CoreML/model.mlmodel" in entries
    assert (package / "Data" / "com.apple.CoreML" / "model.mlmodel").is_file()
    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [f.name for f in spec.description.input] == ["x"] and [f.name for f in spec.description.output] == ["logits"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 32]
    assert artifact.metadata["io"] == {"inputs": {"x": "x"}, "outputs": {"logits": "logits"}}
    assert artifact.backend_version.startswith(ct.__version__)


def test_cnn_converts_and_its_program_evaluates(cnn_path: Path, tmp_path: Path) -> None:
    artifact, workdir = compile_to(cnn_path, "fp16", tmp_path / "cnn")
    summary = artifact.metadata["program"]
    assert summary["ops"]["conv"] == 2 and summary["ops"]["softmax"] == 1
    assert (workdir / "model.mlpackage" / "Manifest.json").is_file()
    assert can_evaluate(artifact, workdir)  # conv and max_pool by onnxsmith's numpy references
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = evaluate_program(artifact, workdir, {"input": x})["probs"]
    assert _cosine(got, ort_reference(cnn_path, {"input": x})["probs"]) >= 0.999


def ort_reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _one_op_model(path: Path, nodes: list, inits: list, shape: tuple[int, ...] = (2, 4, 11, 9)) -> Path:
    graph = helper.make_graph(nodes, "one_op", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [onnx.helper.make_empty_tensor_value_info("y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.save(model, str(path))
    return path


_RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array((_RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


_REFERENCE_CASES = {  # MIL ops coremltools has no numpy evaluation for: each variant onnx2coreml emits
    "conv_grouped_strided_dilated": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 1],
                                                       dilations=[1, 2], pads=[1, 0, 2, 1])], [_w("w", 6, 2, 3, 3), _w("b", 6)]),
    "conv_same_upper": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
                        [_w("w", 5, 4, 4, 3)]),
    "conv_same_lower": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2])],
                        [_w("w", 5, 4, 4, 3)]),
    "conv_depthwise": ([helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])], [_w("w", 8, 1, 3, 3)]),
    "max_pool_ceil": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], []),
    "max_pool_padded": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                                          pads=[1, 1, 1, 1])], []),
    "avg_pool_count_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1], count_include_pad=1)], []),
    "avg_pool_exclude_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                               pads=[1, 1, 1, 1], count_include_pad=0)], []),
    "avg_pool_ceil": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                        ceil_mode=1)], []),
    "batch_norm": ([helper.make_node("BatchNormalization", ["x", "s", "bb", "mu", "var"], ["y"], epsilon=1e-3)],
                   [_w("s", 4), _w("bb", 4), _w("mu", 4),
                    onnx.numpy_helper.from_array(np.linspace(0.5, 2.0, 4, dtype=np.float32), "var")]),
}


@pytest.mark.parametrize("case", sorted(_REFERENCE_CASES))
def test_numpy_references_for_conv_pooling_batch_norm_match_onnxruntime(case: str, tmp_path: Path) -> None:
    nodes, inits = _REFERENCE_CASES[case]
    path = _one_op_model(tmp_path / f"{case}.onnx", nodes, inits)
    x = np.random.default_rng(1).standard_normal((2, 4, 11, 9)).astype(np.float32)
    want = ort_reference(path, {"x": x})["y"]
    for precision, tolerance in (("fp32", 1e-5), ("fp16", 1e-2)):
        artifact, workdir = compile_to(path, precision, tmp_path / precision)
        computed = set(artifact.metadata["program"]["ops"]) - {"const", "cast"}
        assert computed & {"conv", "max_pool", "avg_pool", "batch_norm"}, computed
        got = evaluate_program(artifact, workdir, {"x": x})["y"]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= tolerance * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_and_sum_heads_evaluate(keepdims: int, tmp_path: Path) -> None:
    """reduce_* ops used to crash the check (a numpy bool passed as keep_dims)."""
    axes = lambda name, value: onnx.numpy_helper.from_array(np.array(value, np.int64), name)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "a2"], ["mean"], keepdims=keepdims),
         helper.make_node("ReduceSum", ["x", "a1"], ["sum"], keepdims=keepdims)], "reduce_heads",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8, 6])],
        [onnx.helper.make_empty_tensor_value_info("mean"), onnx.helper.make_empty_tensor_value_info("sum")],
        [axes("a2", [2]), axes("a1", [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    path = tmp_path / "reduce.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(2).standard_normal((2, 8, 6)).astype(np.float32)
    want = ort_reference(path, {"x": x})
    artifact, workdir = compile_to(path, "fp32", tmp_path / "b")
    assert {"reduce_mean", "reduce_sum"} <= set(artifact.metadata["program"]["ops"])
    got = evaluate_program(artifact, workdir, {"x": x})
    for name in ("mean", "sum"):
        assert got[name].shape == want[name].shape and np.allclose(got[name], want[name], atol=1e-5)


def test_a_program_with_an_op_nobody_evaluates_is_refused_with_its_name(tmp_path: Path) -> None:
    path = _one_op_model(tmp_path / "inorm.onnx", [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])],
                         [_w("s", 4), _w("b", 4)])
    artifact, workdir = compile_to(path, "fp32", tmp_path / "b")
    verdict = can_evaluate(artifact, workdir)
    assert not verdict and "instance_norm" in verdict.reason
    with pytest.raises(UnsupportedError, match="instance_norm"):
        CoreMLCompiler().load_emulated(artifact, workdir, apple_target())


def test_fp16_and_fp32_programs_differ_in_precision(mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    fp32, fp16 = mlp_artifacts["fp32"][0], mlp_artifacts["fp16"][0]
    assert fp32.precision_used == "fp32" and fp16.precision_used == "fp16"
    assert set(fp32.metadata["program"]["compute"]) == {"float32"}
    assert set(fp16.metadata["program"]["compute"]) == {"float16"}
    assert fp16.metadata["program"]["ops"].get("cast") == 2  # fp32 input in, fp32 output out
    # read back from the saved package, not from the in-memory model
    import coremltools as ct

    saved = ct.models.MLModel(str(mlp_artifacts["fp16"][1] / "model.mlpackage"), skip_model_load=True)
    assert program_summary(saved.get_spec())["compute"] == fp16.metadata["program"]["compute"]


def test_int8_quantizes_weights_only_and_shrinks_them(mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    int8, workdir = mlp_artifacts["int8"]
    assert int8.precision_used == "fp16+int8-weights"
    assert int8.metadata["quantization"]["weights"]["quantized_weights"] == 2
    assert int8.metadata["program"]["weight_dtypes"] == ["int8"]
    assert any("weight-only" in note and "activations stay fp16" in note for note in int8.notes)
    sizes = {p: _weights_bytes(mlp_artifacts[p][1] / "model.mlpackage") for p in ("fp32", "fp16", "int8")}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_int8_with_nothing_above_the_threshold_is_refused(mlp_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="weight_threshold"):
        compile_to(mlp_file, "int8", tmp_path / "q")  # the default 2048 keeps both weights (2048, 640 elements)


def test_unsupported_op_is_reported_with_its_node(tmp_path: Path) -> None:
    model = make_mlp()
    model.graph.node[2].CopyFrom(helper.make_node("Softsign", ["hb"], ["r"], name="act_softsign"))
    path = tmp_path / "softsign.onnx"
    onnx.save(model, str(path))
    loaded = load_model(path)
    assert CoreMLCompiler().unsupported_ops(loaded, apple_target()) == {"Softsign": ["act_softsign"]}
    with pytest.raises(UnsupportedError, match="act_softsign"):
        compile_to(path, "fp32", tmp_path / "w")


def test_options_and_target_device_settings(mlp_file: Path, tmp_path: Path) -> None:
    target = apple_target(compute_units="cpu_and_ne", minimum_deployment_target="iOS16")
    artifact, _ = compile_to(mlp_file, "fp32", tmp_path / "ne", target)
    assert artifact.options["compute_units"] == "cpu_and_ne" and artifact.device == "cpu_and_ne"
    assert artifact.options["minimum_deployment_target"] == "ios16"
    assert parse_options({"compute_units": "cpu_only"}, {"compute_units": "all"}).compute_units == "cpu_only"
    with pytest.raises(UnsupportedError, match="cpu_and_ne"):
        parse_options({"compute_units": "npu"})
    with pytest.raises(UnsupportedError, match="unknown coreml option"):
        parse_options({"threads": "4"})
    with pytest.raises(TargetError, match="device.coreml.threads"):
        parse_options({}, {"threads": 4}, "targets/apple/x.toml")
    with pytest.raises(UnsupportedError, match="iOS16"):
        compile_to(mlp_file, "int8", tmp_path / "old", minimum_deployment_target="ios15")


def test_supports_apple_targets_only() -> None:
    backend = CoreMLCompiler()
    assert backend.supports(apple_target())
    from onnxsmith.targets.host import detect_host

    if platform.system() != "Darwin":
        assert not backend.supports(detect_host())
    assert backend.precisions(apple_target()) == ("fp32", "fp16", "int8")


@pytest.mark.skipif(ON_MAC, reason="this is a Mac: Core ML runs here")
def test_linux_says_copy_the_bundle_to_a_mac(mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    artifact, workdir = mlp_artifacts["fp32"]
    backend = CoreMLCompiler()
    verdict = backend.runs_here(apple_target())
    assert not verdict and "macOS" in verdict.reason and "Mac" in verdict.hint
    with pytest.raises(UnsupportedError) as info:
        backend.load(artifact, workdir, apple_target())
    assert "copy the bundle to a Mac" in str(info.value) and info.value.exit_code == 5
    assert backend.devices() == []


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("fp16", 1e-2), ("int8", 5e-2)])
def test_linux_numerical_check_of_the_emitted_program(mlp_file: Path, precision: str, tolerance: float,
                                                      mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    import onnxruntime as ort

    artifact, workdir = mlp_artifacts[precision]
    assert can_evaluate(artifact, workdir)
    x = np.random.default_rng(11).standard_normal((1, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(mlp_file)).run(None, {"x": x})[0]
    got = evaluate_program(artifact, workdir, {"x": x})["logits"]
    assert got.shape == expected.shape and got.dtype == np.float32
    error = float(np.abs(got - expected).max())
    assert error < tolerance * max(1.0, float(np.abs(expected).max()))
    if precision != "fp32":
        assert error > 0  # fp16 rounding / int8 weights really were applied


@pytest.mark.skipif(not ON_MAC, reason="Core ML predicts only on macOS")
def test_runner_on_macos_matches_onnxruntime(mlp_file: Path, mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    import onnxruntime as ort

    artifact, workdir = mlp_artifacts["fp16"]
    x = np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(mlp_file)).run(None, {"x": x})[0]
    with CoreMLCompiler().load(artifact, workdir, apple_target()) as runner:
        assert [s.name for s in runner.inputs] == ["x"]
        got = runner.run({"x": x})["logits"]
        assert np.abs(got - expected).max() < 2e-2
        runner.bind({"x": x})()
        assert runner.layer_profile({"x": x}) is None


# ---- validate on Linux: the MIL program against ONNX Runtime -------------------------------------------------

def make_transformer(seed: int = 0, seq: int = 8, dim: int = 16, heads: int = 2, classes: int = 5) -> onnx.ModelProto:
    """One pre-norm encoder block (multi-head self-attention + GELU MLP, LayerNorm) and a mean-pooled classifier."""
    rng = np.random.default_rng(seed)
    head = dim // heads

    def init(name: str, *shape: int, scale: float = 0.2) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    def const(name: str, values: list[int]) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(np.array(values, np.int64), name)

    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln1_g", "ln1_b"], ["h"], axis=-1, epsilon=1e-5),
        *[node for name in "qkv" for node in (
            n("MatMul", ["h", f"w{name}"], [f"{name}0"]),
            n("Reshape", [f"{name}0", "split"], [f"{name}1"]),
            n("Transpose", [f"{name}1"], [name], perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3]))],
        n("MatMul", ["q", "k"], ["s0"]), n("Mul", ["s0", "scale"], ["s"]), n("Softmax", ["s"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["a0"]), n("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["a1", "merge"], ["a2"]), n("MatMul", ["a2", "wo"], ["a"]), n("Add", ["x", "a"], ["r1"]),
        n("LayerNormalization", ["r1", "ln2_g", "ln2_b"], ["h2"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h2", "w1"], ["f0"]), n("Add", ["f0", "b1"], ["f1"]),
        n("Div", ["f1", "sqrt2"], ["g0"]), n("Erf", ["g0"], ["g1"]), n("Add", ["g1", "one"], ["g2"]),
        n("Mul", ["f1", "g2"], ["g3"]), n("Mul", ["g3", "half"], ["g"]),
        n("MatMul", ["g", "w2"], ["f2"]), n("Add", ["r1", "f2"], ["r2"]),
        n("ReduceMean", ["r2", "seq_axis"], ["pooled"], keepdims=0),
        n("Gemm", ["pooled", "wc", "bc"], ["logits"], transB=1),
    ]
    scalars = {"scale": 1.0 / np.sqrt(head), "sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
    inits = [init("ln1_g", dim, scale=1.0), init("ln1_b", dim, scale=0.1), init("ln2_g", dim, scale=1.0),
             init("ln2_b", dim, scale=0.1), init("wq", dim, dim), init("wk", dim, dim), init("wv", dim, dim),
             init("wo", dim, dim), init("w1", dim, 4 * dim), init("b1", 4 * dim, scale=0.1), init("w2", 4 * dim, dim),
             init("wc", classes, dim, scale=0.5), init("bc", classes, scale=0.1),
             const("split", [1, seq, heads, head]), const("merge", [1, seq, dim]), const("seq_axis", [1]),
             *[onnx.numpy_helper.from_array(np.array(v, np.float32), k) for k, v in scalars.items()]]
    graph = helper.make_graph(nodes, "tiny_transformer",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, seq, dim])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="onnxsmith-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from onnxsmith.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out + err


def _compile_cli(model: Path, precision: str, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _cli(["compile", str(model), "--target", "apple/m3", "--precision", precision, "-o", str(out)],
                        capsys)
    assert code == 0, output


def _validate_cli(bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, dict]:
    code, output = _cli(["validate", str(bundle), *extra], capsys)
    assert code == 0, output
    return output, json.loads((bundle / "validation.json").read_text())


@pytest.mark.skipif(ON_MAC, reason="on a Mac, validate runs Core ML itself")
@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.9999), ("fp16", 0.999)])
def test_validate_on_linux_checks_the_digits_cnn_mil_program(precision: str, floor: float, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`onnxsmith validate` of a Core ML bundle on Linux: the saved MIL program vs ONNX Runtime, labelled."""
    from importlib import resources

    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "cache"))
    digits = resources.files("onnxsmith") / "examples" / "digits"
    bundle = tmp_path / f"digits-{precision}"
    _compile_cli(Path(str(digits / "digits_cnn.onnx")), precision, bundle, capsys)
    output, record = _validate_cli(bundle, capsys, "--data", str(digits / "validation.npz"), "--labels", "label")
    assert "checked: MIL program evaluated on Linux, not Core ML's kernels" in output
    assert "what it does not: Core ML's own kernels" in output
    assert record["passed"] and record["samples"] == 360 and record["cosine_min"] >= floor
    assert record["evaluated_by"]["label"] == "MIL program evaluated on Linux, not Core ML's kernels"
    assert any("conv, max_pool by onnxsmith's numpy references" in c for c in record["evaluated_by"]["checked"])
    assert record["accuracy"] >= record["reference_accuracy"] - 0.01
    report = (bundle / "report.md").read_text()
    assert "MIL program evaluated on Linux, not Core ML's kernels" in report and "Not checked:" in report


@pytest.mark.skipif(ON_MAC, reason="on a Mac, validate runs Core ML itself")
def test_validate_on_linux_checks_a_small_transformer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "transformer.onnx"
    onnx.save(make_transformer(), str(path))
    bundle = tmp_path / "tf-fp16"
    _compile_cli(path, "fp16", bundle, capsys)
    output, record = _validate_cli(bundle, capsys, "--samples", "16")
    ops = json.loads((bundle / "manifest.json").read_text())["artifact"]["metadata"]["program"]["ops"]
    assert {"layer_norm", "softmax", "matmul", "reduce_mean"} <= set(ops)
    assert record["passed"] and record["cosine_min"] >= 0.999 and record["evaluated_by"], output
    artifact, workdir = compile_to(path, "fp32", tmp_path / "fp32")  # fp32 through the same evaluator, no CLI
    x = np.random.default_rng(5).standard_normal((1, 8, 16)).astype(np.float32)
    got = evaluate_program(artifact, workdir, {"x": x})["logits"]
    assert _cosine(got, ort_reference(path, {"x": x})["logits"]) >= 0.9999


def test_validate_without_an_evaluable_program_says_both_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    if ON_MAC:
        pytest.skip("on a Mac, validate runs Core ML itself")
    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "cache"))
    path = _one_op_model(tmp_path / "inorm.onnx", [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])],
                         [_w("s", 4), _w("b", 4)])
    _compile_cli(path, "fp32", tmp_path / "b", capsys)
    code, output = _cli(["validate", str(tmp_path / "b")], capsys)
    assert code == 5 and output.count("error:") == 1 and "Traceback" not in output, output
    assert "predicts only on macOS" in output and "instance_norm" in output


# ---- runs_here, provenance, options, compression --------------------------------------------------------------

def test_runs_here_checks_the_target_os(monkeypatch: pytest.MonkeyPatch) -> None:
    """An iPhone bundle is not runnable on an Apple-silicon Mac: its profile would be Mac numbers labelled iPhone."""
    from onnxsmith.compilers.coreml import backend as coreml_backend
    from onnxsmith.targets import load_target

    monkeypatch.setattr(coreml_backend.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(coreml_backend, "machine_arch", lambda: "aarch64")
    backend = CoreMLCompiler()
    iphone = backend.runs_here(load_target("apple/iphone"))
    assert not iphone and "iOS" in iphone.reason and "macOS" in iphone.reason and "device" in iphone.hint
    assert backend.runs_here(load_target("apple/m3"))
    monkeypatch.setattr(coreml_backend, "machine_arch", lambda: "x86_64")
    assert not backend.runs_here(load_target("apple/m3"))  # an Intel Mac is not an M3


def test_package_metadata_carries_onnxsmith_provenance(mlp_artifacts: dict[str, tuple[Artifact, Path]]) -> None:
    import coremltools as ct

    artifact, workdir = mlp_artifacts["fp16"]
    meta = ct.models.MLModel(str(workdir / "model.mlpackage"), skip_model_load=True).get_spec().description.metadata
    assert meta.author == "onnxsmith" and "onnx2coreml" not in meta.license + meta.shortDescription + meta.author
    assert "devin-lai" not in str(meta)
    assert meta.userDefined["onnxsmith.target"] == "apple/test-m2" and meta.userDefined["onnxsmith.precision"] == "fp16"
    assert meta.userDefined["onnxsmith.source_model"] == "mlp.onnx"
    assert len(meta.userDefined["onnxsmith.source_sha256"]) == 64


def test_fp32_ops_names_are_checked(mlp_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="'Softmax' is not a MIL op type.*did you mean 'softmax'"):
        compile_to(mlp_file, "fp16", tmp_path / "a", fp32_ops=["Softmax"])
    with pytest.raises(UnsupportedError, match="'LayerNormalization'.*did you mean 'layer_norm'"):
        compile_to(mlp_file, "fp16", tmp_path / "b", fp32_ops=["LayerNormalization"])
    artifact, _ = compile_to(mlp_file, "fp16", tmp_path / "c", fp32_ops=["linear"])
    assert artifact.precision_used == "fp16+fp32"  # the kept op type really computes in fp32
    assert any("kept fp32: linear" in note for note in artifact.notes)


def test_palettized_weights(mlp_file: Path, tmp_path: Path) -> None:
    artifact, workdir = compile_to(mlp_file, "fp16", tmp_path / "p", palettize_bits="4", weight_threshold="512")
    assert artifact.precision_used == "fp16+lut4-weights"
    assert artifact.metadata["quantization"]["weights"]["nbits"] == 4
    assert artifact.metadata["program"]["ops"].get("constexpr_lut_to_dense") == 2
    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    got = evaluate_program(artifact, workdir, {"x": x})["logits"]
    assert _cosine(got, ort_reference(mlp_file, {"x": x})["logits"]) > 0.99
    with pytest.raises(UnsupportedError, match="fp16 or int8"):
        compile_to(mlp_file, "fp32", tmp_path / "q", palettize_bits="4")
    with pytest.raises(UnsupportedError, match="1, 2, 3, 4, 6, 8"):
        parse_options({"palettize_bits": "5"})


def test_w8a8_quantizes_activations_from_the_calibration_set(tmp_path: Path) -> None:
    from importlib import resources

    from onnxsmith.build.compile import checked_request
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.errors import DataError
    from onnxsmith.profiles import load_profile

    digits = resources.files("onnxsmith") / "examples" / "digits"
    model = load_model(Path(str(digits / "digits_cnn.onnx")))
    calibration = open_dataset(str(digits / "calibration.npz"), model.inputs, what="calibration data",
                               known_batch=model.batch_inputs)
    options = {"activations": "int8", "weight_threshold": 512}
    request = CompileRequest(model, apple_target(), "int8", load_profile("quick"), calibration, options)
    (tmp_path / "q").mkdir()
    artifact = CoreMLCompiler().compile(checked_request(CoreMLCompiler(), request), tmp_path / "q")
    assert artifact.precision_used == "int8+fp16+int8-weights"
    facts = artifact.metadata["quantization"]
    assert facts["activations"]["samples"] == 200 and facts["activations"]["quantize_ops"] >= 3
    assert facts["weights"]["quantized_weights"] == 4
    images = np.load(str(digits / "validation.npz"))["image"][:8]
    cosines = [_cosine(evaluate_program(artifact, tmp_path / "q", {"image": images[i:i + 1]})["logits"],
                       ort_reference(model.path, {"image": images[i:i + 1]})["logits"]) for i in range(8)]
    assert min(cosines) > 0.999
    without = CompileRequest(model, apple_target(), "int8", load_profile("quick"), None, options)
    with pytest.raises(DataError, match="calibration"):
        CoreMLCompiler().compile(without, tmp_path / "r")
    old = CompileRequest(model, apple_target(), "int8", load_profile("quick"), calibration,
                         {**options, "minimum_deployment_target": "ios16"})
    with pytest.raises(UnsupportedError, match="iOS17"):
        CoreMLCompiler().compile(old, tmp_path / "s")


def test_ladder_offers_palettized_and_w8a8_steps() -> None:
    from onnxsmith.targets import load_target

    variants = CoreMLCompiler().ladder_variants(load_target("apple/iphone"), "int8")
    assert [dict(v.options) for v in variants] == [{}, {"palettize_bits": 4}, {"activations": "int8"}]
    assert CoreMLCompiler().ladder_variants(apple_target(minimum_deployment_target="ios16"), "int8")[-1].options == \
        {"palettize_bits": 4}
    assert len(CoreMLCompiler().ladder_variants(load_target("apple/iphone"), "fp16")) == 1
