"""TVM backend: host builds checked against ONNX Runtime, aarch64 cross builds run under qemu over RPC, CUDA
builds, MetaSchedule with a tiny budget, RPC, targets and option errors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxsmith.errors import BackendError, TargetError, UnsupportedError, UserInputError
from onnxsmith.model import LoadedModel, load_model
from onnxsmith.build.compile import checked_request
from onnxsmith.plugin import Artifact, CompileRequest
from onnxsmith.profiles import load_profile
from onnxsmith.targets import Target, load_target, parse_target
from tests.models import cosine, make_cnn, make_mlp, ort_reference

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'onnxsmith[tvm]')")

from onnxsmith.compilers.tvm import TVMCompiler  # noqa: E402
from onnxsmith.compilers.tvm.backend import elf_arch, read_io  # noqa: E402
from onnxsmith.compilers.tvm.targets import host_cpu, tvm_target  # noqa: E402

PEAK = {"fp32_tflops": 1.0, "memory_bandwidth_gbps": 10.0, "source": "test"}
PI5 = {"id": "test/pi5", "name": "Raspberry Pi 5 (test)", "vendor": "arm", "kind": "cpu", "backends": ["tvm"],
       "precisions": ["fp32"], "peak": PEAK, "requires": {"arch": "aarch64", "os": "linux"},
       "device": {"tvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"],
                          "num-cores": 4, "cc": "aarch64-linux-gnu-gcc"}}}
H100 = {"id": "test/h100", "name": "H100 (test)", "vendor": "nvidia", "kind": "gpu", "backends": ["tvm"],
        "precisions": ["fp32", "fp16"], "peak": PEAK, "requires": {"os": "linux", "gpu": "H100"},
        "device": {"tvm": {"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024,
                           "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
                           "registers_per_block": 65536}}}


@pytest.fixture(scope="module")
def backend() -> TVMCompiler:
    backend = TVMCompiler()
    backend.check_environment()  # imports TVM once for the module (about 3 s)
    return backend


@pytest.fixture(scope="module")
def host() -> Target:
    return load_target("host")


def _save(proto: onnx.ModelProto, directory: Path, name: str) -> Path:
    path = directory / f"{name}.onnx"
    onnx.save_model(proto, str(path))
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(_save(make_cnn(), tmp_path_factory.mktemp("cnn"), "cnn"))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)


def make_encoder(directory: Path, layers: int = 2, d: int = 64, heads: int = 4, seq: int = 16,
                 vocab: int = 100) -> Path:
    """A BERT-style encoder exported by torch (TorchScript exporter, dynamic batch and sequence)."""
    torch = pytest.importorskip("torch")
    torch.backends.mha.set_fastpath_enabled(False)
    torch.manual_seed(0)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, d)
            self.position = torch.nn.Parameter(torch.randn(1, seq, d) * 0.02)
            layer = torch.nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                                     activation="gelu")
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(d)
            with torch.no_grad():  # the layers are deep copies of one: give each its own weights (the exporter
                for param in self.encoder.parameters():  # would store identical ones once)
                    param.add_(torch.randn_like(param) * 0.02)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids) + self.position
            return self.norm(self.encoder(x, src_key_padding_mask=mask == 0))

    path = directory / f"encoder_{layers}x{d}.onnx"
    ids, mask = torch.randint(0, vocab, (1, seq)), torch.ones(1, seq, dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript tracer's warnings about shape checks
        torch.onnx.export(Encoder().eval(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return path


def _compile(backend: TVMCompiler, model: LoadedModel, target: Target, workdir: Path, precision: str = "fp32",
             **options: str) -> Artifact:
    workdir.mkdir(parents=True, exist_ok=True)
    request = CompileRequest(model=model, target=target, precision=precision, profile=load_profile("quick"),
                             options=options)
    return backend.compile(checked_request(backend, request), workdir)


@pytest.fixture(scope="module")
def cnn_host(backend: TVMCompiler, cnn: LoadedModel, host: Target,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    workdir = tmp_path_factory.mktemp("cnn-host")
    return _compile(backend, cnn, host, workdir), workdir


# --- targets -------------------------------------------------------------------------------------------------


def test_host_target_names_the_real_cpu(host: Target) -> None:
    tt = tvm_target(host)
    name, masked = host_cpu()
    assert tt.spec["mcpu"] == name == str(tvm.target.codegen.llvm_get_system_cpu())
    assert name not in ("native", "generic")
    assert tt.spec["num-cores"] == host.cores and not tt.cross and tt.cc is None
    from onnxsmith.targets.host import cpu_flags

    flags = {f.replace("_", "") for f in cpu_flags()}
    for feature in masked:  # only features this CPU does not report are switched off
        assert feature.replace("-", "").replace(".", "") not in flags
        assert f"-{feature}" in tt.spec["mattr"]


def test_catalogue_style_targets_map_to_tvm_dicts() -> None:
    pi = tvm_target(parse_target(PI5, "test"))
    assert pi.spec == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"],
                       "num-cores": 4}
    assert pi.cross and pi.arch == "aarch64" and pi.cc == "aarch64-linux-gnu-gcc"
    assert "arm_cpu" in pi.canonical()
    gpu = tvm_target(parse_target(H100, "test"))
    assert gpu.kind == "cuda" and gpu.spec["arch"] == "sm_90" and gpu.spec["host"] == {"kind": "llvm"}


def test_bad_target_keys_name_the_key() -> None:
    bad = {**PI5, "device": {"tvm": {"kind": "llvm", "mcpus": "cortex-a76"}}}
    with pytest.raises(TargetError, match="mcpus"):
        tvm_target(parse_target(bad, "test"))
    no_arch = {**H100, "device": {"tvm": {"kind": "cuda"}}}
    with pytest.raises(TargetError, match="arch"):
        tvm_target(parse_target(no_arch, "test"))


# --- import path ---------------------------------------------------------------------------------------------


def test_unsupported_ops_name_the_op_and_node(backend: TVMCompiler, host: Target, tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("FusedMatMul", ["r", "r"], ["m"], name="fused_mm", domain="com.microsoft"),
             helper.make_node("Add", ["m", "r"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = load_model(_save(proto, tmp_path, "custom"), check=False)
    assert backend.unsupported_ops(model, host) == {"com.microsoft.FusedMatMul": ["fused_mm"]}
    with pytest.raises(UnsupportedError, match="FusedMatMul.*fused_mm"):
        _compile(backend, model, host, tmp_path / "out")
    assert backend.unsupported_ops(load_model(_save(make_mlp(), tmp_path, "mlp")), host) == {}


# --- host CPU ------------------------------------------------------------------------------------------------


def test_cnn_fp32_matches_onnxruntime_and_is_marked_untuned(backend: TVMCompiler, cnn: LoadedModel, host: Target,
                                                           cnn_host: tuple[Artifact, Path],
                                                           images: np.ndarray) -> None:
    artifact, workdir = cnn_host
    assert artifact.files[:2] == ("model.so", "io.json") and elf_arch(workdir / "model.so") == tvm_target(host).arch
    assert artifact.precision_used == "fp32" and artifact.device == "llvm"
    meta = artifact.metadata
    assert meta["tuning"] == "untuned" and meta["tvm_version"] == tvm.__version__
    assert meta["target"]["mcpu"] == tvm_target(host).spec["mcpu"] and meta["target_canonical"]["kind"] == "llvm"
    assert any("--option tune=1" in note for note in artifact.notes)
    io = read_io(workdir)
    assert [s["name"] for s in io["inputs"]] == ["input"] and io["outputs"][0]["shape"] == [1, 10]
    with backend.load(artifact, workdir, host) as runner:
        assert [s.name for s in runner.inputs] == ["input"] and [s.name for s in runner.outputs] == ["probs"]
        out = runner.run({"input": images})["probs"]
        np.testing.assert_allclose(out, ort_reference(cnn, {"input": images})["probs"], rtol=1e-5, atol=1e-6)
        call = runner.bind({"input": images})
        for _ in range(3):
            call()
        layers = runner.layer_profile({"input": images})
    kernels = [layer for layer in layers if layer.exec_type.startswith("llvm")]
    assert kernels and all(layer.time_ms >= 0 for layer in layers)
    assert any("conv2d" in layer.op_type for layer in kernels)


def test_small_encoder_export_validates(backend: TVMCompiler, host: Target, tmp_path: Path) -> None:
    model = load_model(make_encoder(tmp_path), {"input_ids": (1, 16), "attention_mask": (1, 16)})
    artifact = _compile(backend, model, host, tmp_path / "out")
    assert artifact.metadata["onnxslim"] and artifact.metadata["onnx_nodes_after_slim"] < artifact.metadata["onnx_nodes"]
    rng = np.random.default_rng(0)
    mask = np.ones((1, 16), np.int64)
    mask[0, 12:] = 0
    feeds = {"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int64), "attention_mask": mask}
    with backend.load(artifact, tmp_path / "out", host) as runner:
        out = runner.run(feeds)["hidden"]
    assert cosine(out, ort_reference(model, feeds)["hidden"]) >= 0.9999


def test_options_are_checked(backend: TVMCompiler, cnn: LoadedModel, host: Target, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown tvm option 'mcpu'"):
        _compile(backend, cnn, host, tmp_path / "a", mcpu="znver4")
    with pytest.raises(UserInputError, match="tune=1"):
        _compile(backend, cnn, host, tmp_path / "b", tune_trials="8")
    with pytest.raises(UserInputError, match="tune_minutes"):
        _compile(backend, cnn, host, tmp_path / "c", tune="1", tune_minutes="soon")
    with pytest.raises(UserInputError, match="tuning options given without --option tune=1"):
        _compile(backend, cnn, host, tmp_path / "e", tune_more="1")
    with pytest.raises(UserInputError, match="invalid tvm --option tune_more=again"):
        _compile(backend, cnn, host, tmp_path / "f", tune="1", tune_more="again")
    with pytest.raises(UnsupportedError, match="fp16"):
        _compile(backend, cnn, host, tmp_path / "d", precision="fp16")


# --- aarch64 -------------------------------------------------------------------------------------------------

needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                 reason="gcc-aarch64-linux-gnu is not installed (make system-deps)")


@pytest.fixture(scope="module")
def cnn_pi(backend: TVMCompiler, cnn: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("gcc-aarch64-linux-gnu is not installed (make system-deps)")
    workdir = tmp_path_factory.mktemp("cnn-pi")
    return _compile(backend, cnn, load_target("arm/raspberry-pi-5"), workdir), workdir


@needs_cross
def test_aarch64_cross_build_is_an_aarch64_shared_object(backend: TVMCompiler, cnn_pi: tuple[Artifact, Path]) -> None:
    artifact, workdir = cnn_pi
    with open(workdir / "model.so", "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and head[4] == 2 and head[16] == 3  # 64-bit, ET_DYN
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    assert artifact.metadata["library_arch"] == "aarch64" and artifact.metadata["cross_compiled"]
    assert artifact.metadata["target_canonical"]["mcpu"] == "cortex-a76"
    pi = load_target("arm/raspberry-pi-5")
    assert not backend.runs_here(pi)
    with pytest.raises(UnsupportedError, match="aarch64"):
        backend.load(artifact, workdir, pi)
    with pytest.raises(UnsupportedError, match="cannot tune"):
        _compile(backend, load_model(_save(make_cnn(), workdir, "again")), pi, workdir / "tuned", tune="1")


@needs_cross
def test_aarch64_artifact_runs_under_qemu_over_rpc(backend: TVMCompiler, cnn: LoadedModel,
                                                   cnn_pi: tuple[Artifact, Path], images: np.ndarray) -> None:
    from onnxsmith.compilers.tvm import emulate

    if emulate.missing():
        pytest.skip(emulate.missing())
    artifact, workdir = cnn_pi
    with emulate.emulated_server() as address:
        with backend.load_remote(artifact, workdir, load_target("arm/raspberry-pi-5"), address) as runner:
            out = runner.run({"input": images})["probs"]
            runner.bind({"input": images})()
            assert len(runner.device_latencies_ms({"input": images}, 2)) == 2
    np.testing.assert_allclose(out, ort_reference(cnn, {"input": images})["probs"], rtol=1e-5, atol=1e-6)


@needs_cross
def test_cli_compiles_for_raspberry_pi_5_and_profiles_it_under_qemu(cnn: LoadedModel, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The user's path: `compile --target arm/raspberry-pi-5` (TVM first) -> bundle -> `profile --rpc` on an
    emulated arm64 device, with the ONNX Runtime baseline measured on this machine."""
    import json

    from onnxsmith.compilers.tvm import emulate
    from tests.cli.test_cli import cli

    bundle = tmp_path / "pi5"

    def ok(args: list[str]) -> str:
        code, out, err = cli(args, capsys)
        assert code == 0, err
        return out

    compiled = json.loads(ok(["compile", str(cnn.path), "--target", "arm/raspberry-pi-5", "-o", str(bundle),
                              "--json"]))
    assert compiled["backend"] == "tvm" and compiled["artifact"]["metadata"]["library_arch"] == "aarch64"
    assert compiled["runs_here"]["ok"] is False and compiled["target"] == "arm/raspberry-pi-5"
    if emulate.missing():
        pytest.skip(emulate.missing())
    with emulate.emulated_server() as address:
        record = json.loads(ok(["profile", str(bundle), "--rpc", address, "-p", "quick", "--json"]))
    assert record["latency_ms"]["p50"] > 0 and record["baseline"]["latency_ms"]["p50"] > 0
    # timed on the device by TVM's time evaluator; the RPC round trip (network included) is reported beside it
    assert record["rpc_round_trip_ms"]["p50"] > 0 and record["remote"] == address


