"""TensorRT backend. Everything above the GPU section runs without TensorRT; the GPU section needs TensorRT + a GPU."""

from __future__ import annotations

import dataclasses
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
from onnxsmith.data.dataset import Dataset, synthetic
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
    from onnxsmith.build.compile import checked_request

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


# ---- issue 15: fakes that record the calls made (no TensorRT, no GPU) ------------------------------------------

class _Err:
    """A cuda-python error code: ``.value`` 0 is success."""

    def __init__(self, value: int = 0, name: str = "cudaSuccess") -> None:
        self.value, self.name = value, name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Err) and other.value == self.value

    def __hash__(self) -> int:
        return self.value


def _fake_cuda_modules(monkeypatch: pytest.MonkeyPatch, runtime: object, utils: object | None = None) -> None:
    import sys
    import types

    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    if utils is not None:
        bindings.utils = utils  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # import fails, as on cuda-python 12


def test_gpu_query_falls_back_to_nvidia_smi_and_names_the_cuda_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda-python 13 on a pre-R580 driver: cudaGetDeviceCount fails; the GPU must still be found (nvidia-smi)."""
    import subprocess
    import types

    from onnxsmith.compilers.tensorrt import gpu as gpu_module

    runtime = types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (_Err(35), 0),
        cudaGetErrorName=lambda err: (_Err(), b"cudaErrorInsufficientDriver"),
        cudaGetErrorString=lambda err: (_Err(), b"CUDA driver version is insufficient for CUDA runtime version"))
    _fake_cuda_modules(monkeypatch, runtime)
    calls: list[list[str]] = []

    def fake_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 550.54.15\n", "")

    monkeypatch.setattr(gpu_module.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(gpu_module.subprocess, "run", fake_run)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu_module.nvidia_gpus.cache_clear()
    try:
        found = gpu_module.nvidia_gpus()
        assert [(g.name, g.compute_capability) for g in found] == [("NVIDIA H100 80GB HBM3", "9.0")]
        assert calls and calls[0][0] == "/usr/bin/nvidia-smi"
        note = gpu_module.cuda_query_note()
        assert "cudaErrorInsufficientDriver (35)" in note and "onnxsmith[tensorrt]" in note
        # a binding that raises (cannot load its runtime) falls back the same way
        runtime.cudaGetDeviceCount = lambda: (_ for _ in ()).throw(RuntimeError("libcudart.so.13: not found"))
        gpu_module.nvidia_gpus.cache_clear()
        assert len(gpu_module.nvidia_gpus()) == 1 and "libcudart.so.13" in gpu_module.cuda_query_note()
        verdict = TensorRTCompiler().runs_here(nvidia_target("H100"))
        assert not verdict  # found by nvidia-smi, but TensorRT's own CUDA calls would fail the same way
    finally:
        gpu_module.nvidia_gpus.cache_clear()


def test_extras_pin_cuda_python_to_the_tensorrt_cuda_major() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "cuda-python>=12.6,<13" in extras["tensorrt"] and any(r.startswith("tensorrt-cu12") for r in extras["tensorrt"])
    assert "cuda-python>=13,<14" in extras["tensorrt-cu13"] and any(r.startswith("tensorrt-cu13")
                                                                    for r in extras["tensorrt-cu13"])


def test_stream_handle_uses_the_native_handle_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from onnxsmith.compilers.tensorrt import cuda as trt_cuda

    class Stream:
        def __int__(self) -> int:
            raise AssertionError("int(cudaStream_t) is deprecated in cuda-bindings 13")

    stream = Stream()
    runtime = types.SimpleNamespace(cudaStreamCreate=lambda: (_Err(), stream))
    _fake_cuda_modules(monkeypatch, runtime, types.SimpleNamespace(get_cuda_native_handle=lambda obj: 0xBEEF))
    assert trt_cuda.Stream().handle == 0xBEEF
    _fake_cuda_modules(monkeypatch, types.SimpleNamespace(cudaStreamCreate=lambda: (_Err(), 7)))
    assert trt_cuda.Stream().handle == 7  # cuda-python 12: no helper, int() still right


def test_trtexec_percentile_and_median_rules() -> None:
    from onnxsmith.compilers.tensorrt.timing import summarize, trtexec_median, trtexec_percentile

    ten = [float(v) for v in range(1, 11)]
    assert trtexec_percentile(ten, 90) == 9.0 and trtexec_percentile(ten, 99) == 10.0
    assert trtexec_percentile(ten, 50) == 5.0 and trtexec_percentile(ten, 0) == 1.0
    assert trtexec_median(ten) == 5.5 and trtexec_median(ten[:9]) == 5.0
    assert float(np.percentile(ten, 90)) != 9.0  # numpy interpolates; trtexec does not
    stats = summarize(list(reversed(ten)))
    assert (stats["min"], stats["max"], stats["mean"], stats["p95"]) == (1.0, 10.0, 5.5, 10.0)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeTimingRuntime:
    """cuda-python runtime calls used by the timing loop; GPU time advances per recorded event."""

    cudaEventBlockingSync = 1

    class cudaStreamCaptureMode:  # noqa: N801 - cuda-python's name
        cudaStreamCaptureModeThreadLocal = "thread-local"

    def __init__(self, clock: _FakeClock, fail_capture: bool = False) -> None:
        self.clock, self.fail_capture, self.calls = clock, fail_capture, []
        self.gpu_ms = 0.0
        self.stamps: dict[int, float] = {}
        self.next = 0

    def _log(self, *call: object) -> tuple[_Err]:
        self.calls.append(call)
        return (_Err(),)

    def cudaEventCreateWithFlags(self, flags: int) -> tuple[_Err, int]:  # noqa: N802
        self.calls.append(("create", flags))
        self.next += 1
        return _Err(), self.next

    def cudaEventRecord(self, event: int, stream: object) -> tuple[_Err]:  # noqa: N802
        self.stamps[event] = self.gpu_ms
        return (_Err(),)

    def cudaEventSynchronize(self, event: int) -> tuple[_Err]:  # noqa: N802
        self.clock.now += 0.001  # each iteration takes 1 ms of wall clock
        return (_Err(),)

    def cudaEventElapsedTime(self, start: int, end: int) -> tuple[_Err, float]:  # noqa: N802
        return _Err(), self.stamps[end] - self.stamps[start]

    def cudaEventDestroy(self, event: int) -> tuple[_Err]:  # noqa: N802
        return self._log("destroy-event", event)

    def cudaStreamSynchronize(self, stream: object) -> tuple[_Err]:  # noqa: N802
        return self._log("sync", stream)

    def cudaStreamBeginCapture(self, stream: object, mode: str) -> tuple[_Err]:  # noqa: N802
        if self.fail_capture:
            return (_Err(900, "cudaErrorStreamCaptureUnsupported"),)
        return self._log("begin-capture", mode)

    def cudaStreamEndCapture(self, stream: object) -> tuple[_Err, str]:  # noqa: N802
        self._log("end-capture")
        return _Err(), "graph"

    def cudaGraphInstantiate(self, graph: str, flags: int) -> tuple[_Err, str]:  # noqa: N802
        self._log("instantiate", graph, flags)
        return _Err(), "exec"

    def cudaGraphLaunch(self, graph_exec: str, stream: object) -> tuple[_Err]:  # noqa: N802
        self.gpu_ms += 2.0  # 2 ms of GPU compute per launch
        return self._log("launch", graph_exec)

    def cudaGraphDestroy(self, graph: str) -> tuple[_Err]:  # noqa: N802
        return self._log("destroy-graph", graph)

    def cudaGraphExecDestroy(self, graph_exec: str) -> tuple[_Err]:  # noqa: N802
        return self._log("destroy-exec", graph_exec)


class _FakeTimedContext:
    def __init__(self, rt: _FakeTimingRuntime) -> None:
        import types

        self.rt = rt
        self.stream = types.SimpleNamespace(raw="stream", synchronize=lambda: None)
        self.enqueues = 0

    def upload(self, host: dict) -> None:
        self.rt.gpu_ms += 0.25  # H2D

    def enqueue(self) -> None:
        self.enqueues += 1
        self.rt.gpu_ms += 2.0

    def download(self) -> dict:
        self.rt.gpu_ms += 0.5  # D2H
        return {}


def _check(result: object, call: str) -> object:
    err, *values = result if isinstance(result, tuple) else (result,)
    if err.value:
        raise RuntimeError(f"{call}: {err.name}")
    return values[0] if len(values) == 1 else (values or None)


def test_trtexec_style_measurement_with_cuda_events_and_graphs() -> None:
    from onnxsmith.compilers.tensorrt.timing import TimingSettings, measure

    clock = _FakeClock()
    rt = _FakeTimingRuntime(clock)
    ctx = _FakeTimedContext(rt)
    result = measure(ctx, {}, TimingSettings(), rt, _check, clock)
    assert result["cuda_graph"] and result["sync"] == "blocking" and "trtexec 11.0" in result["method"]
    assert ("create", 1) in rt.calls  # blocking-sync events, trtexec's default
    assert ("begin-capture", "thread-local") in rt.calls and ("instantiate", "graph", 0) in rt.calls
    assert ctx.enqueues == 2  # one plain enqueue before the capture, one captured: the loop only launches graphs
    assert result["warmup_iterations"] == 200  # 200 ms of warm-up at 1 ms per iteration
    assert result["iterations"] >= 3000 and result["seconds"] >= 3.0  # >= 3 s (and >= 10 iterations)
    assert result["gpu_compute_ms"]["median"] == 2.0 and result["h2d_ms"]["median"] == 0.25
    assert result["d2h_ms"]["median"] == 0.5 and result["host_latency_ms"]["median"] == 2.75
    assert ("destroy-exec", "exec") in rt.calls

    spin = measure(_FakeTimedContext(rt), {}, TimingSettings(duration_s=0.0, warmup_ms=0, spin_wait=True,
                                                             cuda_graph=False), rt, _check, clock)
    assert spin["iterations"] == 10 and spin["sync"] == "spin-wait" and not spin["cuda_graph"]
    assert ("create", 0) in rt.calls


def test_cuda_graph_capture_failure_falls_back_to_enqueues() -> None:
    from onnxsmith.compilers.tensorrt.timing import TimingSettings, measure

    clock = _FakeClock()
    rt = _FakeTimingRuntime(clock, fail_capture=True)
    ctx = _FakeTimedContext(rt)
    result = measure(ctx, {}, TimingSettings(duration_s=0.0, warmup_ms=0), rt, _check, clock)
    assert not result["cuda_graph"] and "capture failed" in result["note"]
    assert result["gpu_compute_ms"]["median"] == 2.0 and ctx.enqueues == 11  # the probe enqueue + 10 timed


def test_parallel_throughput_streams_are_independent() -> None:
    """A fast stream is not held back by a slow one (the old loop synchronized every stream each round)."""
    import types

    from onnxsmith.compilers.tensorrt.timing import parallel_throughput

    clock = _FakeClock()

    class Ctx:
        def __init__(self, name: str, ms: float) -> None:
            self.name, self.ms, self.done_at, self.count = name, ms, 0.0, 0
            self.stream = types.SimpleNamespace(raw=self, synchronize=lambda: None)

        def enqueue(self) -> None:
            self.done_at = clock.now + self.ms / 1000
            self.count += 1

    not_ready = _Err(600, "cudaErrorNotReady")

    def query(stream: Ctx) -> tuple[_Err]:
        clock.now += 0.0001
        return (_Err() if clock.now >= stream.done_at else not_ready,)

    rt = types.SimpleNamespace(cudaError_t=types.SimpleNamespace(cudaErrorNotReady=not_ready), cudaStreamQuery=query)
    fast, slow = Ctx("fast", 1.0), Ctx("slow", 10.0)
    rate, requests = parallel_throughput([fast, slow], 1.0, rt, _check, clock)
    assert requests == 2
    assert fast.count > 5 * slow.count  # lock-step would have made them equal
    assert 850 < rate < 1150  # ~1000/s fast + ~100/s slow, less the fake 0.1 ms per stream query


def _fake_trt(**extra: object) -> object:
    import types

    severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    class ILogger:
        Severity = severity

        def __init__(self) -> None:
            self.min_severity = severity.VERBOSE

    namespace = types.SimpleNamespace(ILogger=ILogger, __version__="10.8.0", **extra)
    return namespace


def test_logger_filters_verbose_messages_before_the_callback() -> None:
    from onnxsmith.compilers.tensorrt.engine import make_logger

    trt = _fake_trt()
    logger = make_logger(trt)
    assert logger.min_severity == trt.ILogger.Severity.WARNING
    logger.log(trt.ILogger.Severity.ERROR, "boom")
    assert logger.errors() == ["boom"]


def test_same_compute_capability_is_refused_before_tensorrt_10_9() -> None:
    import types

    from onnxsmith.compilers.tensorrt.engine import configure

    calls: list[tuple] = []
    config = types.SimpleNamespace(set_memory_pool_limit=lambda *a: calls.append(a), clear_flag=lambda f: None,
                                   set_flag=lambda f: None)
    builder = types.SimpleNamespace(create_builder_config=lambda: config)
    network = types.SimpleNamespace(num_inputs=0, get_input=lambda i: None)
    trt = _fake_trt(MemoryPoolType=types.SimpleNamespace(WORKSPACE="ws"),
                    ProfilingVerbosity=types.SimpleNamespace(DETAILED="detailed"),
                    BuilderFlag=types.SimpleNamespace(TF32="tf32"),
                    HardwareCompatibilityLevel=types.SimpleNamespace(AMPERE_PLUS="ampere+"))
    with pytest.raises(UnsupportedError, match="10.9"):
        configure(trt, builder, network, BuildOptions(hardware_compatibility="same_compute_capability"), [])
    configured, _ = configure(trt, builder, network, BuildOptions(hardware_compatibility="ampere_plus"), [])
    assert configured.hardware_compatibility_level == "ampere+"
    trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY = "same-cc"
    configured, _ = configure(trt, builder, network, BuildOptions(hardware_compatibility="same_compute_capability"), [])
    assert configured.hardware_compatibility_level == "same-cc"


def test_a_calibrator_failure_is_reported_as_itself() -> None:
    import types

    from onnxsmith.compilers.tensorrt.engine import build_serialized
    from onnxsmith.errors import BackendError

    logger = types.SimpleNamespace(errors=lambda: ["Calibration failure occurred with no scaling factors detected"])
    builder = types.SimpleNamespace(build_serialized_network=lambda network, config: None)
    calibrator = types.SimpleNamespace(error=DataError("calibration data does not fit the network", "no 'mask'"))
    with pytest.raises(DataError, match="no 'mask'"):
        build_serialized(builder, None, None, logger, calibrator)
    calibrator.error = ZeroDivisionError("division by zero")
    with pytest.raises(BackendError, match="int8 calibration failed.*ZeroDivisionError"):
        build_serialized(builder, None, None, logger, calibrator)
    with pytest.raises(BackendError, match="TensorRT failed to build the engine.*scaling factors"):
        build_serialized(builder, None, None, logger, types.SimpleNamespace(error=None))


def test_calibration_cache_is_kept_in_the_cache_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from onnxsmith.compilers.tensorrt.calibrator import calibration_cache_path, make_entropy_calibrator

    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "cache"))
    data = Dataset({"image": np.zeros((4, 3, 4, 4)), "scale": np.zeros((4, 1))})
    feeder = CalibrationFeeder(data, _specs())
    path = calibration_cache_path("10.8.0", "model-sha", data.fingerprint(), feeder)
    assert path.parent.name == "tensorrt-calibration" and (tmp_path / "cache") in path.parents
    assert path != calibration_cache_path("10.8.0", "model-sha", "other-data", feeder)

    class Base:
        def __init__(self) -> None:
            pass

    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=Base)
    first = make_entropy_calibrator(trt, feeder, path)
    assert first.read_calibration_cache() is None and not first.cache_reused
    first.write_calibration_cache(b"TRT-1080-EntropyCalibration2\nimage: 3c010a14\n")
    second = make_entropy_calibrator(trt, feeder, path)
    assert second.read_calibration_cache().startswith(b"TRT-1080") and second.cache_reused


def test_shape_tensor_inputs_get_host_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from onnxsmith.compilers.tensorrt import cuda as trt_cuda
    from onnxsmith.compilers.tensorrt.runner import _Context, shape_tensor_inputs

    addresses: dict[str, int] = {}
    mallocs: list[int] = []
    runtime = types.SimpleNamespace(cudaStreamCreate=lambda: (_Err(), 1),
                                    cudaMalloc=lambda n: (mallocs.append(n), (_Err(), 0x1000 + len(mallocs)))[1])
    _fake_cuda_modules(monkeypatch, runtime)
    context = types.SimpleNamespace(set_input_shape=lambda name, shape: True,
                                    get_tensor_shape=lambda name: (2, 3) if name == "y" else (2,),
                                    set_tensor_address=lambda name, ptr: addresses.__setitem__(name, ptr) or True)
    engine = types.SimpleNamespace(create_execution_context=lambda: context,
                                   is_shape_inference_io=lambda name: name == "shape")
    names, inputs = ["x", "shape", "y"], {"x", "shape"}
    host_inputs = shape_tensor_inputs(engine, names, inputs)
    assert host_inputs == {"shape"}
    ctx = _Context(engine, names, inputs, {"x": "float32", "shape": "int64", "y": "float32"}, host_inputs)
    shape = np.array([2, 3], np.int64)
    host = ctx.prepare({"x": np.zeros(2, np.float32), "shape": shape})
    assert set(host) == {"x"}  # only device inputs are uploaded
    assert addresses["shape"] == ctx.host_values["shape"].ctypes.data  # a host pointer TensorRT reads
    assert addresses["x"] >= 0x1000 and addresses["y"] >= 0x1000 and len(mallocs) == 2
    assert trt_cuda.cudart() is runtime


def test_strong_typing_for_qdq_networks_on_tensorrt_10() -> None:
    from onnxsmith.compilers.tensorrt.backend import strongly_typed

    auto = BuildOptions()
    assert strongly_typed(auto, "int8", weak_ok=True)  # 10.x, Q/DQ: strongly typed, no precision flags
    assert not strongly_typed(auto, "fp16", weak_ok=True)  # 10.x fp16 keeps the builder flag
    assert not strongly_typed(BuildOptions(int8_method="calibrator"), "int8", weak_ok=True)
    assert not strongly_typed(BuildOptions(typing="weak"), "int8", weak_ok=True)
    assert strongly_typed(auto, "fp16", weak_ok=False)  # 11.x: always


def test_int8_strong_graph_computes_fp16_around_the_qdq_nodes(cnn_path: Path, tmp_path: Path) -> None:
    """TensorRT 11 runs every non-quantized layer in the type the ONNX gives: fp16 there, not fp32."""
    from onnxsmith.compilers.tensorrt.precision import FP32_KEEP_OPS, qdq_to_float16

    model = load_model(cnn_path)
    qdq_path = tmp_path / "cnn.qdq.onnx"
    quantize_qdq(model.path, qdq_path, CalibrationFeeder(synthetic(model, 16, seed=1), model.inputs), "minmax")
    converted = qdq_to_float16(onnx.load(str(qdq_path)))
    assert next(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert count_qdq(converted) == count_qdq(onnx.load(str(qdq_path)))
    scales = {n.input[1] for n in converted.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert {t.data_type for t in converted.graph.initializer if t.name in scales} == {TensorProto.FLOAT16}
    types = {v.name: v.type.tensor_type.elem_type for v in [*converted.graph.value_info, *converted.graph.output]}
    conv_out = [n.output[0] for n in converted.graph.node if n.op_type == "Conv"]
    assert all(types.get(name) == TensorProto.FLOAT16 for name in conv_out)
    softmax = next(n for n in converted.graph.node if n.op_type == "Softmax")
    assert "Softmax" in FP32_KEEP_OPS and types.get(softmax.output[0]) == TensorProto.FLOAT
    out = tmp_path / "cnn.qdq.fp16.onnx"
    onnx.save(converted, str(out))
    feeds = {"input": synthetic(model, 1, seed=7).arrays["input"]}
    expected = _reference(model.path, feeds)
    got = _reference(out, feeds, disable_optimizations=True)
    assert got.dtype == np.float32 and np.abs(got - expected).max() < 0.05 * np.abs(expected).max() + 0.01


def test_bf16_weights_come_from_fp32_not_through_fp16(tmp_path: Path) -> None:
    import ml_dtypes

    big, tiny = np.float32(100000.0), np.float32(1e-9)
    weight = np.array([[big, tiny], [1.0, 3.1415927]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [onnx.numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    brain = to_bfloat16(model)
    stored = onnx.numpy_helper.to_array(next(t for t in brain.graph.initializer if t.name == "w")).astype(np.float32)
    assert np.array_equal(stored, weight.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert stored[0, 0] > 65504 and stored[0, 1] < 5.9e-8  # no fp16 clamp, no fp16 flush


def test_fp16_keeps_normalization_softmax_and_reductions_fp32() -> None:
    from onnxsmith.compilers.tensorrt.precision import to_float16

    n = helper.make_node
    graph = helper.make_graph(
        [n("MatMul", ["x", "w"], ["h"]), n("LayerNormalization", ["h", "g", "b"], ["ln"], axis=-1),
         n("Softmax", ["ln"], ["p"], axis=-1), n("ReduceSum", ["p", "axes"], ["s"], keepdims=1),
         n("Relu", ["s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
         onnx.numpy_helper.from_array(np.ones(4, np.float32), "g"),
         onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b"),
         onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    half = onnx.shape_inference.infer_shapes(to_float16(model))
    types = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.value_info, *half.graph.output]}
    nodes = {n.op_type: n for n in half.graph.node}
    assert types[nodes["MatMul"].output[0]] == TensorProto.FLOAT16  # the MatMul computes fp16
    for op in ("LayerNormalization", "Softmax", "ReduceSum"):  # kept fp32, with Casts around them
        assert types[nodes[op].output[0]] == TensorProto.FLOAT, op
    assert nodes["Softmax"].input[0] == nodes["LayerNormalization"].output[0]  # no fp16 round trip between them
    assert nodes["ReduceSum"].input[0] == nodes["Softmax"].output[0]
    x = {"x": np.array([[1.0, 2.0, 3.0, 4.5]], np.float32)}
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(half.SerializeToString()).run(None, x)[0]
    assert np.allclose(got, want, atol=1e-3)
    mixed = onnx.shape_inference.infer_shapes(to_float16(model, keep_ops=()))
    types = {v.name: v.type.tensor_type.elem_type for v in [*mixed.graph.value_info, *mixed.graph.output]}
    ln = next(n for n in mixed.graph.node if n.op_type == "LayerNormalization")
    assert types[ln.output[0]] == TensorProto.FLOAT16  # without the keep-list it was fp16


def test_profile_record_carries_the_vendor_timing() -> None:
    from onnxsmith.profiles import Measure
    from onnxsmith.profiling.measure import measure_runner
    from onnxsmith.profiling.record import Measurement
    from onnxsmith.plugin import Runner

    class Timed(Runner):
        def run(self, feeds: dict) -> dict:
            return {}

        def vendor_timing(self, feeds: dict) -> dict:
            return {"method": "trtexec 11.0 defaults", "gpu_compute_ms": {"median": 1.0, "p99": 2.0},
                    "h2d_ms": {"median": 0.1}, "d2h_ms": {"median": 0.2}, "host_latency_ms": {"median": 1.3},
                    "iterations": 10}

    result = measure_runner(Timed(), {}, Measure(warmup_iterations=0, min_iterations=2, min_seconds=0.0,
                                                 max_seconds=1.0, throughput_seconds=0), 1)
    assert result["vendor_timing"]["method"] == "trtexec 11.0 defaults"
    assert {"latency_ms", "first_inference_ms", "load_seconds", "peak_rss_mb"} - set(result) == \
        {"load_seconds", "peak_rss_mb"}
    measurement = Measurement.from_json({**result, "load_seconds": 0.1, "peak_rss_mb": 1.0})
    assert measurement.vendor_timing["gpu_compute_ms"]["p99"] == 2.0


# ---- issue 15 on a GPU with TensorRT (skipped here) ------------------------------------------------------------

@pytest.mark.gpu
def test_gpu_vendor_timing_and_cuda_graph_bind(gpu_target: Target, cnn_path: Path, tmp_path: Path) -> None:
    model, artifact, workdir = _compile(cnn_path, gpu_target, "fp16", tmp_path)
    feeds = {"input": synthetic(model, 1, seed=5).arrays["input"]}
    with TensorRTCompiler().load(artifact, workdir, gpu_target) as runner:
        runner._timing = dataclasses.replace(runner._timing, duration_s=0.3, warmup_ms=20)
        timing = runner.vendor_timing(feeds)
        assert timing["cuda_graph"] and timing["iterations"] >= 10 and timing["gpu_compute_ms"]["median"] > 0
        assert timing["host_latency_ms"]["median"] >= timing["gpu_compute_ms"]["median"]
        call = runner.bind(feeds)
        call()
        assert runner._graph is not None  # the bound call launches a captured graph
        expected = _reference(model.path, feeds)
        assert np.abs(runner.run(feeds)["probs"] - expected).max() < 5e-3
        rate, requests = runner.parallel_throughput(feeds, 0.2)
        assert rate > 0 and requests >= 2


@pytest.mark.gpu
def test_gpu_int8_strong_engine_is_int8_plus_fp16(gpu_target: Target, cnn_path: Path, tmp_path: Path) -> None:
    calibration = synthetic(load_model(cnn_path), 16)
    _, artifact, _ = _compile(cnn_path, gpu_target, "int8", tmp_path, calibration)
    assert artifact.metadata["typing"] == "strong"
    assert "int8" in artifact.precision_used and "fp16" in artifact.precision_used
    assert artifact.metadata["int8"]["fallback"]["precision"] == "fp16"


@pytest.mark.gpu
def test_gpu_bf16_engine(gpu_target: Target, mlp_path: Path, tmp_path: Path) -> None:
    gpus = nvidia_gpus()
    if float(gpus[0].compute_capability) < 8.0:
        pytest.skip("bf16 needs Ampere or newer")
    model, artifact, workdir = _compile(mlp_path, gpu_target, "bf16", tmp_path)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)}
    with TensorRTCompiler().load(artifact, workdir, gpu_target) as runner:
        got = runner.run(feeds)["logits"]
    assert np.abs(got - _reference(model.path, feeds)).max() < 5e-2


def test_int8_build_input_is_the_fp16_qdq_graph_without_precision_flags(cnn_path: Path, tmp_path: Path) -> None:
    """What the builder is given for int8 on 10.x (typing auto) and 11.x: Q/DQ + fp16 ONNX, no builder flags."""
    import types

    from onnxsmith.compilers.tensorrt.backend import strongly_typed
    from onnxsmith.plugin import CompileRequest
    from onnxsmith.profiles import load_profile

    model = load_model(cnn_path)
    request = CompileRequest(model, nvidia_target(), "int8", load_profile("quick"), synthetic(model, 8, seed=2))
    trt10 = types.SimpleNamespace(__version__="10.8.0", BuilderFlag=types.SimpleNamespace(FP16=1, INT8=2),
                                  IInt8EntropyCalibrator2=object)
    opts = BuildOptions()
    strong = strongly_typed(opts, "int8", weak_ok=True)
    notes: list[str] = []
    metadata: dict = {}
    (tmp_path / "tmp").mkdir()
    path, proto, flags, calibrator = TensorRTCompiler()._prepare(
        trt10, request, opts, strong, GpuInfo(0, "NVIDIA H100", "9.0"), tmp_path / "tmp", tmp_path, notes, metadata)
    assert strong and flags == [] and calibrator is None
    assert path.name == "model.qdq.fp16.onnx" and path.is_file()
    assert count_qdq(proto)["QuantizeLinear"] >= 3 and metadata["int8"]["fallback"]["precision"] == "fp16"
    assert any("rewritten to fp16" in note for note in notes)
    weak = TensorRTCompiler()._prepare(trt10, request, BuildOptions(typing="weak"), False,
                                       GpuInfo(0, "NVIDIA H100", "9.0"), tmp_path / "tmp", tmp_path, [], {})
    assert weak[2] == ["INT8", "FP16"]  # asked for weak typing: TensorRT 10's precision flags
