"""Serving configuration: Triton config.pbtxt parsed with Triton's own schema, OVMS config.json, the batching
values against the simulation's record; and a real Triton server (nvidia-pytriton's tritonserver) on 127.0.0.1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnxsmith
from onnxsmith.bundle import Bundle
from onnxsmith.cli import cli
from onnxsmith.serving.batching import BatchPoint, BatchSweep, plan_batching, simulate
from onnxsmith.serving import plan, served_sweep, write_serving

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits" / "digits_cnn.onnx"


def parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def compile_digits(tmp: Path, backend: str) -> Bundle:
    out = tmp / f"digits-{backend}"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS), "--target", "host", "--backend", backend, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return Bundle.open(out)


SWEEP = BatchSweep((BatchPoint(1, 0.40), BatchPoint(4, 0.70), BatchPoint(8, 1.10)), "measured elsewhere")


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    pytest.importorskip("tritonclient")
    return compile_digits(tmp_path_factory.mktemp("serving"), "onnxruntime")


def test_triton_configs_parse_with_tritons_schema_and_carry_the_simulations_setting(ort_bundle: Bundle) -> None:
    report = plan_batching(SWEEP, 1800.0, 3.0, requests=4000).to_json()
    write_serving(ort_bundle, report, "a test sweep")
    best = report["best"]
    assert best is not None and best["max_batch"] > 1  # at 1800/s batch 1 (2500/s at best) cannot keep p99 in 3 ms
    config = parse(ort_bundle.path / "serving" / "triton" / "digits_cnn" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == best["max_batch"]
    assert list(config.dynamic_batching.preferred_batch_size) == [best["max_batch"]]
    assert config.dynamic_batching.max_queue_delay_microseconds == round(best["max_delay_ms"] * 1000)
    assert config.instance_group[0].count == 1
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters["bundle"] == "../../.." and json.loads(parameters["artifact_batch"])["dynamic"] is False
    native = parse(ort_bundle.path / "serving" / "triton-native" / "digits_cnn" / "config.pbtxt")
    assert native.platform == "onnxruntime_onnx" and native.max_batch_size == 0
    assert list(native.input[0].dims) == [1, 1, 8, 8] and not native.HasField("dynamic_batching")
    assert (ort_bundle.path / "serving" / "triton-native" / "digits_cnn" / "1" / "model.onnx").is_file()
    record = json.loads((ort_bundle.path / "serving" / "serving.json").read_text())
    assert record["best"] == best and record["dynamic_batching"]["max_queue_delay_microseconds"] == \
        config.dynamic_batching.max_queue_delay_microseconds
    readme = (ort_bundle.path / "serving" / "README.md").read_text()
    assert "| 8 | 1.1 |" in readme and "a test sweep" in readme
    Bundle.open(ort_bundle.path)  # the bundle's checksums still hold


def test_instance_group_kind_is_cpu(ort_bundle: Bundle) -> None:
    from tritonclient.grpc import model_config_pb2

    write_serving(ort_bundle, plan_batching(SWEEP, 500.0, 3.0, requests=2000).to_json(), "a test sweep")
    config = parse(ort_bundle.path / "serving" / "triton" / "digits_cnn" / "config.pbtxt")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_openvino_bundle_gets_a_native_openvino_config_and_an_ovms_config(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("tritonclient")
    bundle = compile_digits(tmp_path, "openvino")
    write_serving(bundle, plan_batching(SWEEP, 500.0, 3.0, requests=2000).to_json(), "a test sweep")
    native = parse(bundle.path / "serving" / "triton-native" / "digits_cnn" / "config.pbtxt")
    assert native.backend == "openvino"
    assert {p.name for p in (bundle.path / "serving" / "triton-native" / "digits_cnn" / "1").iterdir()} == \
        {"model.xml", "model.bin"}
    ovms = json.loads((bundle.path / "serving" / "ovms" / "config.json").read_text())["model_config_list"][0]["config"]
    assert ovms["name"] == "digits_cnn" and ovms["target_device"] == "CPU"
    assert ovms["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert (bundle.path / "serving" / "ovms" / "digits_cnn" / "1" / "model.xml").is_file()


def test_a_shape_range_bounds_max_batch_size_and_lets_the_native_backend_batch(ort_bundle: Bundle) -> None:
    """With the dynamic-shapes manifest key (shape_ranges), the range's max bounds the batch in both configs."""
    manifest = json.loads(json.dumps(ort_bundle.manifest))
    manifest["shape_ranges"] = {"image": {"min": [1, 1, 8, 8], "opt": [2, 1, 8, 8], "max": [4, 1, 8, 8]}}
    ranged = Bundle(ort_bundle.path, manifest)
    report = plan_batching(SWEEP, 1800.0, 3.0, requests=4000).to_json()
    record = plan(ranged, report, "test")
    assert record["artifact_batch"] == {"min": 1, "max": 4, "dynamic": True}
    assert record["max_batch_size"] == min(report["best"]["max_batch"], 4)


def test_served_sweep_of_a_static_artifact_runs_the_batch_repeatedly() -> None:
    served = served_sweep(SWEEP, 1, 8, dynamic=False)
    assert [round(served.service_ms(b), 6) for b in (1, 3, 8)] == [0.4, 1.2, 3.2]
    assert served_sweep(SWEEP, 1, 8, dynamic=True) is SWEEP
    two = served_sweep(BatchSweep((BatchPoint(2, 1.0),)), 2, 5, dynamic=False)
    assert two.service_ms(5) == math.ceil(5 / 2) * 1.0


def test_simulated_overheads_add_where_they_are_paid() -> None:
    base = simulate(SWEEP, 50.0, 1, 0.0, requests=4000)
    per_request = simulate(SWEEP, 50.0, 1, 0.0, requests=4000, request_overhead_ms=2.0)
    assert per_request.p50_ms == pytest.approx(base.p50_ms + 2.0) and per_request.utilization == base.utilization
    per_batch = simulate(SWEEP, 50.0, 1, 0.0, requests=4000, batch_overhead_ms=2.0)
    assert per_batch.utilization > base.utilization and per_batch.p50_ms >= base.p50_ms + 2.0


def test_serving_command_needs_a_profile_then_writes_from_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from onnxsmith.cli import main

    bundle = compile_digits(tmp_path, "onnxruntime")
    with pytest.raises(SystemExit) as exc:
        main(["serve-check", str(bundle.path), "--seconds", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "has no serving configuration" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["serving", str(bundle.path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "has no profile" in err and err.count("error:") == 1
    bundle.write_json("profile.json", {"latency_ms": {"p50": 0.05, "p99": 0.08}})
    with pytest.raises(SystemExit) as exc:
        main(["serving", str(bundle.path), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert exc.value.code in (0, None) and record["sweep"]["points"][0]["latency_p50_ms"] == 0.05
    assert record["rate_per_s"] == pytest.approx(0.7 * 1000 / 0.05)