# --- RPC on this machine -------------------------------------------------------------------------------------


def test_remote_run_over_a_local_rpc_server(backend: TVMCompiler, cnn: LoadedModel, host: Target,
                                            cnn_host: tuple[Artifact, Path], images: np.ndarray) -> None:
    from tvm import rpc

    server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, silent=True)
    try:
        artifact, workdir = cnn_host
        with backend.load_remote(artifact, workdir, host, f"127.0.0.1:{server.port}") as runner:
            out = runner.run({"input": images})["probs"]
            call = runner.bind({"input": images})
            call()
            assert "RPC" in runner.device_name
    finally:
        server.terminate()
    np.testing.assert_allclose(out, ort_reference(cnn, {"input": images})["probs"], rtol=1e-5, atol=1e-6)
    with pytest.raises(UserInputError, match="HOST:PORT"):
        backend.load_remote(artifact, workdir, host, "nowhere")


# --- CUDA ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_cuda(backend: TVMCompiler, cnn: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Path]:
    from onnxsmith.errors import BackendError

    workdir = tmp_path_factory.mktemp("cnn-cuda")
    try:
        return _compile(backend, cnn, parse_target(H100, "test"), workdir, precision="fp16"), workdir
    except BackendError as exc:
        if "CUDA" in exc.hint:
            pytest.skip(f"no CUDA compiler here: {exc.why}")
        raise


