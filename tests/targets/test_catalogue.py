"""The hardware catalogue (targets/<vendor>/<device>.toml): every file valid, consistent, usable by its backends."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

import pytest

from onnxsmith.errors import TargetError
from onnxsmith.registry import backend_names
from onnxsmith.targets import PRECISIONS, Target, catalogue_files, list_targets, load_target
from onnxsmith.targets.host import cpu_flags, detect_host
from onnxsmith.tomlutil import read_toml

REQUIRED = {
    "intel/xeon-sapphire-rapids", "intel/core-ultra-cpu", "intel/core-ultra-gpu", "intel/core-ultra-npu",
    "nvidia/h100", "nvidia/a100", "nvidia/l4", "nvidia/jetson-orin",
    "apple/m3", "apple/iphone", "arm/raspberry-pi-5", "arm/graviton3", "generic/x86-64",
}
FILES = catalogue_files()
TARGETS = {tid: load_target(tid) for tid in FILES}
LLVM_TRIPLES = {"x86_64": "x86_64", "aarch64": "aarch64"}


def _ids(kind: str | None = None, backend: str | None = None) -> list[str]:
    return sorted(tid for tid, t in TARGETS.items()
                  if (kind is None or t.kind == kind) and (backend is None or backend in t.backends))


# ---- every shipped file -------------------------------------------------------------------------------------------


def test_catalogue_has_the_devices_we_document() -> None:
    assert REQUIRED <= set(FILES), f"missing: {sorted(REQUIRED - set(FILES))}"


def test_ids_are_unique_and_match_paths() -> None:
    targets = list_targets()
    ids = [t.id for t in targets]
    assert len(ids) == len(set(ids)) and ids[0] == "host"
    for tid, path in FILES.items():
        target = TARGETS[tid]
        assert target.id == tid == f"{path.parent.name}/{path.stem}"
        assert target.vendor == path.parent.name
        assert Path(target.source_file) == path
        assert not target.detected


@pytest.mark.parametrize("tid", sorted(FILES))
def test_target_is_complete(tid: str) -> None:
    t = TARGETS[tid]
    assert t.name and t.description and t.kind
    assert t.backends and len(set(t.backends)) == len(t.backends)
    assert t.precisions and len(set(t.precisions)) == len(t.precisions)
    for precision in t.precisions:
        peak = t.peak.for_precision(precision)
        assert peak is not None and peak > 0, f"{tid}: no peak for listed precision {precision}"
    assert set(t.peak.tflops) == set(t.precisions), f"{tid}: peaks for precisions it does not list"
    # Everything computes fp32 except NPUs, which compute fp16/int8 only (fp32 models run there in fp16).
    assert ("fp32" in t.precisions) == (t.kind != "npu")
    assert t.peak.memory_bandwidth_gbps > 0
    source = t.peak.source.lower()
    assert len(source) > 30 and ("datasheet" in source or "estimated" in source or "announcement" in source
                                 or "brief" in source), f"{tid}: peak.source must name where the figures come from"
    # Device options exist only for backends the target lists.
    assert set(t.device_options) <= set(t.backends), f"{tid}: [device.X] tables for unlisted backends"
    assert t.cores >= 0


@pytest.mark.parametrize("tid", sorted(FILES))
def test_peaks_are_ordered_sensibly(tid: str) -> None:
    """Lower precision never has a lower peak than fp32 on the same target (a typo check on the figures)."""
    t = TARGETS[tid]
    fp32 = t.peak.tflops.get("fp32")
    for precision in ("bf16", "fp16", "int8"):
        if fp32 is not None and precision in t.peak.tflops:
            assert t.peak.tflops[precision] >= fp32, f"{tid}: {precision} peak below fp32"
    if "fp16" in t.peak.tflops and "int8" in t.peak.tflops:
        assert t.peak.tflops["int8"] >= t.peak.tflops["fp16"]


def test_cpu_targets_state_their_isa() -> None:
    for tid in _ids("cpu"):
        t = TARGETS[tid]
        assert t.requires.arch in ("x86_64", "aarch64"), tid
        assert t.requires.cpu_flags, f"{tid}: a CPU target names the ISA features its code may use"
        tvm = t.options_for("tvm")
        if tvm:
            assert tvm["kind"] == "llvm" and tvm["mtriple"].startswith(LLVM_TRIPLES[t.requires.arch]), tid
            if t.cores:
                assert tvm.get("num-cores") == t.cores, tid
        if "openvino" in t.backends:
            assert t.requires.arch == "x86_64" and t.options_for("openvino").get("device") == "CPU", tid


def test_nvidia_targets_agree_between_backends() -> None:
    """TensorRT's compute capability, TVM's sm_XY and the GPU name requirement describe the same GPU."""
    for tid in sorted(t for t in TARGETS if t.startswith("nvidia/")):
        t = TARGETS[tid]
        assert t.kind == "gpu" and t.backends[0] == "tensorrt" and t.requires.gpu, tid
        capability = t.options_for("tensorrt")["compute_capability"]
        tvm = t.options_for("tvm")
        assert tvm["kind"] == "cuda" and tvm["arch"] == "sm_" + capability.replace(".", ""), tid
        for key in ("max_threads_per_block", "max_shared_memory_per_block", "thread_warp_size"):
            assert isinstance(tvm[key], int) and tvm[key] > 0, (tid, key)
        assert "CUDAExecutionProvider" in t.options_for("onnxruntime")["providers"], tid


def test_intel_accelerators_name_their_openvino_device() -> None:
    assert TARGETS["intel/core-ultra-gpu"].options_for("openvino")["device"] == "GPU"
    assert TARGETS["intel/core-ultra-npu"].options_for("openvino")["device"] == "NPU"
    assert TARGETS["intel/core-ultra-npu"].kind == "npu" and TARGETS["intel/core-ultra-gpu"].kind == "gpu"
    spr = TARGETS["intel/xeon-sapphire-rapids"]
    assert {"amx_bf16", "amx_int8"} <= set(spr.requires.cpu_flags) and "bf16" in spr.precisions


def test_target_fingerprints_differ() -> None:
    prints = {t.fingerprint() for t in TARGETS.values()}
    assert len(prints) == len(TARGETS)
    assert TARGETS["nvidia/h100"].fingerprint() == load_target("nvidia/h100").fingerprint()


# ---- the backends accept each target's [device.<backend>] table ---------------------------------------------------


@pytest.mark.parametrize("tid", sorted(FILES))
def test_listed_backends_support_the_target(tid: str) -> None:
    """Each backend a target lists loads (plugins import no vendor library) and says it can compile for it."""
    from onnxsmith.registry import get_backend

    t = TARGETS[tid]
    for name in t.backends:
        support = get_backend(name).supports(t)
        assert support, f"{tid}: backend {name} refuses it: {support.reason}"


def test_tensorrt_and_coreml_accept_the_device_tables() -> None:
    if importlib.util.find_spec("onnxsmith.compilers.tensorrt.options") is not None:
        from onnxsmith.compilers.tensorrt.options import parse_options as tensorrt_options

        for tid in _ids(backend="tensorrt"):
            opts = tensorrt_options({}, TARGETS[tid].options_for("tensorrt"), TARGETS[tid].source_file)
            assert opts.compute_capability and opts.workspace_mb, tid
    try:
        from onnxsmith.compilers.coreml.options import parse_options as coreml_options
    except ImportError:
        return
    for tid in _ids(backend="coreml"):
        opts = coreml_options({}, TARGETS[tid].options_for("coreml"), TARGETS[tid].source_file)
        assert opts.compute_units in ("all", "cpu_and_ne") and opts.minimum_deployment_target in ("macos14", "ios17")


def test_onnxruntime_providers_exist() -> None:
    ort = pytest.importorskip("onnxruntime")
    known = set(ort.get_all_providers())
    for tid in _ids(backend="onnxruntime"):
        providers = TARGETS[tid].options_for("onnxruntime")["providers"]
        assert providers and set(providers) <= known, (tid, providers)
        assert providers[-1] == "CPUExecutionProvider", tid


def test_tvm_builds_every_target() -> None:
    """``[device.tvm]`` without ``cc`` is a TVM target dict; LLVM knows every mcpu named."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed")
    import tvm
    from tvm.target import codegen

    def check_llvm(options: dict[str, object], tid: str) -> None:
        valid = set(codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": options["mtriple"]})))
        assert options["mcpu"] in valid, f"{tid}: LLVM does not know mcpu {options['mcpu']}"

    for tid in _ids(backend="tvm"):
        options = {k: v for k, v in TARGETS[tid].options_for("tvm").items() if k != "cc"}
        target = tvm.target.Target(options)
        assert target.kind.name == options["kind"], tid
        if options["kind"] == "llvm":
            check_llvm(options, tid)
        else:
            assert str(target.attrs["arch"]) == options["arch"], tid
            if "host" in options:
                assert target.host is not None and target.host.kind.name == "llvm", tid
                check_llvm(options["host"], tid)


def test_openvino_device_names_are_valid() -> None:
    from onnxsmith.compilers.openvino.common import valid_device_name

    for tid in _ids(backend="openvino"):
        assert valid_device_name(TARGETS[tid].options_for("openvino")["device"]), tid


# ---- lookup errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "close"), [("nvidia/h10", "nvidia/h100"), ("jetson", "nvidia/jetson-orin"),
                                             ("intel/xeon-sapphire-rapid", "intel/xeon-sapphire-rapids")])
