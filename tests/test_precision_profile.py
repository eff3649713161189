"""The precision each layer really ran in, in every profile, and the share of time at each precision."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from onnxsmith.build.compile import compile_model
from onnxsmith.data.dataset import make_dataset
from onnxsmith.model import load_model
from onnxsmith.model.saving import save_model
from onnxsmith.optimize.passes import get_pass
from onnxsmith.plugin import LayerTime
from onnxsmith.profiles import load_profile
from onnxsmith.profiling.measure import precision_shares
from onnxsmith.profiling.record import precision_line
from onnxsmith.profiling.run import profile_bundle
from onnxsmith.report import write_report
from onnxsmith.targets import load_target
from tests.models import make_outlier_cnn, outlier_data

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("prec")
    proto = make_outlier_cnn(channels=16, size=8, depth=4, outliers=())
    onnx.save(proto, root / "m.onnx")
    arrays = outlier_data(proto, 64)
    model = load_model(root / "m.onnx")
    data = make_dataset({"input": arrays["input"]}, arrays["label"], model.inputs, "data", "data.npz")
    profile = dataclasses.replace(load_profile("quick"))
    return {"root": root, "model": model, "data": data, "profile": profile, "target": load_target("host")}


def _profiled(bundle, profile) -> dict:
    record = profile_bundle(bundle, profile, baseline=False).to_json()
    bundle.write_json("profile.json", record)
    write_report(bundle)
    return record


def test_onnxruntime_int8_profile_names_quantized_kernels_and_time_shares(small: dict) -> None:
    qdq = get_pass("int8_qdq").run(small["model"], calibration=small["data"])
    model = load_model(save_model(qdq.model, small["root"] / "q" / "m.onnx"))
    bundle = compile_model(model, small["target"], profile=small["profile"], output=small["root"] / "ort-int8",
                           backend="onnxruntime", reference=small["model"])
    record = _profiled(bundle, small["profile"])
    kinds = {layer["op_type"]: layer["precision"] for layer in record["layers"]}
    assert kinds["QLinearConv"] == "int8" and all(layer["exec_type"] == "CPUExecutionProvider"
                                                   for layer in record["layers"])
    shares = record["layer_precision"]
    assert shares["percent"]["int8"] > 50 and abs(sum(shares["percent"].values()) - 100) < 0.1
    report = (bundle.path / "report.md").read_text()
    assert "**Time at each precision**" in report and "int8 " in report and "| precision |" in report


def test_onnxruntime_fp32_profile_is_all_fp32(small: dict) -> None:
    bundle = compile_model(small["model"], small["target"], profile=small["profile"],
                           output=small["root"] / "ort-fp32", backend="onnxruntime")
    shares = _profiled(bundle, small["profile"])["layer_precision"]
    assert shares["percent"].get("fp32", 0) > 90 and "int8" not in shares["percent"]


def test_openvino_profiles_read_runtime_precision_per_node(small: dict) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    bundle = compile_model(small["model"], small["target"], profile=small["profile"],
                           output=small["root"] / "ov-int8", backend="openvino", precision="int8",
                           calibration=small["data"])
    record = _profiled(bundle, small["profile"])
    convs = [layer for layer in record["layers"] if layer["op_type"] == "Convolution"]
    assert convs and all(layer["precision"] == "int8" for layer in convs)
    assert record["layer_precision"]["percent"]["int8"] > 30
    assert "**Time at each precision**" in (bundle.path / "report.md").read_text()
    fp32 = compile_model(small["model"], small["target"], profile=small["profile"],
                         output=small["root"] / "ov-fp32", backend="openvino", precision="fp32")
    shares = _profiled(fp32, small["profile"])["layer_precision"]
    assert "int8" not in shares["percent"] and shares["percent"].get("fp32", 0) > 50


def test_precision_shares_and_line() -> None:
    layers = [LayerTime("a", "Conv", 3.0, "", "int8"), LayerTime("b", "Conv", 1.0, "", "fp32"),
              LayerTime("c", "Reorder", 1.0, "", "")]
    shares = precision_shares(layers)
    assert shares["percent"] == {"int8": 60.0, "fp32": 20.0, "unknown": 20.0} and shares["layers"]["int8"] == 1
    assert precision_line(shares) == "int8 60.0 % / fp32 20.0 % / unknown 20.0 %"
    assert precision_line(None) == ""


def test_kernel_names_and_records_give_the_precision() -> None:
    from onnxsmith.compilers.openvino.runner import exec_precision
    from onnxsmith.compilers.tensorrt.precision import layer_precision
    from onnxsmith.check.reference import ort_precision

    assert exec_precision("brgconv_avx512_amx_I8") == "int8" and exec_precision("jit_avx512_f32") == "fp32"
    assert exec_precision("brgconv_avx512_amx_bf16") == "bf16" and exec_precision("ref") == ""
    assert ort_precision({"op_name": "QLinearConv"}) == "int8"
    assert ort_precision({"op_name": "Conv", "input_type_shape": [{"float": [1, 3]}, {"float": [3]}]}) == "fp32"
    assert ort_precision({"op_name": "MatMul", "input_type_shape": [{"float16": [1, 3]}]}) == "fp16"
    assert layer_precision({"Name": "conv", "LayerType": "CaskConvolution",
                            "Inputs": [{"Format/Datatype": "Row major Int8 format"}],
                            "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}) == "int8"
    assert layer_precision({"Name": "r", "LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Int8"}]}) == ""
