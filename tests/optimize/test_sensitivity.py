"""int8 sensitivity, the keep-list, ``debug precision`` on ONNX Runtime and OpenVINO, the ladder's mixed step, and
each backend's keep-list mechanism."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxsmith.cli import cli
from onnxsmith.data.dataset import make_dataset
from onnxsmith.model import load_model
from onnxsmith.optimize.sensitivity import analyze
from onnxsmith.profiles import load_profile
from onnxsmith.targets import load_target
from tests.models import make_outlier_cnn, outlier_data

pytest.importorskip("onnxruntime")
OUTLIER_LAYERS = {"conv2", "conv3"}
"""conv2 writes the outlier activations, conv3 reads them: ONNX Runtime's QDQ quantizes that tensor when either
is quantized, so both must stay fp32."""


def _setup(root: Path, outliers: tuple[int, ...] = (3,), samples: int = 150) -> tuple[Path, Path, object, object]:
    proto = make_outlier_cnn(channels=16, size=8, depth=4, outliers=outliers)
    onnx.save(proto, root / "m.onnx")
    arrays = outlier_data(proto, samples)
    np.savez(root / "data.npz", **arrays)
    model = load_model(root / "m.onnx")
    data = make_dataset({"input": arrays["input"]}, arrays["label"], model.inputs, "data", "data.npz")
    return root / "m.onnx", root / "data.npz", model, data


@pytest.fixture(scope="module")
def outlier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, object]:
    return _setup(tmp_path_factory.mktemp("sens"))


def test_keep_list_names_the_outlier_layers(outlier: tuple) -> None:
    _, _, model, data = outlier
    sens = analyze(model, data, data.subset(64), 0.01)
    assert sens.metric == "accuracy" and sens.reference_quality == 1.0
    assert sens.int8_drop > 0.01 and not sens.keep == ()  # plain int8 misses a 1 % budget
    assert set(sens.keep_names) == OUTLIER_LAYERS and sens.mixed_drop is not None and sens.mixed_drop <= 0.01
    assert sens.met and {layer.name for layer in sens.layers[:2]} == OUTLIER_LAYERS  # ranked most harmful first
    assert all(layer.alone_drop is not None and layer.alone_drop <= 0.01 for layer in sens.layers[2:])
    assert all(k.cost_drop > 0.01 for k in sens.keep)  # each kept layer back in int8 breaks the budget again
    assert "one ONNX Runtime calibration" in sens.calibration


def test_bisection_clears_safe_groups_and_finds_the_same_keep_list(outlier: tuple) -> None:
    _, _, model, data = outlier
    sens = analyze(model, data, data.subset(64), 0.01, single_limit=2)
    assert set(sens.keep_names) == OUTLIER_LAYERS
    assert any(layer.method.startswith("safe group") for layer in sens.layers)
    assert sens.evaluations < 2 * len(sens.layers) + 6


def test_no_keep_list_when_int8_meets_the_budget(tmp_path: Path) -> None:
    _, _, model, data = _setup(tmp_path, outliers=())
    sens = analyze(model, data, data.subset(64), 0.01)
    assert sens.int8_drop <= 0.01 and sens.keep == () and sens.met and sens.mixed_drop is None


def test_bad_budget_is_refused(outlier: tuple) -> None:
    from onnxsmith.errors import UserInputError

    _, _, model, data = outlier
    with pytest.raises(UserInputError, match="budget"):
        analyze(model, data, data, 1.5)


def test_debug_precision_on_onnxruntime_and_openvino(outlier: tuple, tmp_path: Path) -> None:
    """The acceptance on this model: plain int8 misses 1 %, the keep-list names the outlier layers, the mixed
    artifact meets the budget on ONNX Runtime and OpenVINO (latency vs fp32 is a by-hand figure: too noisy for a
    unit test), and 'debug diverge' on the plain int8 bundle names the first outlier layer."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    model_path, data_path, _, _ = outlier
    out = tmp_path / "prec"
    result = CliRunner().invoke(cli, ["debug", "precision", str(model_path), "--data", str(data_path), "--labels",
                                      "label", "--max-accuracy-drop", "1%", "-b", "onnxruntime", "-b", "openvino",
                                      "-p", "quick", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert set(record["sensitivity"]["keep_names"]) == OUTLIER_LAYERS
    by = {e["backend"]: e for e in record["backends"]}
    for name in ("onnxruntime", "openvino"):
        entry = by[name]
        assert entry["int8_result"]["meets_budget"] is False, entry
        assert entry["mixed_result"]["meets_budget"] is True, entry
        assert entry["fp32_result"]["drop"] == 0.0
        assert entry["mixed_result"]["latency_p50_ms"] > 0 and entry["mixed_vs_fp32_latency"] > 0
        assert set(entry["layer_cost_ms"]) == OUTLIER_LAYERS
    assert by["onnxruntime"]["keep_mechanism"] == "int8_qdq ONNX pass, nodes_to_exclude"
    assert by["openvino"]["keep_mechanism"] == "openvino option keep_fp32"
    manifest = json.loads((out / by["openvino"]["mixed_result"]["bundle"] / "manifest.json").read_text())
    assert manifest["artifact"]["metadata"]["quantization"]["ignored_scope"]["onnx_nodes"] == ["conv3", "conv2"]
    report = (out / "precision.md").read_text()
    assert "Keep-list (2 of 5 layers kept in fp32)" in report and "| conv3 |" in report
    plain = out / by["onnxruntime"]["int8_result"]["bundle"]
    diverged = CliRunner().invoke(cli, ["debug", "diverge", str(plain), "--data", str(data_path), "--json"])
    assert diverged.exit_code == 0 and json.loads(diverged.output)["first"] == "conv3"


def test_ladder_adds_one_mixed_step_when_int8_misses(outlier: tuple, tmp_path: Path) -> None:
    from onnxsmith.optimize.ladder import run_ladder

    _, _, model, data = outlier
    profile = dataclasses.replace(load_profile("quick"), batch_sizes=(1,))
    card = run_ladder(model, load_target("host"), profile, data=data, calibration=data.subset(64),
                      max_accuracy_drop=0.01, latency_budget_ms=None, output=tmp_path / "opt",
                      backends=["onnxruntime"])
    names = [s.name for s in card.steps]
    assert names.count("onnxruntime-int8-mixed") == 1
    mixed = card.step("onnxruntime-int8-mixed")
    assert mixed.parent == "onnxruntime-int8" and mixed.change.startswith("layers conv")
    assert set(mixed.change.split(" kept")[0].removeprefix("layers ").split(", ")) == OUTLIER_LAYERS
    assert (card.step("baseline").accuracy or 0) - (mixed.accuracy or 0) <= 0.01
    assert (card.step("baseline").accuracy or 0) - (card.step("onnxruntime-int8").accuracy or 0) > 0.01
    assert any("per-layer sensitivity" in n for n in card.notes)


def test_ladder_adds_no_mixed_step_when_int8_meets(tmp_path: Path) -> None:
    from onnxsmith.optimize.ladder import run_ladder

    _, _, model, data = _setup(tmp_path, outliers=(), samples=100)
    profile = dataclasses.replace(load_profile("quick"), batch_sizes=(1,), simplify=False)
    card = run_ladder(model, load_target("host"), profile, data=data, calibration=data.subset(64),
                      max_accuracy_drop=0.01, latency_budget_ms=None, output=tmp_path / "opt",
                      backends=["onnxruntime"])
    assert "onnxruntime-int8" in [s.name for s in card.steps]
    assert not any(s.name.endswith("-mixed") for s in card.steps)


# ---- each backend's keep-list mechanism ------------------------------------------------------------------------

def test_tensorrt_keep_fp32_omits_qdq_around_the_kept_nodes(outlier: tuple, tmp_path: Path) -> None:
    """The strongly typed TensorRT path: the kept layers get no Q/DQ, so TensorRT runs them in the ONNX's fp32
    (the engine build itself needs TensorRT, not installed here)."""
    from onnxsmith.compilers.tensorrt.calibrator import CalibrationFeeder
    from onnxsmith.compilers.tensorrt.options import parse_options
    from onnxsmith.compilers.tensorrt.precision import quantize_qdq
    from onnxsmith.errors import UnsupportedError

    model_path, _, model, data = outlier
    shaped = load_model(model_path)
    out = tmp_path / "q.onnx"
    stats = quantize_qdq(shaped.path, out, CalibrationFeeder(data.subset(16), shaped.inputs), "minmax",
                         ("conv2", "conv3"))
    assert stats["kept_fp32"] == ["conv2", "conv3"]
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    fed = {n.name: any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
           for n in graph.node if n.op_type in ("Conv", "Gemm")}
    assert fed == {"conv1": True, "conv2": False, "conv3": False, "conv4": True, "fc": True}
    assert parse_options({"keep_fp32": "conv2, conv3"}).keep_fp32 == ("conv2", "conv3")
    with pytest.raises(UnsupportedError, match="does not have"):
        quantize_qdq(shaped.path, tmp_path / "bad.onnx", CalibrationFeeder(data.subset(16), shaped.inputs),
                     "minmax", ("nope",))


def test_tensorrt_keep_fp32_stays_fp32_in_the_int8_fp16_rewrite(outlier: tuple, tmp_path: Path) -> None:
    """With ``int8_fallback=fp16`` (the default) the layers outside the Q/DQ pairs are rewritten to fp16 for a
    strongly typed build; the kept nodes must not be: they stay fp32, as the keep-list asks."""
    from onnxsmith.compilers.tensorrt.backend import TensorRTCompiler
    from onnxsmith.compilers.tensorrt.calibrator import CalibrationFeeder
    from onnxsmith.compilers.tensorrt.options import parse_options
    from onnxsmith.compilers.tensorrt.precision import quantize_qdq

    model_path, _, model, data = outlier
    shaped = load_model(model_path)
    out = tmp_path / "q.onnx"
    quantize_qdq(shaped.path, out, CalibrationFeeder(data.subset(16), shaped.inputs), "minmax", ("conv2", "conv3"))
    opts = parse_options({"keep_fp32": "conv2,conv3"})
    notes: list[str] = []
    metadata: dict = {"int8": {}}
    path, converted = TensorRTCompiler()._strong_qdq(out, onnx.load(str(out)), opts, tmp_path, notes, metadata)
    assert path.exists() and metadata["int8"]["fallback"]["kept_fp32_nodes"] == ["conv2", "conv3"]
    assert "conv2, conv3 stay fp32" in notes[-1]
    types = {v.name: v.type.tensor_type.elem_type for v in [*converted.graph.value_info, *converted.graph.output]}
    conv_out = {n.name: types.get(n.output[0]) for n in converted.graph.node if n.op_type == "Conv"}
    assert conv_out == {"conv1": onnx.TensorProto.FLOAT16, "conv2": onnx.TensorProto.FLOAT,
                        "conv3": onnx.TensorProto.FLOAT, "conv4": onnx.TensorProto.FLOAT16}


def _coreml_with_and_without_keep(outlier: tuple, tmp_path: Path, precision: str, options: dict
                                  ) -> dict[tuple[str, ...], tuple[object, Path]]:
    """The outlier CNN compiled by Core ML for apple/m3 twice, as is and with conv2, conv3 kept float: keep-list ->
    (artifact, its folder)."""
    pytest.importorskip("onnx2coreml")
    from onnxsmith.compilers.coreml.backend import CoreMLCompiler
    from onnxsmith.plugin import CompileRequest

    model_path, _, _, _ = outlier
    model, target, profile = load_model(model_path), load_target("apple/m3"), load_profile("quick")
    built = {}
    for keep in ((), ("conv2", "conv3")):
        work = tmp_path / f"keep{len(keep)}"
        work.mkdir()
        request = CompileRequest(model, target, precision, profile, options={**options, "keep_fp32": list(keep)})
        built[keep] = (CoreMLCompiler().compile(request, work), work)
    return built


def test_coreml_keep_fp32_leaves_the_kept_weights_unpalettized(outlier: tuple, tmp_path: Path) -> None:
    built = _coreml_with_and_without_keep(outlier, tmp_path, "fp16", {"palettize_bits": 4, "weight_threshold": 100})
    weights = {keep: artifact.metadata["quantization"]["weights"] for keep, (artifact, _) in built.items()}
    assert weights[("conv2", "conv3")]["palettized_weights"] == weights[()]["palettized_weights"] - 2
    assert {"w2_to_fp16", "w3_to_fp16"} <= set(weights[("conv2", "conv3")]["kept_float"])
    assert built[("conv2", "conv3")][0].options["keep_fp32"] == ["conv2", "conv3"]


def test_coreml_keep_fp32_leaves_the_kept_weights_float(outlier: tuple, tmp_path: Path) -> None:
    built = _coreml_with_and_without_keep(outlier, tmp_path, "int8", {"weight_threshold": 100})
    counts = {keep: artifact.metadata["quantization"]["weights"] for keep, (artifact, _) in built.items()}
    import coremltools as ct

    from onnxsmith.compilers.coreml.common import MAIN_FILE
    from onnxsmith.compilers.coreml.runner import op_output_precisions

    work = built[("conv2", "conv3")][1]
    precisions = op_output_precisions(ct.utils.load_spec(str(work / MAIN_FILE)))  # files: the package's files
    assert "fp16" in precisions.values()  # what the compute plan's rows are labelled with on macOS
    assert counts[("conv2", "conv3")]["quantized_weights"] == counts[()]["quantized_weights"] - 2
    assert {"w2_to_fp16", "w3_to_fp16"} <= set(counts[("conv2", "conv3")]["kept_float"])


def test_openvino_keep_fp32_maps_onnx_nodes_to_openvino_ops(outlier: tuple) -> None:
    pytest.importorskip("openvino")
    import openvino as ov

    from onnxsmith.compilers.openvino.quantize import ignored_scope

    model_path, _, _, _ = outlier
    names, missing = ignored_scope(ov.Core().read_model(str(model_path)), ("conv3", "nope"))
    assert set(names) == {"conv3", "conv3/WithoutBiases"} and missing == ["nope"]


def test_backends_name_their_keep_option() -> None:
    from onnxsmith.registry import get_backend

    host = load_target("host")
    assert get_backend("openvino").keep_fp32_option(host) == "keep_fp32"
    assert get_backend("tensorrt").keep_fp32_option(host) == "keep_fp32"
    assert get_backend("coreml").keep_fp32_option(host) == "keep_fp32"
    assert get_backend("onnxruntime").keep_fp32_option(host) is None  # its int8 is the QDQ pass: nodes_to_exclude
    assert get_backend("onnxruntime").onnx_pass_precisions(host)["int8"] == "int8_qdq"


def test_time_cap_leaves_layers_unmeasured_and_says_so(outlier: tuple) -> None:
    _, _, model, data = outlier
    sens = analyze(model, data, data.subset(64), 0.01, max_seconds=0.0)
    assert any("time cap" in n for n in sens.notes)
    assert all(layer.method == "not measured (time cap)" for layer in sens.layers)
    assert len(sens.keep) <= 1  # one layer is tried before the cap stops the search
