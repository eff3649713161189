"""A third-party backend, written as a new user would from the README, registered through a real entry point and
driven through the real CLI: compile (as a target's first backend), inspect, profile, validate, doctor; then the
ways a plugin can be wrong (misspelt hook, misnamed, raising inside compile, unknown option).

The plugin, ``numpyref``, runs the ONNX graph with ``onnx.reference.ReferenceEvaluator`` (onnx's own reference
implementation): a real runtime, small enough to read in the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxsmith.plugin import Compiler
from tests.models import make_cnn

PLUGIN = '''
from __future__ import annotations

import shutil
from importlib.metadata import version as package_version

from onnxsmith.options import Option
from onnxsmith.plugin import Artifact, Compiler, Runner, Support
from onnxsmith.model import TensorSpec


class NumpyRefRunner(Runner):
    def __init__(self, path, verbose):
        from onnx.reference import ReferenceEvaluator
        import onnx

        model = onnx.load(str(path))
        self._session = ReferenceEvaluator(model, verbose=verbose)
        self.inputs = tuple(TensorSpec(i.name, "float32", ()) for i in model.graph.input)
        self.outputs = tuple(TensorSpec(o.name, "float32", ()) for o in model.graph.output)
        self.device_name = "numpy (onnx.reference)"

    def run(self, feeds):
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, dict(feeds))))


class NumpyRefCompiler(Compiler):
    """Runs ONNX with onnx's reference evaluator on any CPU."""

    name = "numpyref"
    install_hint = "pip install numpyref-plugin"
    artifact_kind = "ONNX model run by onnx.reference"
    options = (Option("verbose", int, 0, "ReferenceEvaluator verbosity", minimum=0, maximum=4),)

    def check_environment(self):
        self.vendor_import("onnx.reference", "onnx")

    def version(self):
        return f"{package_version('onnx')}+numpyref-0.1"

    def devices(self):
        return ["CPU"]

    def supports(self, target):
        return Support(target.kind == "cpu", "numpyref runs on CPUs only")

    def runs_here(self, target):
        from onnxsmith.host import host_matches

        return host_matches(target)

    def precisions(self, target):
        return ("fp32",)

    def compile(self, request, workdir):
        shutil.copyfile(request.model.path, workdir / "model.onnx")
        return Artifact(self.name, self.version(), "CPU", request.precision, "fp32", ("model.onnx",),
                        options={"verbose": request.options.get("verbose", 0)})

    def load(self, artifact, directory, target):
        return NumpyRefRunner(directory / artifact.files[0], int(artifact.options.get("verbose", 0)))


class ExplodingCompiler(NumpyRefCompiler):
    name = "exploding"

    def compile(self, request, workdir):
        raise ValueError("kaboom from inside the plugin")


class MisnamedCompiler(NumpyRefCompiler):
    name = "numpyref"  # registered as 'misnamed'
'''

MISSPELT = '''
from numpyref_plugin import NumpyRefCompiler


class MisspeltCompiler(NumpyRefCompiler):
    name = "misspelt"

    def cache_tokn(self, target, options):  # a typo for cache_token: must not be silently ignored
        return "state"