def test_unknown_id_names_close_ids(spec: str, close: str) -> None:
    with pytest.raises(TargetError, match=rf"unknown target '{spec}'.*{close}") as info:
        load_target(spec)
    assert "onnxsmith targets" in str(info.value)


def _user_file(tmp_path: Path, **overrides: str) -> Path:
    """A user's target file: a copy of generic/x86-64 with lines replaced (key = raw TOML value)."""
    text = FILES["generic/x86-64"].read_text()
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {overrides.pop(key)}" if key in overrides and "=" in line else line)
    extra = [f"{k} = {v}" for k, v in overrides.items()]  # new top-level keys go before the first [table]
    path = tmp_path / "my-board.toml"
    path.write_text("\n".join(extra + lines) + "\n")
    return path


def test_user_file_loads(tmp_path: Path) -> None:
    path = _user_file(tmp_path, id='"me/my-board"', cores="6")
    target = load_target(str(path))
    assert target.id == "me/my-board" and target.cores == 6 and target.source_file == str(path)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"kind": '"tpu"'}, "kind"),
    ({"backends": '["tensorrt", "onnx"]'}, "backends"),
    ({"precisions": '["fp32", "fp64"]'}, "precisions"),
    ({"fp32_tflops": "-1.0"}, "peak.fp32_tflops"),
    ({"fp32_tflops": '"fast"'}, "peak.fp32_tflops"),
    ({"memory_bandwidth_gbps": "true"}, "peak.memory_bandwidth_gbps"),
    ({"arch": '"riscv64"'}, "requires.arch"),
    ({"cores": '"eight"'}, "cores"),
    ({"vendr": '"me"'}, "vendr"),
])
def test_malformed_user_file_names_file_and_key(tmp_path: Path, overrides: dict[str, str], key: str) -> None:
    path = _user_file(tmp_path, **overrides)
    with pytest.raises(TargetError, match=rf"my-board\.toml.*key '{key}'"):
        load_target(str(path))


