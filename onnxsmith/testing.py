"""A contract check any backend can run against itself: ``onnxsmith.testing.check_backend(MyCompiler(), ...)``.

It drives the backend exactly as the core does (the checks of :func:`onnxsmith.build.compile.checked_request`, then
``compile``, ``load``, ``run``, ``bind`` and the optional hooks) on a small model, compares the outputs with the ONNX
Runtime fp32 reference, and raises ``AssertionError`` naming the first broken rule. Use it in a plugin's own tests::

    from onnxsmith.testing import check_backend
    def test_contract(tmp_path):
        check_backend(MyCompiler(), tmp_path)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxsmith.plugin import Compiler
    from onnxsmith.targets import Target


@dataclasses.dataclass(frozen=True)
class ContractReport:
    """What :func:`check_backend` exercised."""

    backend: str
    version: str
    precisions: tuple[str, ...]
    files: tuple[str, ...]
    cosine: float
    hooks: dict[str, str]


def _small_model(directory: Path) -> Path:
    """A two-layer MLP with a fixed batch: MatMul, Add, Relu (every backend is expected to run these)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
             for name, shape in (("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 8)), ("b2", (8,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "contract_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "contract_mlp.onnx"
    onnx.save_model(model, str(path))
    return path


def check_backend(backend: Compiler, workdir: Path, target: Target | None = None, model: Path | None = None,
                  min_cosine: float = 0.999) -> ContractReport:
    """Run the contract checks for ``backend`` on ``target`` (default: ``host``) under ``workdir``."""
    import numpy as np

    from onnxsmith.build.compile import checked_request
    from onnxsmith.data.dataset import synthetic
    from onnxsmith.model import load_model
    from onnxsmith.options import Option
    from onnxsmith.plugin import PRECISIONS, Artifact, CompileRequest, Compiler, Runner, Support
    from onnxsmith.profiles import load_profile
    from onnxsmith.check.reference import reference_runner
    from onnxsmith.targets import load_target

    assert isinstance(backend, Compiler), f"{type(backend).__name__} must subclass onnxsmith.plugin.Compiler"
    assert backend.name and backend.artifact_kind, "a backend sets name and artifact_kind"
    assert all(isinstance(o, Option) for o in backend.options), "options are onnxsmith.options.Option objects"
    target = target or load_target("host")
    workdir.mkdir(parents=True, exist_ok=True)
    backend.check_environment()
    version = backend.version()
    assert isinstance(version, str) and version, "version() returns a non-empty string (vendor + plugin version)"
    assert isinstance(backend.devices(), list), "devices() returns a list"
    support, runs = backend.supports(target), backend.runs_here(target)
    assert isinstance(support, Support) and isinstance(runs, Support), "supports()/runs_here() return Support"
    assert support and runs, f"check_backend needs a target the backend compiles for and runs here: {support or runs}"
    precisions = tuple(backend.precisions(target))
    assert precisions and set(precisions) <= set(PRECISIONS), f"precisions() are among {PRECISIONS}: {precisions}"
    path = model or _small_model(workdir)
    loaded = load_model(path)
    precision = "fp32" if "fp32" in precisions else precisions[0]
    request = checked_request(backend, CompileRequest(loaded, target, precision, load_profile("quick"),
                                                      synthetic(loaded, 8)))
    build = workdir / "build"
    build.mkdir(exist_ok=True)
    artifact = backend.compile(request, build)
    assert isinstance(artifact, Artifact), "compile() returns an onnxsmith.plugin.Artifact"
    assert artifact.backend == backend.name, f"artifact.backend is {artifact.backend!r}, not {backend.name!r}"
    assert artifact.files and all((build / f).is_file() for f in artifact.files), \
        f"artifact.files {artifact.files} all exist under the work directory"
    assert all(not Path(f).is_absolute() and ".." not in Path(f).parts for f in artifact.files), \
        "artifact.files are relative paths inside the work directory"
    Artifact.from_json(artifact.to_json())  # JSON round trip: the manifest stores it
    feeds = {k: v[:2] if v.shape[0] >= 2 else v for k, v in synthetic(loaded, 1).arrays.items()}
    with backend.load(artifact, build, target) as runner:
        assert isinstance(runner, Runner), "load() returns an onnxsmith.plugin.Runner"
        got = runner.run(feeds)
        names = [o.name for o in loaded.outputs]
        assert sorted(got) == sorted(names), f"run() returns outputs {sorted(got)}, the model has {names}"
        call = runner.bind(feeds)
        assert callable(call), "bind() returns a callable"
        call()
        parallel = runner.parallel_throughput(feeds, 0.2)
        assert parallel is None or (parallel[0] > 0 and parallel[1] >= 1), "parallel_throughput is None or (ips, n)"
        layers = runner.layer_profile(feeds)
        assert layers is None or isinstance(layers, list), "layer_profile returns None or a list of LayerTime"
    with reference_runner(loaded.path) as ref:
        want = ref.run(feeds)
    worst = 1.0
    for name in names:
        a, b = np.asarray(got[name], np.float64).ravel(), np.asarray(want[name], np.float64).ravel()
        cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        worst = min(worst, cos)
    assert worst >= min_cosine, f"outputs differ from ONNX Runtime fp32: cosine {worst:.6f} < {min_cosine}"
    hooks: dict[str, Any] = {
        "needs_calibration(int8)": backend.needs_calibration("int8", loaded),
        "cache_token": backend.cache_token(target, request.options),
        "ladder_variants": [dataclasses.asdict(v) for v in backend.ladder_variants(target, precision)],
        "onnx_pass_precisions": backend.onnx_pass_precisions(target),
        "dynamic_shapes": backend.dynamic_shapes(loaded, target),
        "install_command": backend.install_command(),
    }
    declared = {o.name: o for o in backend.options}
    for profile_name in ("latency", "throughput"):
        knobs = backend.runtime_knobs(target, load_profile(profile_name), request.options)
        for knob in knobs:
            assert knob.options, "runtime_knobs() variants change an option each"
            for key, value in knob.options.items():
                assert key in declared, f"runtime_knobs() proposes '{key}', which the backend's options do not declare"
                declared[key].parse(str(value))
        hooks[f"runtime_knobs({profile_name})"] = [dataclasses.asdict(v) for v in knobs]
    assert isinstance(hooks["cache_token"], str), "cache_token() returns a string"
    assert isinstance(hooks["dynamic_shapes"], Support), "dynamic_shapes() returns a Support"
    return ContractReport(backend.name, version, precisions, tuple(artifact.files), round(worst, 8),
                          {k: str(v) for k, v in hooks.items()})