def test_cuda_build_uses_dlight_and_fp16(backend: TVMCompiler, cnn_cuda: tuple[Artifact, Path]) -> None:
    artifact, workdir = cnn_cuda
    assert artifact.device == "cuda" and artifact.precision_used == "fp16"
    assert artifact.metadata["fp16_ops"] == artifact.metadata["compute_ops"] == 3
    assert artifact.metadata["schedules"].startswith("dlight") and read_io(workdir)["device"] == "cuda"
    assert "kernels.cu" in artifact.files
    kernels = (workdir / "kernels.cu").read_text()
    assert kernels.count("__global__") >= 3 and "half" in kernels  # the CUDA kernels, in fp16
    from onnxsmith.compilers.tvm.cuda import find_nvcc

    assert artifact.metadata["cuda_kernels_checked"] == ("nvcc -arch=sm_90" if find_nvcc() else False)


@pytest.mark.gpu
def test_cuda_artifact_runs_on_the_gpu(backend: TVMCompiler, cnn: LoadedModel, cnn_cuda: tuple[Artifact, Path],
                                       images: np.ndarray) -> None:
    target = parse_target({**H100, "requires": {"os": "linux"}}, "test")
    if not backend.runs_here(target):
        pytest.skip(backend.runs_here(target).reason)
    artifact, workdir = cnn_cuda
    with backend.load(artifact, workdir, target) as runner:
        out = runner.run({"input": images})["probs"]
    assert cosine(out, ort_reference(cnn, {"input": images})["probs"]) >= 0.999