def test_malformed_tables_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    base = FILES["generic/x86-64"].read_text()
    path.write_text(base + "\n[device.cuda]\narch = \"sm_90\"\n")
    with pytest.raises(TargetError, match=r"bad\.toml.*'device\.cuda' names no installed backend"):
        load_target(str(path))
    path.write_text(base.replace("[peak]", "[peak]\nfp64_tflops = 1.0"))
    with pytest.raises(TargetError, match=r"bad\.toml.*'peak\.fp64_tflops' is not known"):
        load_target(str(path))
    path.write_text(base.replace('id = "generic/x86-64"\n', ""))
    with pytest.raises(TargetError, match=r"bad\.toml.*'id' is required"):
        load_target(str(path))
    path.write_text(base.replace("[peak]", "[peak"))
    with pytest.raises(TargetError, match=r"cannot read .*bad\.toml: invalid TOML"):
        load_target(str(path))


def test_catalogue_file_with_wrong_id_is_refused() -> None:
    from onnxsmith.targets import parse_target

    path = FILES["nvidia/l4"]
    with pytest.raises(TargetError, match=r"l4\.toml.*'id' is 'nvidia/l4' but .* makes it 'nvidia/l40'"):
        parse_target(read_toml(path), path, "nvidia/l40")


# ---- host detection -----------------------------------------------------------------------------------------------


