"""Per-layer divergence (``debug diverge``, ``validate --layers``) on a model that per-tensor int8 breaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxsmith.cli import cli
from onnxsmith.build.compile import compile_model
from onnxsmith.data.dataset import make_dataset
from onnxsmith.check.layers import diverge, layer_tensors, write_divergence
from onnxsmith.model import load_model
from onnxsmith.model.saving import save_model
from onnxsmith.optimize.passes import get_pass
from onnxsmith.profiles import load_profile
from onnxsmith.targets import load_target
from tests.models import make_outlier_cnn, outlier_data

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small outlier CNN (conv3 reads the outlier activations conv2 writes), its data, and bundles:
    ONNX Runtime fp32, ONNX Runtime plain int8 (QDQ), OpenVINO plain int8 (NNCF)."""
    root = tmp_path_factory.mktemp("outlier")
    proto = make_outlier_cnn(channels=16, size=8, depth=4, outliers=(3,))
    onnx.save(proto, root / "m.onnx")
    arrays = outlier_data(proto, 120)
    np.savez(root / "data.npz", **arrays)
    model = load_model(root / "m.onnx")
    data = make_dataset({"input": arrays["input"]}, arrays["label"], model.inputs, "data", "data.npz")
    target, profile = load_target("host"), load_profile("quick")
    int8 = get_pass("int8_qdq").run(model, calibration=data.subset(64))
    qdq = load_model(save_model(int8.model, root / "qdq" / "m.onnx"))
    bundles = {
        "ort-fp32": compile_model(model, target, profile=profile, output=root / "ort-fp32", backend="onnxruntime"),
        "ort-int8": compile_model(qdq, target, profile=profile, output=root / "ort-int8", backend="onnxruntime",
                                  reference=model),
    }
    return {"root": root, "model": model, "data": data, "bundles": bundles, "target": target, "profile": profile}


def test_layer_tensors_name_layers_after_their_compute_node(outlier: dict) -> None:
    layers = layer_tensors(outlier["model"].proto)
    by_tensor = {t.tensor: t for t in layers}
    assert by_tensor["c3"].layer == "conv3" and by_tensor["r3"].layer == "conv3"  # the Relu belongs to conv3
    assert by_tensor["r3"].inputs == ("c3",) and by_tensor["logits"].layer == "fc"
    assert [t.tensor for t in layers][:2] == ["c1", "r1"]


def test_plain_int8_onnxruntime_bundle_names_the_first_outlier_layer(outlier: dict) -> None:
    result = diverge(outlier["bundles"]["ort-int8"], outlier["data"], samples=16)
    assert result.first == "conv3"  # conv2's outlier output is itself exact; conv3 reads it quantized
    assert "onnxruntime's own" in result.exposed_by
    rows = {r.tensor: r for r in result.layers}
    assert rows["r2"].cosine_min > 0.99 and not rows["r2"].exceeds  # dequantized from the int8 kernel's output
    assert rows["r3"].exceeds and rows["r3"].cosine_min < 0.9
    assert rows["logits"].exceeds and "conv3" in result.growth
    assert "c3" in result.not_exposed  # fused into QLinearConv by the offline optimizer


def test_fp32_bundle_has_no_layer_past_the_tolerance(outlier: dict) -> None:
    result = diverge(outlier["bundles"]["ort-fp32"], outlier["data"], samples=8)
    assert result.first is None and result.layers and all(r.rel_l2_error < 1e-4 for r in result.layers)


def test_openvino_int8_names_the_first_outlier_layer(outlier: dict) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    bundle = compile_model(outlier["model"], outlier["target"], profile=outlier["profile"],
                           output=outlier["root"] / "ov-int8", backend="openvino", precision="int8",
                           calibration=outlier["data"].subset(64))
    result = diverge(bundle, outlier["data"], samples=8)
    assert result.first == "conv3" and result.first_tensor == "c3"
    assert "openvino's own" in result.exposed_by and not result.not_exposed


@pytest.mark.slow
def test_tvm_fp32_through_a_recompile_with_extra_outputs(outlier: dict) -> None:
    pytest.importorskip("tvm")
    bundle = compile_model(outlier["model"], outlier["target"], profile=outlier["profile"],
                           output=outlier["root"] / "tvm", backend="tvm")
    result = diverge(bundle, None, samples=2)
    assert "compiled again by tvm" in result.exposed_by and len(result.layers) == 10 and result.first is None


def test_cli_debug_diverge_writes_table_plot_and_report(outlier: dict) -> None:
    bundle = outlier["bundles"]["ort-int8"]
    out = CliRunner().invoke(cli, ["debug", "diverge", str(bundle.path), "--data", str(outlier["root"] / "data.npz"),
                                   "--samples", "8", "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.output)
    assert record["first"] == "conv3" and record["samples"] == 8
    assert (bundle.path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((bundle.path / "layers.json").read_text())["first"] == "conv3"
    report = (bundle.path / "report.md").read_text()
    assert "## Per-layer divergence" in report and "First layer past the tolerance: conv3" in report
    assert "![per-layer error](layers.png)" in report
    bundle.path.joinpath("layers.json").unlink()  # the next test rebuilds it through validate


def test_cli_validate_layers(outlier: dict) -> None:
    bundle = outlier["bundles"]["ort-int8"]
    out = CliRunner().invoke(cli, ["validate", str(bundle.path), "--data", str(outlier["root"] / "data.npz"),
                                   "--labels", "label", "--layers"])
    from onnxsmith.errors import CheckFailedError

    assert isinstance(out.exception, CheckFailedError)  # plain int8 fails validation (exit 6), and says which layer
    assert "first layer past the tolerance: conv3 (r3)" in out.output
    assert "## Per-layer divergence" in (bundle.path / "report.md").read_text()


def test_cli_debug_diverge_bad_input(outlier: dict, tmp_path: Path) -> None:
    from onnxsmith.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["debug", "diverge", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    bundle = outlier["bundles"]["ort-fp32"]
    with pytest.raises(SystemExit) as exit_info:
        main(["debug", "diverge", str(bundle.path), "--min-cosine", "2"])
    assert exit_info.value.code == 2


def test_write_divergence_rebuilds_the_report_from_the_record(outlier: dict) -> None:
    bundle = outlier["bundles"]["ort-fp32"]
    record = write_divergence(bundle, diverge(bundle, outlier["data"], samples=4))
    assert record["first"] is None and "No layer exceeds the tolerance" in (bundle.path / "report.md").read_text()
