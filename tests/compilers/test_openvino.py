"""OpenVINO backend: fp32/int8 compiles checked against ONNX Runtime, blob round-trip, devices, options, profiling."""

from __future__ import annotations

import dataclasses

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsmith.data.dataset import Dataset
from onnxsmith.errors import DataError, MissingDependencyError, UnsupportedError, UserInputError
from onnxsmith.model import LoadedModel, load_model
from onnxsmith.build.compile import checked_request
from onnxsmith.plugin import Artifact, CompileRequest
from onnxsmith.profiles import load_profile
from onnxsmith.targets import Target, load_target, parse_target
from tests.models import cosine, make_cnn, make_mlp, ort_reference

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'onnxsmith[openvino]')")

from onnxsmith.compilers.openvino import OpenVINOCompiler  # noqa: E402
from onnxsmith.compilers.openvino.common import capabilities  # noqa: E402


@pytest.fixture(scope="module")
def backend() -> OpenVINOCompiler:
    return OpenVINOCompiler()


@pytest.fixture(scope="module")
def host() -> Target:
    return load_target("host")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    onnx.save_model(make_cnn(), str(path))
    return load_model(path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((40, 3, 16, 16)).astype(np.float32)


def _compile(backend: OpenVINOCompiler, model: LoadedModel, target: Target, workdir: Path, precision: str = "fp32",
             calibration: Dataset | None = None, **options: str) -> Artifact:
    workdir.mkdir(parents=True, exist_ok=True)
    request = CompileRequest(model=model, target=target, precision=precision, profile=load_profile("quick"),
                             calibration=calibration, options=options)
    return backend.compile(checked_request(backend, request), workdir)


@pytest.fixture(scope="module")
def fp32(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    workdir = tmp_path_factory.mktemp("fp32")
    return _compile(backend, cnn, host, workdir), workdir


def test_fp32_matches_onnxruntime_and_reads_back_f32(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target,
                                                    fp32: tuple[Artifact, Path], images: np.ndarray) -> None:
    artifact, workdir = fp32
    assert artifact.files[0] == "model.blob"
    assert {"model.xml", "model.bin", "openvino_config.json"} <= set(artifact.files)
    assert all((workdir / f).is_file() for f in artifact.files)
    assert artifact.options["INFERENCE_PRECISION_HINT"] == "f32"
    assert artifact.precision_used == "fp32"
    assert artifact.metadata["read_back"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert artifact.metadata["read_back"]["OPTIMAL_NUMBER_OF_INFER_REQUESTS"] >= 1
    feeds = {"input": images[:1]}
    with backend.load(artifact, workdir, host) as runner:
        assert runner.loaded_from == "blob" and runner.notes == ()
        assert [s.name for s in runner.inputs] == ["input"] and runner.inputs[0].shape == (1, 3, 16, 16)
        assert [s.name for s in runner.outputs] == ["probs"]
        got = runner.run(feeds)["probs"]
    np.testing.assert_allclose(got, ort_reference(cnn, feeds)["probs"], atol=1e-4)


def test_int8_inserts_fake_quantize_and_stays_close(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target,
                                                    fp32: tuple[Artifact, Path], images: np.ndarray,
                                                    tmp_path: Path) -> None:
    artifact = _compile(backend, cnn, host, tmp_path / "int8", "int8", Dataset({"input": images[:32]}))
    facts = artifact.metadata["quantization"]
    assert facts["fake_quantize_nodes"] > 0 and facts["subset_size"] == 32
    assert facts["nncf_version"]
    ir = ov.Core().read_model(str(tmp_path / "int8" / "model.xml"))
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops()) == facts["fake_quantize_nodes"]
    hint = artifact.metadata["read_back"]["INFERENCE_PRECISION_HINT"]
    assert artifact.precision_used == "int8+" + {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[hint]
    assert "INFERENCE_PRECISION_HINT" not in artifact.options  # unquantized ops keep the device default
    feeds = {"input": images[32:33]}
    with backend.load(artifact, tmp_path / "int8", host) as q, backend.load(*fp32, host) as f:
        assert cosine(q.run(feeds)["probs"], f.run(feeds)["probs"]) > 0.99


def test_int8_without_calibration_is_refused(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target,
                                            tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--calibration"):
        _compile(backend, cnn, host, tmp_path, "int8")


def test_bf16_follows_the_device_capabilities(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target,
                                              tmp_path: Path) -> None:
    if "BF16" in capabilities("CPU"):
        artifact = _compile(backend, cnn, host, tmp_path, "bf16")
        assert artifact.precision_used == "bf16"
        assert artifact.metadata["read_back"]["INFERENCE_PRECISION_HINT"] == "bf16"
        assert "bf16" in backend.precisions(host)
    else:
        with pytest.raises(UnsupportedError, match="bf16") as info:
            _compile(backend, cnn, host, tmp_path, "bf16")  # the core: the detected host does not list bf16
        assert info.value.hint
        # and the backend's own guard, for a target file that lists bf16 on a device without it
        request = CompileRequest(model=cnn, target=dataclasses.replace(host, precisions=(*host.precisions, "bf16")),
                                 precision="bf16", profile=load_profile("quick"))
        with pytest.raises(UnsupportedError, match="BF16"):
            backend.compile(request, tmp_path)
        assert "bf16" not in backend.precisions(host)


def test_blob_that_does_not_import_falls_back_to_the_ir(backend: OpenVINOCompiler, host: Target,
                                                        fp32: tuple[Artifact, Path], images: np.ndarray,
                                                        tmp_path: Path) -> None:
    import shutil

    artifact, workdir = fp32
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    blob = (copy / "model.blob").read_bytes()
    (copy / "model.blob").write_bytes(b"\0" * 16 + blob[16:])  # as a blob from another build would look
    feeds = {"input": images[:1]}
    with backend.load(artifact, copy, host) as fallback, backend.load(artifact, workdir, host) as imported:
        assert fallback.loaded_from == "IR" and "did not import" in fallback.notes[0]
        assert fallback.precision_used == "fp32"
        np.testing.assert_allclose(fallback.run(feeds)["probs"], imported.run(feeds)["probs"], atol=1e-6)


def test_target_that_is_not_this_machine_gets_the_ir_only(backend: OpenVINOCompiler, cnn: LoadedModel,
                                                          images: np.ndarray, tmp_path: Path) -> None:
    other = parse_target({
        "id": "test/future-cpu", "name": "A CPU with a feature no machine has", "vendor": "test", "kind": "cpu",
        "backends": ["openvino"], "precisions": ["fp32", "int8"], "cores": 4,
        "requires": {"arch": "x86_64", "cpu_flags": ["no_such_isa_feature"]},
        "peak": {"fp32_tflops": 1.0, "memory_bandwidth_gbps": 10.0, "source": "test"},
    }, "future.toml")
    assert backend.supports(other) and not backend.runs_here(other)
    artifact = _compile(backend, cnn, other, tmp_path)
    assert "model.blob" not in artifact.files and artifact.files[0] == "model.xml"
    assert artifact.metadata["precision_read_back"] is False and any("IR only" in n for n in artifact.notes)
    assert artifact.options["INFERENCE_NUM_THREADS"] == "4"  # the target's cores, not this machine's
    feeds = {"input": images[:1]}
    with backend.load(artifact, tmp_path, other) as runner:  # the IR still compiles here
        assert runner.loaded_from == "IR" and runner.precision_used == "fp32"
        np.testing.assert_allclose(runner.run(feeds)["probs"], ort_reference(cnn, feeds)["probs"], atol=1e-4)


def test_missing_libraries_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxsmith.compilers.openvino.common import ov as ov_module
    from onnxsmith.compilers.openvino.quantize import nncf_module

    monkeypatch.setitem(sys.modules, "openvino", None)  # what an environment without the package gives
    monkeypatch.setitem(sys.modules, "nncf", None)
    for load in (ov_module, nncf_module):
        with pytest.raises(MissingDependencyError) as info:
            load()
        assert "onnxsmith[openvino]" in info.value.hint


def _gpu_target(device: str = "GPU") -> Target:
    return parse_target({
        "id": "intel/test-gpu", "name": "Intel test GPU", "vendor": "intel", "kind": "gpu",
        "backends": ["openvino"], "precisions": ["fp32", "fp16", "int8"],
        "peak": {"fp32_tflops": 1.0, "memory_bandwidth_gbps": 100.0, "source": "test"},
        "device": {"openvino": {"device": device}},
    }, "test-gpu.toml")


def test_absent_or_unknown_device_is_refused(backend: OpenVINOCompiler, cnn: LoadedModel, tmp_path: Path) -> None:
    gpu = _gpu_target()
    assert backend.supports(gpu)
    if "GPU" in [d.split(".")[0] for d in backend.devices()]:
        pytest.skip("this machine has an OpenVINO GPU device")
    assert not backend.runs_here(gpu)
    with pytest.raises(UnsupportedError, match="not available") as info:
        _compile(backend, cnn, gpu, tmp_path)
    assert info.value.why and info.value.hint
    assert not backend.supports(_gpu_target("TPU"))
    with pytest.raises(UnsupportedError):
        _compile(backend, cnn, _gpu_target("TPU"), tmp_path)


def test_unknown_option_is_refused(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown openvino option 'turbo'"):
        _compile(backend, cnn, host, tmp_path, turbo="1")
    with pytest.raises(UserInputError, match="num_streams=many: expected an integer"):
        _compile(backend, cnn, host, tmp_path, num_streams="many")
    with pytest.raises(UserInputError, match="expected >= 1"):
        _compile(backend, cnn, host, tmp_path, num_streams="0")


def test_options_are_applied_and_read_back(backend: OpenVINOCompiler, host: Target, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save_model(make_mlp(), str(path))
    model = load_model(path)
    artifact = _compile(backend, model, host, tmp_path / "out", performance_hint="throughput", num_streams="1",
                        num_threads="1")
    assert artifact.options["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert artifact.options["NUM_STREAMS"] == "1" and artifact.options["INFERENCE_NUM_THREADS"] == "1"
    read_back = artifact.metadata["read_back"]
    assert read_back["NUM_STREAMS"] == 1 and read_back["INFERENCE_NUM_THREADS"] == 1
    assert read_back["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert not any("applied" in note for note in artifact.notes)
    # One thread cannot feed two streams: what OpenVINO really applied is read back and noted.
    squeezed = _compile(backend, model, host, tmp_path / "squeezed", num_streams="2", num_threads="1")
    assert squeezed.metadata["read_back"]["NUM_STREAMS"] == 1
    assert any("NUM_STREAMS=2, it applied 1" in note for note in squeezed.notes)
    with backend.load(artifact, tmp_path / "out", host) as runner:
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        x = np.ones((1, 32), np.float32)
        assert runner.run({"x": x})["logits"].shape == (1, 10)


def test_pinning_knob_is_applied_and_read_back(backend: OpenVINOCompiler, host: Target, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save_model(make_mlp(), str(path))
    artifact = _compile(backend, load_model(path), host, tmp_path / "out", pinning="off")
    assert artifact.options["ENABLE_CPU_PINNING"] == "NO"
    assert artifact.metadata["read_back"]["ENABLE_CPU_PINNING"] is False
    with backend.load(artifact, tmp_path / "out", host) as runner:
        assert runner.compiled.get_property("ENABLE_CPU_PINNING") is False


def test_bind_throughput_and_layers(backend: OpenVINOCompiler, host: Target, fp32: tuple[Artifact, Path],
                                    images: np.ndarray) -> None:
    feeds = {"input": images[:1]}
    with backend.load(*fp32, host) as runner:
        call = runner.bind(feeds)
        for _ in range(3):
            call()
        per_second, jobs = runner.parallel_throughput(feeds, 0.2)
        assert per_second > 0 and jobs >= 1
        layers = runner.layer_profile(feeds)
    assert layers and all(layer.time_ms >= 0 for layer in layers)
    assert [layer.time_ms for layer in layers] == sorted((layer.time_ms for layer in layers), reverse=True)
    assert any(layer.op_type == "Convolution" for layer in layers)
    assert all(layer.exec_type for layer in layers)


def test_unsupported_ops_names_custom_domain_nodes(backend: OpenVINOCompiler, cnn: LoadedModel, host: Target,
                                                   tmp_path: Path) -> None:
    assert backend.unsupported_ops(cnn, host) == {}
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"),
             helper.make_node("Frobnicate", ["y"], ["z"], domain="com.example", name="frob_1"),
             helper.make_node("Relu", ["z"], ["w"], name="relu2")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    proto.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save_model(proto, str(path))
    model = load_model(path, check=False)
    assert backend.unsupported_ops(model, host) == {"com.example.Frobnicate": ["frob_1"]}


def test_unsupported_ops_looks_inside_if_branches(backend: OpenVINOCompiler, host: Target, tmp_path: Path) -> None:
    out = helper.make_tensor_value_info
    then_branch = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["t"], domain="com.example", name="inner")],
                                    "then", [], [out("t", TensorProto.FLOAT, [1, 4])])
    else_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="relu")], "else", [],
                                    [out("e", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch,
                                                name="branch")], "branchy",
                              [out("x", TensorProto.FLOAT, [1, 4]), out("c", TensorProto.BOOL, [])],
                              [out("y", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    proto.ir_version = 8
    path = tmp_path / "branchy.onnx"
    onnx.save_model(proto, str(path))
    assert backend.unsupported_ops(load_model(path, check=False), host) == {"com.example.Frobnicate": ["inner"]}


def test_registered_and_lists_devices(backend: OpenVINOCompiler, host: Target) -> None:
    from onnxsmith.registry import get_backend

    assert isinstance(get_backend("openvino"), OpenVINOCompiler)
    assert "CPU" in backend.devices()
    assert backend.supports(host) and backend.runs_here(host)
    assert {"fp32", "int8"} <= set(backend.precisions(host))
    arm = parse_target({"id": "arm/test", "name": "ARM", "vendor": "arm", "kind": "cpu", "backends": ["tvm"],
                        "precisions": ["fp32"], "requires": {"arch": "aarch64"},
                        "peak": {"fp32_tflops": 1.0, "memory_bandwidth_gbps": 10.0, "source": "test"}}, "arm.toml")
    assert not backend.supports(arm)


def test_a_bundle_survives_an_openvino_upgrade_not_a_downgrade(tmp_path: Path) -> None:
    """The IR is read by later OpenVINO releases: a bundle built by an older one loads (its IR compiled here, the
    version-specific blob skipped, said in a note); one built by a newer release is refused in one line."""
    import json

    from onnxsmith.bundle import Bundle
    from onnxsmith.build.compile import compile_model
    from onnxsmith.errors import BundleError
    from onnxsmith.model import load_model
    from onnxsmith.profiles import load_profile
    from tests.models import make_cnn

    onnx.save_model(make_cnn(), str(tmp_path / "cnn.onnx"))
    compile_model(load_model(tmp_path / "cnn.onnx"), load_target("host"), profile=load_profile("quick"),
                  output=tmp_path / "b", backend="openvino")
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    feed = {"input": np.zeros((1, 3, 16, 16), np.float32)}
    with Bundle.open(tmp_path / "b").load_runner() as runner:
        expected = next(iter(runner.run(feed).values()))
    for built, loads in (("2024.0.0-14509-34caeefd078", True), ("2099.1.0-1-abc", False)):
        manifest["backend_version"] = built
        manifest["artifact"]["backend_version"] = built
        manifest_path.write_text(json.dumps(manifest))
        bundle = Bundle.open(tmp_path / "b", verify=False)  # the edit breaks the seal: the version is what is tested
        if loads:
            with bundle.load_runner() as runner:
                np.testing.assert_allclose(next(iter(runner.run(feed).values())), expected, rtol=1e-5, atol=1e-6)
                assert any("compiled the IR here instead of importing the blob" in n for n in runner.notes)
        else:
            with pytest.raises(BundleError, match="was built with openvino 2099.1.0"):
                bundle.load_runner()
