"""TensorRT backend. Everything above the GPU section runs without TensorRT; the GPU section needs TensorRT + a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsmith.compilers.tensorrt import TensorRTCompiler
from onnxsmith.compilers.tensorrt.calibrator import CalibrationFeeder
from onnxsmith.compilers.tensorrt.gpu import GpuInfo, matches, nvidia_gpus, parse_nvidia_smi, visible_indices
from onnxsmith.compilers.tensorrt.options import BuildOptions, parse_options, profile_shapes
from onnxsmith.compilers.tensorrt.precision import count_qdq, layer_precisions, quantize_qdq, sort_nodes, \
    summarize_precision, to_bfloat16, to_float16
from onnxsmith.data import Dataset, synthetic
from onnxsmith.errors import DataError, MissingDependencyError, TargetError, UnsupportedError, UserInputError
from onnxsmith.model import TensorSpec, load_model
from onnxsmith.targets import Target, parse_target
from tests.models import make_cnn

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def nvidia_target(gpu: str = "H100", **device: object) -> Target:
    return parse_target({
        "id": "nvidia/test-gpu", "name": f"NVIDIA {gpu}", "vendor": "nvidia", "kind": "gpu",
        "backends": ["tensorrt", "onnxruntime"], "precisions": ["fp32", "fp16", "bf16", "int8"],
        "peak": {"fp32_tflops": 60.0, "fp16_tflops": 900.0, "memory_bandwidth_gbps": 3000.0, "source": "test"},
        "requires": {"gpu": gpu}, "device": {"tensorrt": dict(device)},
    }, "nvidia-test.toml")


def cpu_target() -> Target:
    return parse_target({
        "id": "intel/test-cpu", "name": "Test Xeon", "vendor": "intel", "kind": "cpu",
        "backends": ["openvino", "onnxruntime"], "precisions": ["fp32", "int8"],
        "peak": {"fp32_tflops": 2.0, "memory_bandwidth_gbps": 200.0, "source": "test"},
        "requires": {"arch": "x86_64"},
    }, "cpu-test.toml")


# ---- registry, target support, options (no TensorRT needed) -------------------------------------------------

@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_registry_lists_tensorrt_unavailable_with_pip_hint() -> None:
    from onnxsmith.registry import backend_status

    status = backend_status("tensorrt")
    assert not status.available
    assert "tensorrt" in status.reason
    assert status.hint == "pip install 'onnxsmith[tensorrt]'"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_compile_without_tensorrt_raises_missing_dependency(mlp_path: Path) -> None:
    from onnxsmith.plugin import CompileRequest
    from onnxsmith.profiles import load_profile

    request = CompileRequest(load_model(mlp_path), nvidia_target(), "fp32", load_profile("quick"))
    with pytest.raises(MissingDependencyError) as info:
        TensorRTCompiler().compile(request, Path("."))
    assert info.value.exit_code == 3


def test_a_stub_tensorrt_package_counts_as_missing(tmp_path: Path) -> None:
    """A ``tensorrt`` package without NVIDIA's bindings (what a failed PyPI install can leave) is reported missing."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text('__version__ = "10.0.0"\n')
    code = ("from onnxsmith.registry import backend_status; s = backend_status('tensorrt'); "
            "print(s.available, s.reason, s.hint, sep='|')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    available, reason, hint = proc.stdout.strip().split("|")
    assert available == "False" and reason == "tensorrt is not installed" and "onnxsmith[tensorrt]" in hint
    probe = subprocess.run([sys.executable, "-c", "from onnxsmith.compilers.tensorrt.engine import import_tensorrt\n"
                            "try:\n    import_tensorrt()\nexcept Exception as e:\n    print(e)"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert "stub" in probe.stdout


def test_supports_nvidia_gpus_only() -> None:
    backend = TensorRTCompiler()
    assert backend.supports(nvidia_target())
    verdict = backend.supports(cpu_target())
    assert not verdict and "NVIDIA" in verdict.reason and "intel" in verdict.reason
    from onnxsmith.targets.host import detect_host

    assert not backend.supports(detect_host())


def test_precisions_follow_the_target() -> None:
    backend = TensorRTCompiler()
    assert backend.precisions(nvidia_target()) == ("fp32", "fp16", "bf16", "int8")
    turing = parse_target({
        "id": "nvidia/t4", "name": "T4", "vendor": "nvidia", "kind": "gpu", "backends": ["tensorrt"],
        "precisions": ["fp32", "fp16", "int8"], "peak": {"fp32_tflops": 8.1, "memory_bandwidth_gbps": 320.0,
                                                         "source": "test"}, "requires": {"gpu": "T4"}}, "t4.toml")
    assert backend.precisions(turing) == ("fp32", "fp16", "int8")


@pytest.mark.skipif(bool(nvidia_gpus()), reason="this machine has an NVIDIA GPU")
def test_runs_here_says_no_gpu() -> None:
    verdict = TensorRTCompiler().runs_here(nvidia_target())
    assert not verdict and "no NVIDIA GPU" in verdict.reason


def test_gpu_matching() -> None:
    h100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", "9.0")
    assert matches(h100, "H100")
    assert matches(h100, "h100", "9.0")
    wrong = matches(h100, "A100")
    assert not wrong and "H100" in wrong.reason and "hardware_compatibility" in wrong.hint
    assert not matches(h100, "H100", "8.0")
    assert h100.sm == "sm_90"


def test_parse_nvidia_smi_and_visible_devices() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 580.65.06\n1, NVIDIA A10G, 8.6, 23028, 580.65.06\n"
    gpus = parse_nvidia_smi(text)
    assert [(g.index, g.name, g.compute_capability, g.memory_mb) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", "9.0", 81559), (1, "NVIDIA A10G", "8.6", 23028)]
    assert parse_nvidia_smi("No devices were found\n") == []
    assert visible_indices(None, 2) == [0, 1]
    assert visible_indices("1", 2) == [1]
    assert visible_indices("", 2) == []
    assert visible_indices("1,5,0", 2) == [1]  # CUDA stops at the first invalid ordinal


def test_option_validation() -> None:
    opts = parse_options({"workspace_mb": "2048", "timing_cache": "off", "builder_optimization_level": "5",
                          "int8_method": "QDQ"}, {"hardware_compatibility": "ampere_plus", "compute_capability": "9.0"})
    assert opts == BuildOptions(workspace_mb=2048, timing_cache=False, builder_optimization_level=5,
                                int8_method="qdq", hardware_compatibility="ampere_plus", compute_capability="9.0")
    assert parse_options({"tf32": "on"}, {"tf32": False}).tf32  # --option wins over the target file
    with pytest.raises(UnsupportedError, match="unknown tensorrt option 'fp16'"):
        parse_options({"fp16": "1"})
    with pytest.raises(UnsupportedError, match="between 0 and 5"):
        parse_options({"builder_optimization_level": "9"})
    with pytest.raises(UnsupportedError, match="expected on or off"):
        parse_options({"timing_cache": "maybe"})
    with pytest.raises(UnsupportedError, match="ampere_plus"):
        parse_options({"hardware_compatibility": "turing"})
    with pytest.raises(UnsupportedError, match="min_batch <= opt_batch <= max_batch"):
        parse_options({"min_batch": "8", "max_batch": "4"})
    with pytest.raises(UnsupportedError, match="need max_batch"):
        parse_options({"opt_batch": "4"})
    with pytest.raises(UnsupportedError, match="compute_capability"):  # a target-file key, not a --option
        parse_options({"compute_capability": "9.0"})
    with pytest.raises(TargetError, match="device.tensorrt.precision_mode"):
        parse_options({}, {"precision_mode": "fast"}, "targets/nvidia/x.toml")


def test_target_options_reach_runs_here_validation() -> None:
    with pytest.raises(TargetError):
        TensorRTCompiler().runs_here(nvidia_target(bogus=1))


def test_optimization_profile_shapes() -> None:
    assert profile_shapes([("x", (1, 32))], BuildOptions()) == {}
    with pytest.raises(UserInputError, match="max_batch"):
        profile_shapes([("x", (-1, 32))], BuildOptions())
    shapes = profile_shapes([("x", (-1, 3, 224, 224)), ("y", (1, 4))], BuildOptions(max_batch=16, opt_batch=8))
    assert shapes == {"x": ((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))}
    with pytest.raises(UserInputError, match="--shape ids=1xN"):
        profile_shapes([("ids", (1, -1))], BuildOptions(max_batch=4))


# ---- int8 calibration feeding ---------------------------------------------------------------------------------

def _specs() -> tuple[TensorSpec, ...]:
    return (TensorSpec("image", "float32", (2, 3, 4, 4)), TensorSpec("scale", "float32", (2, 1)))


def test_calibration_feeder_batches_in_requested_order() -> None:
    rng = np.random.default_rng(0)
    data = Dataset({"image": rng.standard_normal((7, 3, 4, 4)), "scale": np.arange(7.0).reshape(7, 1)})
    feeder = CalibrationFeeder(data, _specs())
    assert (feeder.batch_size, feeder.num_batches, feeder.dropped_samples) == (2, 3, 1)
    first = feeder.next_batch(["scale", "image"])
    assert [a.shape for a in first] == [(2, 1), (2, 3, 4, 4)]
    assert first[0].dtype == np.float32 and first[0].flags.c_contiguous  # float64 data cast to the input's dtype
    assert first[0][:, 0].tolist() == [0.0, 1.0]
    assert feeder.next_batch(["scale", "image"])[0][:, 0].tolist() == [2.0, 3.0]
    assert feeder.next_batch(["scale", "image"])[0][:, 0].tolist() == [4.0, 5.0]
    assert feeder.next_batch(["scale", "image"]) is None
    feeder.reset()
    assert feeder.next_batch(["image", "scale"])[1][:, 0].tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match="mask"):
        feeder.next_batch(["image", "mask"])
    assert len(list(feeder)) == 3 and CalibrationFeeder(data, _specs(), max_batches=2).num_batches == 2


def test_calibration_feeder_rejects_data_that_does_not_fit() -> None:
    good = np.zeros((4, 3, 4, 4), np.float32)
    with pytest.raises(DataError, match="no array for input"):
        CalibrationFeeder(Dataset({"image": good}), _specs())
    with pytest.raises(DataError, match="3x5x5"):
        CalibrationFeeder(Dataset({"image": np.zeros((4, 3, 5, 5)), "scale": np.zeros((4, 1))}), _specs())
    with pytest.raises(DataError, match="too little"):
        CalibrationFeeder(Dataset({"image": good[:1], "scale": np.zeros((1, 1))}), _specs())
    with pytest.raises(DataError, match="dynamic"):
        CalibrationFeeder(Dataset({"x": np.zeros((4, 8))}), (TensorSpec("x", "float32", (None, 8)),))


# ---- ONNX preparation for strongly typed builds (ONNX Runtime, no TensorRT) -----------------------------------

def _reference(path: Path, feeds: dict[str, np.ndarray], disable_optimizations: bool = False) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if disable_optimizations:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_qdq_quantization_in_tensorrt_scheme(cnn_path: Path, tmp_path: Path) -> None:
    model = load_model(cnn_path)
    calibration = synthetic(model, 32, seed=1)
    out = tmp_path / "cnn.qdq.onnx"
    stats = quantize_qdq(model.path, out, CalibrationFeeder(calibration, model.inputs), "minmax")
    assert stats["quantizelinear"] >= 3 and stats["batches"] == 32
    qdq = onnx.load(str(out))
    assert count_qdq(qdq) == {"QuantizeLinear": stats["quantizelinear"], "DequantizeLinear": stats["dequantizelinear"]}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear":  # symmetric int8: zero points are int8 zeros
            zero = next(t for t in qdq.graph.initializer if t.name == node.input[2])
            assert zero.data_type == TensorProto.INT8 and not onnx.numpy_helper.to_array(zero).any()
    conv_weight_dq = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.output[0].startswith("w1")]
    scale = next(t for t in qdq.graph.initializer if t.name == conv_weight_dq[0].input[1])
    assert list(scale.dims) == [8]  # per output channel
    feeds = {"input": synthetic(model, 1, seed=7).arrays["input"]}
    expected = _reference(model.path, feeds)
    # Q/DQ semantics evaluated literally (ONNX Runtime's fused int8 kernels are not what TensorRT runs).
    got = _reference(out, feeds, disable_optimizations=True)
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max() + 0.01


def test_fp16_and_bf16_rewrites_keep_fp32_io(mlp_path: Path) -> None:
    model = load_model(mlp_path)
    before = model.proto.SerializeToString()
    half = to_float16(model.proto)
    assert model.proto.SerializeToString() == before  # the loaded model is left alone
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT]
    assert {t.data_type for t in half.graph.initializer} == {TensorProto.FLOAT16}
    tmp = Path(model.path).with_name("mlp.fp16.onnx")
    onnx.save(half, str(tmp))
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)}
    assert np.abs(_reference(tmp, feeds) - _reference(model.path, feeds)).max() < 5e-3
    brain = to_bfloat16(model.proto)  # type-checked with onnx's full check inside
    assert {t.data_type for t in brain.graph.initializer} == {TensorProto.BFLOAT16}
    casts = [a.i for n in brain.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert TensorProto.BFLOAT16 in casts and TensorProto.FLOAT16 not in casts
    assert [o.type.tensor_type.elem_type for o in brain.graph.output] == [TensorProto.FLOAT]


def test_sort_nodes_orders_producers_first_and_survives_cycles() -> None:
    relu = lambda src, dst, name: helper.make_node("Relu", [src], [dst], name=name)  # noqa: E731
    graph = helper.make_graph(
        [relu("b", "c", "second"), relu("a", "b", "first"), helper.make_node("Add", ["c", "e"], ["d"], name="loop1"),
         helper.make_node("Add", ["d", "a"], ["e"], name="loop2")], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    sort_nodes(graph)
    names = [n.name for n in graph.node]
    assert names.index("first") < names.index("second") and sorted(names) == ["first", "loop1", "loop2", "second"]


def test_layer_precisions_from_inspector_json() -> None:
    trt10 = {"Layers": [
        {"Name": "conv1 + relu1", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "input", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Name": "r1", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "Reformatting CopyNode for Input Tensor 0", "LayerType": "Reformat",
         "Inputs": [{"Format/Datatype": "Row major linear FP32"}], "Outputs": [{"Format/Datatype": "Int8"}]},
        {"Name": "fc", "LayerType": "CaskGemmConvolution", "Inputs": [{"Format/Datatype": "Row major Int8 format"}],
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "softmax", "LayerType": "CaskSoftMaxV2", "Inputs": [{"Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
    ], "Bindings": ["input", "probs"]}
    counts = layer_precisions(trt10)
    assert counts == {"fp16": 1, "int8": 1, "fp32": 1}
    assert summarize_precision(counts) == "int8+fp16+fp32"
    trt11 = {"Layers": [{"Name": "gemm", "LayerType": "Gemm", "Inputs": [{"DataType": "BFloat16", "Format": "kLINEAR"}],
                         "Outputs": [{"DataType": "BFloat16"}]}], "I/O Tensors": []}
    assert summarize_precision(layer_precisions(trt11)) == "bf16"
    assert layer_precisions({"Layers": ["conv1 + relu1"]}) == {}  # built without DETAILED verbosity


# ---- on an NVIDIA GPU with TensorRT (skipped here) -------------------------------------------------------------

def _gpu_target() -> Target:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    gpus = nvidia_gpus()
    if not gpus:
        pytest.skip("no NVIDIA GPU on this machine")
    return nvidia_target(gpus[0].name, builder_optimization_level=1, workspace_mb=1024)


@pytest.fixture
def gpu_target() -> Target:
    return _gpu_target()


def _compile(model_path: Path, target: Target, precision: str, tmp: Path, calibration: Dataset | None = None,
             **options: str):
    from onnxsmith.plugin import CompileRequest
    from onnxsmith.profiles import load_profile

    model = load_model(model_path)
    workdir = tmp / f"{model_path.stem}-{precision}"
    workdir.mkdir()
    from onnxsmith.compile import checked_request

    request = CompileRequest(model, target, precision, load_profile("quick"), calibration, options)
    return model, TensorRTCompiler().compile(checked_request(TensorRTCompiler(), request), workdir), workdir


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_runs_and_matches_onnxruntime(gpu_target: Target, cnn_path: Path, tmp_path: Path,
                                                    precision: str) -> None:
    calibration = synthetic(load_model(cnn_path), 16) if precision == "int8" else None
    model, artifact, workdir = _compile(cnn_path, gpu_target, precision, tmp_path, calibration)
    assert artifact.files[0] == "model.engine" and (workdir / "model.engine").stat().st_size > 0
    assert artifact.metadata["gpu"]["compute_capability"] and artifact.metadata["tensorrt_version"]
    assert artifact.precision_used.split("+")[0] == {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}[precision]
    feeds = {"input": synthetic(model, 1, seed=5).arrays["input"]}
    expected = _reference(model.path, feeds)
    with TensorRTCompiler().load(artifact, workdir, gpu_target) as runner:
        got = runner.run(feeds)["probs"]
        assert got.shape == expected.shape
        tolerance = {"fp32": 1e-4, "fp16": 5e-3, "int8": 5e-2}[precision]
        assert np.abs(got - expected).max() < tolerance
        call = runner.bind(feeds)
        call()
        layers = runner.layer_profile(feeds)
        assert layers and all(t.time_ms >= 0 for t in layers)
        rate, requests = runner.parallel_throughput(feeds, 0.2)
        assert rate > 0 and requests >= 2


def test_timing_cache_is_reused(gpu_target: Target, mlp_path: Path, tmp_path: Path) -> None:
    _, first, _ = _compile(mlp_path, gpu_target, "fp32", tmp_path)
    (tmp_path / "again").mkdir()
    _, second, _ = _compile(mlp_path, gpu_target, "fp32", tmp_path / "again")
    assert Path(first.metadata["timing_cache"]["path"]).is_file()
    assert second.metadata["timing_cache"]["loaded"]


def test_unsupported_node_is_named(gpu_target: Target, tmp_path: Path) -> None:
    cnn = make_cnn()
    cnn.graph.node.append(helper.make_node("StringNormalizer", ["probs_str"], ["norm"], name="weird_strings"))
    cnn.graph.input.append(helper.make_tensor_value_info("probs_str", TensorProto.STRING, [1, 3]))
    cnn.graph.output.append(helper.make_tensor_value_info("norm", TensorProto.STRING, [1, 3]))
    path = tmp_path / "weird.onnx"
    onnx.save(cnn, str(path))
    found = TensorRTCompiler().unsupported_ops(load_model(path), gpu_target)
    assert "weird_strings" in [name for names in found.values() for name in names]