def test_host_detection_is_sane() -> None:
    host = detect_host()
    assert isinstance(host, Target) and host.id == "host" and host.detected and host.kind == "cpu"
    assert 1 <= host.cores <= (os.cpu_count() or 1)
    machine = platform.machine().lower()
    assert host.requires.arch == {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    assert host.requires.os == platform.system().lower()
    assert set(host.backends) <= set(backend_names()) and set(host.precisions) <= set(PRECISIONS)
    assert host.precisions[0] == "fp32" and "int8" in host.precisions
    for precision in host.precisions:
        assert 0 < host.peak.tflops[precision] < 1000  # one machine's CPUs: well under a PFLOP/s
    assert host.peak.source.startswith("estimated:")
    flags = cpu_flags()
    assert set(host.requires.cpu_flags) <= flags
    assert ("bf16" in host.precisions) == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert host.options_for("tvm")["num-cores"] == host.cores
    assert detect_host() is host  # cached


def test_host_runs_its_own_code_and_matching_catalogue_cpus() -> None:
    from onnxsmith.host import host_matches

    host = detect_host()
    assert host_matches(host)
    generic = TARGETS["generic/x86-64"]
    if host.requires.arch == "x86_64" and set(generic.requires.cpu_flags) <= cpu_flags():
        assert host_matches(generic)
    for tid in _ids("cpu"):
        t = TARGETS[tid]
        if t.requires.arch and t.requires.arch != host.requires.arch:
            support = host_matches(t)
            assert not support and t.requires.arch in support.reason
    for tid in _ids("gpu"):
        if TARGETS[tid].requires.gpu and TARGETS[tid].requires.arch in ("", host.requires.arch):
            assert not host_matches(TARGETS[tid])  # a GPU target is never run as CPU code


def test_host_peaks_count_amx_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AMX CPU's nominal bf16/int8 peaks come from its tile units (1024 bf16 FLOP, 2048 int8 ops per cycle and
    core), not from AVX-512 multiples: probe measured 1.7 TFLOP/s bf16 on 2 AMX cores at 2.6 GHz, 2.5x the AVX-512
    estimate, which made "% of nominal peak" read over 100 %."""
    from onnxsmith.targets import host as hostmod

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 flags")
    base = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}
    peaks = {}
    for name, flags in (("avx512", base), ("amx", base | {"amx_tile", "amx_bf16", "amx_int8"})):
        monkeypatch.setattr(hostmod, "cpu_flags", lambda flags=flags: frozenset(flags))
        hostmod.detect_host.cache_clear()
        peaks[name] = hostmod.detect_host().peak.tflops
    hostmod.detect_host.cache_clear()
    assert peaks["amx"]["fp32"] == peaks["avx512"]["fp32"]  # AMX does no fp32 arithmetic
    assert peaks["amx"]["bf16"] == pytest.approx(peaks["amx"]["fp32"] * 1024 / 64, rel=0.01)
    assert peaks["amx"]["int8"] == pytest.approx(peaks["amx"]["fp32"] * 2048 / 64, rel=0.01)
    assert peaks["avx512"]["bf16"] == pytest.approx(peaks["avx512"]["fp32"] * 2, rel=0.01)