# --- MetaSchedule --------------------------------------------------------------------------------------------


def test_tuning_with_a_tiny_budget_records_and_reuses(backend: TVMCompiler, host: Target, tmp_path: Path,
                                                      _isolated_cache: Path) -> None:
    from onnxsmith.compilers.tvm.common import ffi_version

    if ffi_version() not in ("", "0.1.14.post1"):
        pytest.skip(f"apache-tvm-ffi {ffi_version()}: MetaSchedule needs 0.1.14.post1")
    model = load_model(_save(make_mlp(hidden=32), tmp_path, "mlp"))
    tuned = {"tune": "1", "tune_trials": "6", "tune_trials_per_task": "2"}
    token_before = backend.cache_token(host, tuned)
    assert backend.cache_token(host, {}) == ""  # untuned artifacts do not depend on the database
    first = _compile(backend, model, host, tmp_path / "first", **tuned)
    meta = first.metadata
    # the compile cache key follows the database: a compile after tuning is not served a stale artifact
    assert backend.cache_token(host, tuned) != token_before
    assert meta["tuning"] in ("tuned", "partially tuned"), first.notes
    assert meta["tuning_trials"] >= 1 and meta["tuning_tasks_with_records"] >= 1
    assert Path(meta["tuning_database"]).parent == _isolated_cache / "tvm-tuning"
    assert len(meta["tuning_records_sha256"]) == 16 and "tuning_records.json" in first.files
    x = np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32)
    with backend.load(first, tmp_path / "first", host) as runner:
        np.testing.assert_allclose(runner.run({"x": x})["logits"], ort_reference(model, {"x": x})["logits"], rtol=1e-4,
                                   atol=1e-5)
    second = _compile(backend, model, host, tmp_path / "second", tune="1", tune_trials="6", tune_trials_per_task="2")
    if meta["tuning"] == "tuned":  # every kernel has a record: nothing left to tune, the same records apply
        assert second.metadata["tuning_trials"] == 0
        assert second.metadata["tuning_records_sha256"] == meta["tuning_records_sha256"]
        assert any("reused tuning records" in note for note in second.notes)
    # tune_more searches the kernels that have records again, seeded with them; the cache key follows the database
    more = {**tuned, "tune_more": "1"}
    token_before_more = backend.cache_token(host, more)
    third = _compile(backend, model, host, tmp_path / "third", **more)
    assert third.metadata["tuning_trials"] >= 1, third.notes
    assert third.metadata["tuning_tasks_with_records"] >= meta["tuning_tasks_with_records"]
    assert any("tuned every kernel further" in note for note in third.notes)
    assert backend.cache_token(host, more) != token_before_more  # the next compile is not served the old artifact


