"""The deployment programs in ``BUNDLE/deploy/``: built and run here where the toolchain is (OpenVINO and TVM C++,
TVM aarch64 C++ cross-compiled and run under qemu, the Python programs), compared with ``onnxsmith run`` (1e-5);
the ones that cannot be built here (ONNX Runtime C++, TensorRT, Core ML) are checked to open the artifact's files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnxsmith
from onnxsmith.cli import cli
from onnxsmith.model import TensorSpec

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits" / "digits_cnn.onnx"
TOLERANCE = 1e-5


def compile_digits(tmp: Path, backend: str, target: str) -> Path:
    out = tmp / f"digits-{backend}-{target.replace('/', '-')}"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS), "--target", target, "--backend", backend, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def onnxsmith_run(bundle: Path, tmp: Path) -> dict[str, np.ndarray]:
    """The outputs of ``onnxsmith run BUNDLE --input deploy/example``."""
    out = tmp / f"{bundle.name}-run.npz"
    result = CliRunner().invoke(cli, ["run", str(bundle), "--input", str(bundle / "deploy" / "example"),
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def programs(bundle: Path) -> dict[str, dict]:
    record = json.loads((bundle / "deploy" / "programs.json").read_text())
    return {p["folder"]: p for p in record["programs"]}


def shell(commands: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    done = subprocess.run(" && ".join(c for c in commands if not c.startswith("#")), shell=True, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{commands}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def python_env() -> dict[str, str]:
    """``python3`` in the README's commands is this interpreter (its venv's wheels: openvino, tvm...)."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def outputs_of(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.load(folder / "out" / f"{n}.npy", allow_pickle=False) for n in names}


def assert_equal_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOLERANCE, err_msg=name)


def build_and_run(bundle: Path, folder: str, extra_build: str = "", wrap_run: str = "") -> dict[str, np.ndarray]:
    """Build the program with the README's commands (plus ``extra_build`` on the configure line) and run it."""
    program = programs(bundle)[folder]
    where = bundle / "deploy" / folder
    build = [c + (f" {extra_build}" if c.startswith("cmake -S") and extra_build else "") for c in program["build"]]
    run = [f"{wrap_run} {c}" if wrap_run else c for c in program["run"] if not c.startswith("#")][:1]
    shell(build + run, where, python_env())
    return outputs_of(where, program["outputs"])


def cmake_or_skip(reason: str) -> None:
    if reason:
        pytest.skip(reason)


# --- OpenVINO --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def openvino_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openvino")
    return compile_digits(tmp_path_factory.mktemp("deploy"), "openvino", "host")


def test_openvino_bundle_lists_its_programs_and_readme(openvino_bundle: Path) -> None:
    manifest = json.loads((openvino_bundle / "manifest.json").read_text())
    assert [d["folder"] for d in manifest["deploy"]] == ["deploy/cpp", "deploy/python"]
    readme = (openvino_bundle / "deploy" / "README.md").read_text()
    assert "cmake -S . -B build -DOpenVINO_DIR=" in readme and "./build/deploy ../../artifact out ../example/image.npy" in readme
    files = programs(openvino_bundle)["cpp"]["files"]
    assert files == ["CMakeLists.txt", "deploy.hpp", "main.cpp"]
    assert programs(openvino_bundle)["python"]["files"] == ["run.py"]  # rendered from run.py.in
    source = (openvino_bundle / "deploy" / "cpp" / "main.cpp").read_text()
    assert "@@" not in source and '{"image", "image", "<f4", {1, 1, 8, 8}}' in source


def test_openvino_cpp_program_builds_runs_and_matches_onnxsmith_run(openvino_bundle: Path, tmp_path: Path) -> None:
    from onnxsmith.compilers.openvino.deployment import toolchain_missing

    cmake_or_skip(toolchain_missing())
    got = build_and_run(openvino_bundle, "cpp")
    assert_equal_outputs(got, onnxsmith_run(openvino_bundle, tmp_path))


def test_openvino_cpp_program_refuses_a_wrong_command_line_and_input(openvino_bundle: Path, tmp_path: Path) -> None:
    """The shared deploy.hpp frame: usage with exit 2, a wrong-shape input as one error line with exit 1."""
    from onnxsmith.compilers.openvino.deployment import toolchain_missing

    cmake_or_skip(toolchain_missing())
    where = openvino_bundle / "deploy" / "cpp"
    shell(programs(openvino_bundle)["cpp"]["build"], where, python_env())  # incremental when already built
    usage = subprocess.run(["./build/deploy", "../../artifact"], cwd=where, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.strip().endswith("ARTIFACT_DIR OUTPUT_DIR image.npy")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 1, 8, 9), np.float32))
    bad = subprocess.run(["./build/deploy", "../../artifact", str(tmp_path / "out"), str(wrong)], cwd=where,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"error: input 'image' must be <f4 [1, 1, 8, 8] (-1: any size); {wrong} holds <f4 "
                                  "[1, 1, 8, 9]")
    assert not (tmp_path / "out").exists()