'''

ENTRY_POINTS = """[onnxsmith.compilers]
numpyref = numpyref_plugin:NumpyRefCompiler
exploding = numpyref_plugin:ExplodingCompiler
misnamed = numpyref_plugin:MisnamedCompiler
misspelt = misspelt_plugin:MisspeltCompiler
"""

TARGET = """id = "lab/numpy-box"
name = "A CPU box whose preferred backend is the numpyref plugin"
vendor = "lab"
kind = "cpu"
backends = ["numpyref", "onnxruntime"]
precisions = ["fp32"]

[peak]
fp32_tflops = 0.1
memory_bandwidth_gbps = 10
source = "test"

[device.numpyref]
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder holding the plugin package and its dist-info, as `pip install` would leave them."""
    site = tmp_path_factory.mktemp("site")
    (site / "numpyref_plugin.py").write_text(PLUGIN)
    (site / "misspelt_plugin.py").write_text(MISSPELT)
    info = site / "numpyref_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: numpyref-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("work")
    model = root / "models" / "cnn.onnx"
    model.parent.mkdir()
    onnx.save_model(make_cnn(), str(model))
    target = root / "numpy-box.toml"
    target.write_text(TARGET)
    rng = np.random.default_rng(0)
    np.savez(root / "val.npz", input=rng.standard_normal((6, 3, 16, 16)).astype(np.float32), label=np.arange(6) % 10)
    return {"root": root, "model": model, "target": target, "val": root / "val.npz"}


def onnxsmith(site: Path, *args: str, cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "onnxsmith", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_third_party_backend_is_first_class(plugin_site: Path, files: dict[str, Path]) -> None:
    root, model, target = files["root"], files["model"], str(files["target"])
    bundle = root / "bundle"
    code, out, err = onnxsmith(plugin_site, "compile", str(model), "--target", target, "-o", str(bundle), "--json",
                               cwd=root)
    assert code == 0, err
    compiled = json.loads(out)
    assert compiled["backend"] == "numpyref" and compiled["backend_version"].endswith("+numpyref-0.1")
    code, out, err = onnxsmith(plugin_site, "inspect", str(model), "--target", target, "--json", cwd=root)
    assert code == 0, err
    rows = {b["backend"]: b for b in json.loads(out)["backends"]}
    assert rows["numpyref"]["installed"] and rows["numpyref"]["unsupported_ops"] == {}
    code, out, err = onnxsmith(plugin_site, "profile", str(bundle), "-p", "quick", "--json", cwd=root)
    assert code == 0, err
    profile = json.loads(out)
    assert profile["latency_ms"]["p50"] > 0 and profile["device"] == "numpy (onnx.reference)"
    code, out, err = onnxsmith(plugin_site, "validate", str(bundle), "--data", str(files["val"]), "--labels", "label",
                               "--json", cwd=root)
    assert code == 0, err
    record = json.loads(out)
    assert record["passed"] and record["cosine_min"] > 0.9999 and record["top1_agreement"] == 1.0
    code, out, err = onnxsmith(plugin_site, "doctor", "--json", cwd=root)
    backends = {b["name"]: b for b in json.loads(out)["backends"]}
    assert backends["numpyref"]["available"] and [o["name"] for o in backends["numpyref"]["options"]] == ["verbose"]


def test_plugin_mistakes_are_named(plugin_site: Path, files: dict[str, Path]) -> None:
    root, model = files["root"], str(files["model"])

    def one_line(code: int, err: str, expected: int, *fragments: str) -> None:
        lines = err.strip().splitlines()
        assert code == expected and len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err and all(f in lines[0] for f in fragments), err

    code, _, err = onnxsmith(plugin_site, "compile", model, "-b", "numpyref", "--option", "verbos=1",
                             "-o", str(root / "o1"), cwd=root)
    one_line(code, err, 2, "unknown numpyref option 'verbos'", "did you mean 'verbose'")
    code, _, err = onnxsmith(plugin_site, "compile", model, "-b", "numpyref", "--option", "verbose=9",
                             "-o", str(root / "o2"), cwd=root)
    one_line(code, err, 2, "verbose=9", "from 0 to 4")
    code, _, err = onnxsmith(plugin_site, "compile", model, "-b", "exploding", "-o", str(root / "o3"), cwd=root)
    one_line(code, err, 4, "backend 'exploding' failed while compiling", "kaboom from inside the plugin")
    code, _, err = onnxsmith(plugin_site, "compile", model, "-b", "misnamed", "-o", str(root / "o4"), cwd=root)
    one_line(code, err, 4, "misnamed", "name = 'numpyref'")
    code, _, err = onnxsmith(plugin_site, "compile", model, "-b", "misspelt", "-o", str(root / "o5"), cwd=root)
    one_line(code, err, 4, "'cache_tokn'", "contract does not know")
    for verb in (["compile", model], ["optimize", model, "-o", str(root / "o6")]):
        code, _, err = onnxsmith(plugin_site, *verb, "-b", "numpyre", cwd=root)
        one_line(code, err, 2, "unknown backend 'numpyre'", "did you mean 'numpyref'")
    assert not any((root / f"o{i}").exists() for i in range(1, 7))


def test_misspelt_hooks_fail_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="'needs_calibraton'"):
        type("Broken", (Compiler,), {"name": "broken", "needs_calibraton": lambda self, p, m: True})
    with pytest.raises(TypeError, match="declares an option twice"):
        from onnxsmith.options import Option

        type("Twice", (Compiler,), {"name": "twice", "options": (Option("a", int), Option("a", str))})


def test_the_contract_kit_passes_for_the_plugin_and_the_built_in_backends(plugin_site: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from onnxsmith.registry import get_backend, backend_status
        from onnxsmith.testing import check_backend
        out = {{}}
        for name in ("numpyref", "onnxruntime", "openvino"):
            if backend_status(name, probe_devices=False).available:
                out[name] = check_backend(get_backend(name), Path({str(tmp_path)!r}) / name).cosine
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cosines = json.loads(proc.stdout.strip().splitlines()[-1])
    assert cosines["numpyref"] > 0.9999 and cosines["onnxruntime"] > 0.9999
    assert all(c >= 0.999 for c in cosines.values())