@pytest.mark.slow
def test_tuning_stops_at_the_time_budget(backend: TVMCompiler, cnn: LoadedModel, host: Target, tmp_path: Path) -> None:
    import time

    start = time.monotonic()
    artifact = _compile(backend, cnn, host, tmp_path / "out", tune="1", tune_trials="1000", tune_minutes="0.01")
    assert time.monotonic() - start < 120  # candidate generation only: every batch after the deadline is skipped
    assert artifact.metadata["tuning"] == "untuned" and artifact.metadata["tuning_trials"] == 0
    assert any("without a measured schedule" in note for note in artifact.notes)


# --- acceptance-sized (slow) ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_bert_base_encoder_validates(backend: TVMCompiler, host: Target, tmp_path: Path) -> None:
    model = load_model(make_encoder(tmp_path, layers=12, d=768, heads=12, seq=128, vocab=30522),
                       {"input_ids": (1, 128), "attention_mask": (1, 128)})
    artifact = _compile(backend, model, host, tmp_path / "out")
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30522, (1, 128)).astype(np.int64), "attention_mask": np.ones((1, 128), np.int64)}
    with backend.load(artifact, tmp_path / "out", host) as runner:
        out = runner.run(feeds)["hidden"]
    assert cosine(out, ort_reference(model, feeds)["hidden"]) >= 0.9999


def test_a_slimmed_graph_that_does_not_import_falls_back_to_the_original(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """onnxslim can leave a Reshape's shape as Concat arithmetic the frontend refuses (ONNX
    test_spacetodepth_expanded); the original graph imports, so the compile must not fail."""
    from onnx import numpy_helper

    from onnxsmith.compilers.tvm import frontend

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    original = helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y],
        [numpy_helper.from_array(np.array([3, 4], np.int64), "shape")]), opset_imports=[helper.make_opsetid("", 17)])
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in
              (([3, 4], "s"), ([0], "zero"), ([1], "one"), ([2], "two"))]
    half_folded = helper.make_model(helper.make_graph(
        [helper.make_node("Slice", ["s", "zero", "one"], ["a"]), helper.make_node("Slice", ["s", "one", "two"], ["b"]),
         helper.make_node("Concat", ["a", "b"], ["shape"], axis=0), helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g", [x], [y], consts), opset_imports=[helper.make_opsetid("", 17)])
    model = load_model(_save(original, tmp_path, "reshape"))
    with pytest.raises(BackendError):
        frontend._convert(half_folded, {"x": [2, 6]}, {"x": "float32"})
    monkeypatch.setattr(frontend, "slim", lambda m: (half_folded, ()))
    imported = frontend.import_model(model)
    assert not imported.slimmed and any("did not import" in note for note in imported.notes)