def test_openvino_python_program_matches_onnxsmith_run(openvino_bundle: Path, tmp_path: Path) -> None:
    got = build_and_run(openvino_bundle, "python")
    assert_equal_outputs(got, onnxsmith_run(openvino_bundle, tmp_path))


# --- TVM ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tvm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tvm")
    return compile_digits(tmp_path_factory.mktemp("deploy"), "tvm", "host")


def test_tvm_cpp_program_builds_runs_and_matches_onnxsmith_run(tvm_bundle: Path, tmp_path: Path) -> None:
    from onnxsmith.compilers.tvm.deployment import toolchain_missing
    from onnxsmith.compilers.tvm.targets import machine_arch

    cmake_or_skip(toolchain_missing(machine_arch()))
    got = build_and_run(tvm_bundle, "cpp")
    assert_equal_outputs(got, onnxsmith_run(tvm_bundle, tmp_path))


def test_tvm_python_program_matches_onnxsmith_run(tvm_bundle: Path, tmp_path: Path) -> None:
    got = build_and_run(tvm_bundle, "python")
    assert_equal_outputs(got, onnxsmith_run(tvm_bundle, tmp_path))


def test_tvm_aarch64_cpp_program_cross_compiles_and_runs_under_qemu(tmp_path_factory: pytest.TempPathFactory) -> None:
    """arm/raspberry-pi-5: cross-compiled with aarch64-linux-gnu-g++ against the aarch64 runtime libraries, run under
    qemu-aarch64, compared with onnxsmith's own run of the same bundle on the emulated RPC server."""
    pytest.importorskip("tvm")
    from onnxsmith.bundle import Bundle
    from onnxsmith.compilers.tvm import emulate
    from onnxsmith.compilers.tvm.deployment import toolchain_missing

    cmake_or_skip(toolchain_missing("aarch64"))
    tmp = tmp_path_factory.mktemp("deploy-arm")
    bundle_dir = compile_digits(tmp, "tvm", "arm/raspberry-pi-5")
    readme = (bundle_dir / "deploy" / "README.md").read_text()
    assert "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++" in readme and "qemu-aarch64 -L /usr/aarch64-linux-gnu" in readme
    libs = emulate.runtime_libraries()
    where = bundle_dir / "deploy" / "cpp"
    shell([f"cmake -S . -B build -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DTVM_LIB_DIR={libs}",
           "cmake --build build"], where, python_env())
    assert subprocess.run(["file", "build/deploy"], cwd=where, capture_output=True, text=True).stdout.count("aarch64") \
        or shutil.which("file") is None
    shell([f"qemu-aarch64 -L {emulate.SYSROOT} ./build/deploy ../../artifact out ../example/image.npy"], where)
    got = outputs_of(where, ["logits"])

    bundle = Bundle.open(bundle_dir)
    feeds = {"image": np.load(bundle_dir / "deploy" / "example" / "image.npy")}
    with emulate.emulated_server() as address:
        from onnxsmith.registry import get_backend

        runner = get_backend("tvm").load_remote(bundle.artifact, bundle.artifact_dir, bundle.target(), address)
        with runner:
            want = {k: np.asarray(v) for k, v in runner.run(feeds).items()}
    assert_equal_outputs(got, want)


# --- ONNX Runtime --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnxruntime_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_digits(tmp_path_factory.mktemp("deploy"), "onnxruntime", "host")


def test_onnxruntime_python_program_matches_onnxsmith_run(onnxruntime_bundle: Path, tmp_path: Path) -> None:
    got = build_and_run(onnxruntime_bundle, "python")
    assert_equal_outputs(got, onnxsmith_run(onnxruntime_bundle, tmp_path))


def test_onnxruntime_cpp_program_is_generated_and_says_why_it_was_not_built(onnxruntime_bundle: Path) -> None:
    program = programs(onnxruntime_bundle)["cpp"]
    assert program["checked"].startswith("generated only, not built here")
    assert_names_existing_artifact_files(onnxruntime_bundle / "deploy" / "cpp", program["loads"],
                                         onnxruntime_bundle / "artifact")
    assert "not built here" in (onnxruntime_bundle / "deploy" / "README.md").read_text()


