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
from onnxsmith.compilers.coreml.backend import parse_options, program_summary  # noqa: E402

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
    from onnxsmith.compile import checked_request

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


def test_cnn_converts(cnn_path: Path, tmp_path: Path) -> None:
    artifact, workdir = compile_to(cnn_path, "fp16", tmp_path / "cnn")
    summary = artifact.metadata["program"]
    assert summary["ops"]["conv"] == 2 and summary["ops"]["softmax"] == 1
    assert (workdir / "model.mlpackage" / "Manifest.json").is_file()
    verdict = can_evaluate(artifact, workdir)  # no numpy evaluation for conv: said, not guessed
    assert not verdict and "conv" in verdict.reason


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
    assert int8.metadata["quantization"]["quantized_weights"] == 2
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
