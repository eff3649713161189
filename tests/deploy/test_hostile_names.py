"""Names as an attacker writes them: a model whose input and output names, file name and target id carry Python,
C++, shell, Swift and Triton-config payloads (each tries to create a marker file) and paths (``/abs/X``,
``../../X``). Compiled through the real CLI, its generated programs are run (Python) and built and run (C++), their
outputs compared with ``onnxsmith run``; the marker never appears and nothing is written outside the bundle and the
programs' output folders. The escaping functions are checked against the real readers (Python's parser, g++, the
shell, protobuf's text parser)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxsmith.cli import cli
from onnxsmith.deploy import quoting
from onnxsmith.model import TensorSpec

from .test_programs import python_env, shell

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5


class Hostile:
    """The world: ``root/MARKER`` (never to exist), ``root/abs/`` (an absolute-path name's target), and the model,
    target file and bundles in ``root/a/b/c/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = root / "MARKER"
        self.work = root / "a" / "b" / "c"
        self.work.mkdir(parents=True)
        (root / "abs").mkdir()
        m = self.marker
        touch = f"touch {m}"
        self.inputs = [
            f'x"""; import os; os.system("{touch}") #\n"""\nimport os; os.system("{touch}")\n"""',  # Python docstring
            f'y"); system("{touch}"); //\n#include <cstdlib>\nstatic int i = std::system("{touch}"); // ??/',  # C++
            f"z$({touch})`{touch}`'; {touch}; '\\(try? \"\".write(toFile: \"{m}\", atomically: true, encoding: .utf8))",
            'w" } input { name: "injected" data_type: TYPE_FP32 dims: [ 1 ] } input { name: "',  # pbtxt
            str(root / "abs" / "X"),  # an absolute path
            "../../../../rel",  # deploy/example/../../../.. is root/a/b
        ]
        self.outputs = ["../../../../o1", f'{root / "abs" / "o2"}$({touch})"""\n"); system("{touch}"); //']
        # a file name holds no "/": its payload touches MARKER in the current folder, which check() finds too
        self.model = self.work / ("m$(touch MARKER)`touch MARKER`\"'\n\\(x); touch MARKER\n"
                                  '"""; __import__("os").system("touch MARKER") #.onnx')
        onnx.save(self._model(), self.model)
        self.target = self.work / "target.toml"
        self.target.write_text(self._target())

    def _model(self) -> onnx.ModelProto:
        a, b, c, d, e, f = self.inputs
        nodes = [helper.make_node("Add", [a, b], ["s1"]), helper.make_node("Add", ["s1", c], ["s2"]),
                 helper.make_node("Add", ["s2", d], ["s3"]), helper.make_node("Sub", ["s3", e], ["s4"]),
                 helper.make_node("Add", ["s4", f], [self.outputs[0]]),
                 helper.make_node("Mul", [a, c], [self.outputs[1]])]
        graph = helper.make_graph(nodes, "hostile",
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in self.inputs],
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in self.outputs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxsmith-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def _target(self) -> str:
        """targets/generic/x86-64.toml with a hostile id and no [requires] (so it runs on any machine here)."""
        text = (REPO / "targets" / "generic" / "x86-64.toml").read_text()
        hostile_id = (f'x"""; $(touch {self.marker}) `touch {self.marker}` \\(exit(0)) " }} name: "e\n'
                      f'#include <x>\n"); system("touch {self.marker}"); //')
        text = text.replace('id = "generic/x86-64"', f"id = {json.dumps(hostile_id)}")
        return re.sub(r"(?m)^\[requires\]\n(?:^(?!\[).*\n)*", "", text)

    def files(self) -> set[Path]:
        return {p for p in self.root.rglob("*")}

    def ran(self) -> list[Path]:
        """The markers payloads created (none, ever)."""
        return [p for p in self.root.rglob("MARKER*")]

    def check(self, before: set[Path], allowed: list[Path]) -> None:
        """No marker, and every new file is inside one of ``allowed``."""
        assert not self.ran(), "a payload ran"
        new = [p for p in self.files() - before if not any(p == a or a in p.parents for a in allowed)]
        assert not new, f"written outside the bundle and output folders: {new}"


def compile_hostile(world: Hostile, backend: str) -> Path:
    """``onnxsmith compile`` through the real CLI, in a subprocess."""
    out = world.work / f"bundle-{backend}"
    before = world.files()
    done = subprocess.run([sys.executable, "-m", "onnxsmith", "compile", world.model.name, "--target",
                           str(world.target), "--backend", backend, "-o", out.name], cwd=world.work,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    world.check(before, [out])
    return out


def onnxsmith_run(bundle: Path) -> dict[str, np.ndarray]:
    out = bundle / "run-out.npz"
    result = CliRunner().invoke(cli, ["run", str(bundle), "--input", str(bundle / "deploy" / "example"),
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def run_program(world: Hostile, bundle: Path, folder: str, build: bool = False) -> dict[str, np.ndarray]:
    """The program's own build and run lines from programs.json (run by the shell, as a user pastes them); its
    outputs read through programs.json's name -> file mapping."""
    record = {p["folder"]: p for p in json.loads((bundle / "deploy" / "programs.json").read_text())["programs"]}
    program = record[folder]
    where = bundle / "deploy" / folder
    before = world.files()
    shell((program["build"] if build else []) + program["run"][:1], where, python_env())
    world.check(before, [where / "out", where / "build"])
    assert program["outputs"] == world.outputs and list(program["output_files"]) == world.outputs
    return {n: np.load(where / "out" / f, allow_pickle=False) for n, f in program["output_files"].items()}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    return Hostile(tmp_path_factory.mktemp("hostile-names"))


@pytest.fixture(scope="module")
def ort_bundle(world: Hostile) -> Path:
    return compile_hostile(world, "onnxruntime")


@pytest.fixture(scope="module")
def openvino_bundle(world: Hostile) -> Path:
    pytest.importorskip("openvino")
    return compile_hostile(world, "openvino")


def test_compile_writes_the_example_inputs_under_safe_names_inside_the_bundle(world: Hostile, ort_bundle: Path) -> None:
    deploy = ort_bundle / "deploy"
    record = json.loads((deploy / "programs.json").read_text())
    assert list(record["example"]) == world.inputs
    files = list(record["example"].values())
    assert sorted(p.relative_to(deploy).as_posix() for p in (deploy / "example").iterdir()) == sorted(files)
    for file in files:
        assert re.fullmatch(r"example/[A-Za-z0-9_][A-Za-z0-9._-]*-[0-9a-f]{8}\.npy", file), file
    assert not (world.root / "abs" / "X.npy").exists() and not (world.root / "a" / "b" / "rel.npy").exists()
    readme = (deploy / "README.md").read_text()
    assert "programs.json" in readme and "safe file name" in readme
    assert record["target"] == tomllib.loads(world.target.read_text())["id"]  # the id, exactly, as data


def test_generated_python_holds_the_exact_names_and_no_raw_text(world: Hostile, ort_bundle: Path) -> None:
    source = (ort_bundle / "deploy" / "python" / "run.py").read_text()
    tree = ast.parse(source)  # the docstring did not break out
    assert isinstance(tree.body[0], ast.Expr) and "\n" not in ast.get_docstring(tree).splitlines()[0]
    values = {t.targets[0].id: ast.literal_eval(t.value) for t in tree.body
              if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name)}
    assert [i[0] for i in values["INPUTS"]] == world.inputs and [o[0] for o in values["OUTPUTS"]] == world.outputs
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not any(isinstance(f, ast.Attribute) and f.attr == "system" for f in calls)
    docstring = ast.get_docstring(tree)
    assert "system(" not in docstring and "$(" not in docstring and "`" not in docstring


def test_onnxruntime_python_program_runs_like_onnxsmith_run_and_no_payload_runs(world: Hostile,
                                                                                ort_bundle: Path) -> None:
    assert_same(run_program(world, ort_bundle, "python"), onnxsmith_run(ort_bundle))
    assert not world.ran()


def test_openvino_programs_build_run_like_onnxsmith_run_and_no_payload_runs(world: Hostile,
                                                                            openvino_bundle: Path) -> None:
    """The OpenVINO C++ program (g++ against the wheel) and the Python program, on the example input."""
    from onnxsmith.compilers.openvino.deployment import toolchain_missing

    want = onnxsmith_run(openvino_bundle)
    assert_same(run_program(world, openvino_bundle, "python"), want)
    if toolchain_missing():
        pytest.skip(toolchain_missing())
    assert_same(run_program(world, openvino_bundle, "cpp", build=True), want)
    assert not world.ran()


@pytest.mark.slow
def test_tvm_programs_build_run_like_onnxsmith_run_and_no_payload_runs(world: Hostile) -> None:
    pytest.importorskip("tvm")
    from onnxsmith.compilers.tvm.deployment import toolchain_missing
    from onnxsmith.compilers.tvm.targets import machine_arch

    bundle = compile_hostile(world, "tvm")
    want = onnxsmith_run(bundle)
    assert_same(run_program(world, bundle, "python"), want)
    if toolchain_missing(machine_arch()):
        pytest.skip(toolchain_missing(machine_arch()))
    assert_same(run_program(world, bundle, "cpp", build=True), want)


def test_triton_configs_parse_back_with_the_exact_names(world: Hostile, ort_bundle: Path) -> None:
    pytest.importorskip("tritonclient")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from onnxsmith.bundle import Bundle
    from onnxsmith.serving import write_serving

    bundle = Bundle.open(ort_bundle)
    before = world.files()
    write_serving(bundle, {"best": None, "rate_per_s": 10.0, "p99_budget_ms": 5.0, "notes": []}, "a test")
    world.check(before, [ort_bundle / "serving"])
    record = json.loads((ort_bundle / "serving" / "serving.json").read_text())
    name = record["model"]
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name)
    for kind in ("triton", "triton-native"):
        config = text_format.Parse((ort_bundle / "serving" / kind / name / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.name == name
        assert [i.name for i in config.input] == world.inputs and [o.name for o in config.output] == world.outputs
    assert not world.ran()


# --- the programs not built here: their sources, rendered with the same names ---------------------------------

def swift_strings(source: str) -> list[str]:
    """The string literals of Swift source, decoded (``\\\\``, ``\\"``, ``\\u{...}``; any other escape or an
    interpolation ``\\(`` fails the test)."""
    out = []
    for literal in re.findall(r'"((?:[^"\\\n]|\\.)*)"', source):
        def one(match: re.Match[str]) -> str:
            escape = match.group(0)
            if escape.startswith("\\u{"):
                return chr(int(escape[3:-1], 16))
            assert escape in ("\\\\", '\\"'), f"unexpected Swift escape {escape!r}"
            return escape[1]
        out.append(re.sub(r"\\u\{[0-9a-f]+\}|\\.", one, literal))
    return out


def test_swift_tensorrt_and_coreml_sources_hold_the_names_escaped(world: Hostile, tmp_path: Path) -> None:
    from onnxsmith.deploy import write_deploy
    from onnxsmith.plugin import Artifact
    from onnxsmith.registry import get_backend
    from onnxsmith.targets import load_target

    ins = tuple(TensorSpec(n, "float32", (1, 4)) for n in world.inputs)
    outs = tuple(TensorSpec(n, "float32", (1, 4)) for n in world.outputs)
    for backend, target, files in (("coreml", "apple/m3", ("model.mlpackage",)),
                                   ("tensorrt", "nvidia/l4", ("model.engine",))):
        root = tmp_path / backend
        (root / "artifact").mkdir(parents=True)
        artifact = Artifact(backend=backend, backend_version="1", device="x", precision="fp32", precision_used="fp32",
                            files=files, metadata={"io": {"inputs": {n: n for n in world.inputs},
                                                          "outputs": {n: n for n in world.outputs}}})
        write_deploy(root, get_backend(backend), artifact, load_target(target), ins, outs, world.model.stem)
        python = ast.parse((root / "deploy" / "python" / "run.py").read_text())
        values = {t.targets[0].id: ast.literal_eval(t.value) for t in python.body
                  if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name)}
        assert [i[0] for i in values["INPUTS"]] == world.inputs, backend
    swift = (tmp_path / "coreml" / "deploy" / "swift" / "Sources" / "deploy" / "main.swift").read_text()
    declared = swift[swift.index("let inputs:"):swift.index("func feature")]
    strings = swift_strings(declared)
    assert all(n in strings for n in world.inputs + world.outputs)
    header = swift.splitlines()[0]
    assert header.startswith("// ") and "\\" not in header and '"' not in header
    package = (tmp_path / "coreml" / "deploy" / "swift" / "Package.swift").read_text()
    for source in (swift, package):
        errors, interpolated = swift_syntax(source)
        assert not errors, errors  # the whole program parses: no name broke out of its literal
        # the names' literals carry no interpolation (the program's own messages do, below the declarations)
        assert not [at for at in interpolated if source.index("let inputs:") <= at < source.index("func feature")] \
            if source is swift else not interpolated


def swift_syntax(source: str) -> tuple[list[str], list[int]]:
    """Syntax errors in Swift ``source`` (tree-sitter's Swift grammar: no Swift toolchain here) and the offsets
    of its string interpolations ``\\(...)``."""
    tree_sitter = pytest.importorskip("tree_sitter")
    grammar = pytest.importorskip("tree_sitter_swift")
    data = source.encode()
    root = tree_sitter.Parser(tree_sitter.Language(grammar.language())).parse(data).root_node
    errors, interpolated, stack = [], [], [root]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            errors.append(f"line {node.start_point[0] + 1}: {data[node.start_byte:node.end_byte][:60]!r}")
        if node.type == "interpolated_expression":
            interpolated.append(len(data[:node.start_byte].decode()))
        stack.extend(node.children)
    return errors, interpolated


# --- each escaping function against its real reader ----------------------------------------------------------

NASTY = ["plain", 'q"uote', "back\\slash", "new\nline", "tab\t\r", "nul\0byte", "tri??/graph", "??=", "dollar $(x) `y`",
         "\\(interp)", "é ü 中文 🙂", "\u2028sep", '" } input { name: "', "'single'", "octal\\0123", "\x7f\x1b[31m"]


def test_python_literals_read_back_exactly() -> None:
    for value in NASTY:
        assert ast.literal_eval(quoting.python(value)) == value
        assert quoting.python(value).isascii()


def test_cpp_literals_compile_to_the_exact_bytes(tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    values = [v for v in NASTY if "\0" not in v]  # a C string ends at NUL; names never hold one (ONNX refuses it)
    source = "#include <cstdio>\n#include <cstring>\nstatic const char* v[] = {" + \
             ", ".join(quoting.cpp(v) for v in values) + \
             "};\nint main() { for (auto s : v) { for (size_t i = 0; i < std::strlen(s); ++i) " \
             "std::printf(\"%02x\", (unsigned char)s[i]); std::printf(\"\\n\"); } }\n"
    (tmp_path / "t.cpp").write_text(source)
    subprocess.run(["g++", "-std=c++17", "-trigraphs", "-Wall", "-Werror", "-Wno-trigraphs", "-o", "t", "t.cpp"],
                   cwd=tmp_path, check=True, timeout=120)
    lines = subprocess.run(["./t"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert [bytes.fromhex(line).decode() for line in lines] == values


def test_shell_words_reach_the_program_exactly(tmp_path: Path) -> None:
    for value in [v for v in NASTY if "\0" not in v]:
        done = subprocess.run(f"printf %s {quoting.shell(value)}", shell=True, capture_output=True, cwd=tmp_path)
        assert done.stdout == value.encode()
    assert not list(tmp_path.iterdir())


def test_pbtxt_strings_parse_back_exactly() -> None:
    pytest.importorskip("tritonclient")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for value in NASTY:
        config = text_format.Parse(f"name: {quoting.pbtxt(value)}\ninput {{ name: {quoting.pbtxt(value)} }}",
                                   model_config_pb2.ModelConfig())
        assert config.name == value and len(config.input) == 1 and config.input[0].name == value


def test_swift_literals_decode_exactly_and_never_interpolate() -> None:
    for value in NASTY:
        literal = quoting.swift(value)
        assert swift_strings(literal) == [value] and "\\(" not in literal.replace("\\\\", "")


def test_text_is_one_plain_line_and_markdown_spans_hold_their_backticks() -> None:
    for value in NASTY:
        line = quoting.text(value)
        assert re.fullmatch(r"[A-Za-z0-9 ._,:/+=@%-]*", line), line
    assert quoting.markdown_code("a``b") == "```a``b```" and quoting.markdown_code("x\ny") == "`x y`"


def test_file_stems_are_safe_distinct_and_stable() -> None:
    names = [*NASTY, ".", "..", "-rf", ".hidden", "/abs/X", "../../X", "a/b", "a_b", "A", "a", "x" * 300, ""]
    stems = quoting.file_stems(names)
    assert quoting.file_stems(reversed(names)) == stems  # the same, whatever the order
    assert len({s.casefold() for s in stems.values()}) == len(set(names))
    for name, stem in stems.items():
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,80}", stem), (name, stem)
    assert stems["plain"] == "plain" and stems["a_b"] == "a_b"  # safe names keep their name
    assert stems["A"] != "A" and stems["a"] != "a"  # would collide on a case-insensitive file system
    forged = quoting.file_stems(["a/b"])["a/b"]  # a safe name forged to equal another's hashed stem
    both = quoting.file_stems(["a/b", forged])
    assert both[forged] != both["a/b"]