# --- the templates --------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_templates_with_placeholders_end_in_dot_in_and_the_source_tree_byte_compiles(tmp_path: Path) -> None:
    """A template holding @@NAME@@ is NAME.in (not valid source as it stands), so compileall over the tree passes."""
    from onnxsmith.deploy import PLACEHOLDER, TEMPLATE_SUFFIX

    templates = [p for p in (REPO / "compilers").glob("*/deploy/**/*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(templates) >= 15
    for path in templates:
        assert bool(PLACEHOLDER.search(path.read_text())) == path.name.endswith(TEMPLATE_SUFFIX), path
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", "compilers", "onnxsmith"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)})
    assert done.returncode == 0 and done.stdout == "", done.stdout[-3000:]


# --- the programs this machine cannot build: TensorRT, Core ML ---------------------------------------------------

def assert_names_existing_artifact_files(folder: Path, loads: list[str], artifact: Path) -> None:
    """Each file the program loads exists in the artifact folder and is named in its source."""
    assert loads
    source = "\n".join(p.read_text() for p in folder.rglob("*") if p.is_file() and p.suffix != ".hpp")
    for name in loads:
        assert (artifact / name).exists(), f"{name} is not in {artifact}"
        assert name in source, f"{folder.name} does not open {name}"
    assert "@@" not in source


def render(tmp_path: Path, backend_name: str, artifact, target_id: str) -> Path:
    from onnxsmith.deploy import write_deploy
    from onnxsmith.registry import get_backend
    from onnxsmith.targets import load_target

    specs_in = (TensorSpec("image", "float32", (1, 1, 8, 8)),)
    specs_out = (TensorSpec("logits", "float32", (1, 10)),)
    write_deploy(tmp_path, get_backend(backend_name), artifact, load_target(target_id), specs_in, specs_out, "digits")
    return tmp_path / "deploy"


def test_tensorrt_programs_are_generated_naming_the_engine_and_say_they_were_not_built(tmp_path: Path) -> None:
    """No TensorRT here, so no TensorRT bundle: the artifact is the file list TensorRT's compile() returns."""
    from onnxsmith.plugin import Artifact

    artifact = Artifact(backend="tensorrt", backend_version="10.13.0", device="cuda:0", precision="fp16",
                        precision_used="fp16", files=("model.engine", "layers.json"))
    (tmp_path / "artifact").mkdir()
    for name in artifact.files:
        (tmp_path / "artifact" / name).write_bytes(b"engine")
    deploy = render(tmp_path, "tensorrt", artifact, "nvidia/l4")
    for folder, program in programs(tmp_path).items():
        assert program["checked"].startswith("generated only, not built or run here")
        assert_names_existing_artifact_files(deploy / folder, program["loads"], tmp_path / "artifact")
    assert "enqueueV3" in (deploy / "cpp" / "main.cpp").read_text()
    assert "not built or run here" in (deploy / "README.md").read_text()


def test_coreml_programs_are_generated_naming_the_package_and_say_they_were_not_built(tmp_path: Path) -> None:
    if importlib.util.find_spec("coremltools") is None:
        pytest.skip("coremltools is not installed")
    from onnxsmith.model import load_model
    from onnxsmith.plugin import CompileRequest
    from onnxsmith.profiles import load_profile
    from onnxsmith.registry import get_backend
    from onnxsmith.targets import load_target

    backend, target = get_backend("coreml"), load_target("apple/m3")
    work = tmp_path / "artifact"
    work.mkdir()
    artifact = backend.compile(CompileRequest(model=load_model(DIGITS), target=target, precision="fp32",
                                              profile=load_profile("balanced"), calibration=None, options={}), work)
    deploy = render(tmp_path, "coreml", artifact, "apple/m3")
    found = programs(tmp_path)
    assert set(found) == {"swift", "python"}
    for folder, program in found.items():
        assert program["checked"].startswith("generated only, not built or run here")
        assert_names_existing_artifact_files(deploy / folder, program["loads"], work)
    assert found["swift"]["files"] == ["Package.swift", "Sources/deploy/main.swift"]
    swift = (deploy / "swift" / "Sources" / "deploy" / "main.swift").read_text()
    assert "MLModel.compileModel" in swift and '(name: "image", file: "image", descr: "<f4", shape: [1, 1, 8, 8])' in swift
    assert "swift build -c release" in (deploy / "README.md").read_text()
