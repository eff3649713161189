"""compile -> bundle -> profile -> validate -> report, with the ONNX Runtime backend (always installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnxsmith
from onnxsmith.build.compile import compile_model
from onnxsmith.data.dataset import Dataset, synthetic
from onnxsmith.errors import BundleError, DataError, UnsupportedError, UserInputError
from onnxsmith.model import load_model
from onnxsmith.profiles import load_profile
from onnxsmith.profiling.run import profile_bundle
from onnxsmith.targets import load_target
from onnxsmith.check.validation import validate_bundle


@pytest.fixture
def bundle(cnn_path: Path, tmp_path: Path) -> onnxsmith.bundle.Bundle:
    return compile_model(load_model(cnn_path), load_target("host"), profile=load_profile("quick"),
                         output=tmp_path / "bundle", backend="onnxruntime")


def test_bundle_has_manifest_checksums_and_report(bundle) -> None:
    m = json.loads((bundle.path / "manifest.json").read_text())
    assert m["backend"] == "onnxruntime" and m["precision_used"] == "fp32"
    assert m["model"]["signature"]["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert set(m["files"]) >= {"artifact/model.optimized.onnx", "reference/model.onnx"}
    assert all(len(d) == 64 for d in m["files"].values())
    assert m["onnxsmith_version"] == onnxsmith.__version__
    assert (bundle.path / "report.md").read_text().startswith("# onnxsmith report")


def test_second_compile_is_a_cache_hit(cnn_path: Path, tmp_path: Path, bundle) -> None:
    again = compile_model(load_model(cnn_path), load_target("host"), profile=load_profile("quick"),
                          output=tmp_path / "again", backend="onnxruntime")
    assert again.manifest["cache"]["hit"] is True
    assert again.manifest["files"] == bundle.manifest["files"]


def test_load_and_run_matches_reference(bundle, cnn_path: Path) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with onnxsmith.load(str(bundle.path)) as b:
        got = b.run({"input": x})["probs"]
    want = ort.InferenceSession(str(cnn_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_wrong_shape_and_dtype_are_clear_errors(bundle) -> None:
    b = onnxsmith.load(str(bundle.path))
    with pytest.raises(DataError, match="wrong shape.*got 1x3x8x8"):
        b.run({"input": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(DataError, match="wrong dtype"):
        b.run({"input": np.zeros((1, 3, 16, 16), np.float64)})
    with pytest.raises(DataError, match="missing input"):
        b.run({})


def test_modified_artifact_is_detected(bundle) -> None:
    path = bundle.path / "artifact" / "model.optimized.onnx"
    data = path.read_bytes()
    path.unlink()  # the file may be a hard link into the cache: replace it instead of editing in place
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match="was modified"):
        onnxsmith.load(str(bundle.path))


def test_backend_version_mismatch_is_refused(bundle) -> None:
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["backend_version"] = "0.0.1"
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    from onnxsmith.signing import seal

    seal(bundle.path, (bundle.path / "manifest.json").read_bytes())  # as if built with that version
    with pytest.raises(BundleError, match="built with onnxruntime 0.0.1"):
        onnxsmith.load(str(bundle.path)).load_runner()


def test_profile_reports_percentiles_baseline_and_efficiency(bundle) -> None:
    result = profile_bundle(bundle, load_profile("quick")).to_json()
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["iterations"] >= 10
    assert result["throughput_per_s"] > 0 and result["peak_rss_mb"] > 10
    assert result["baseline"]["latency_ms"]["p50"] > 0
    assert result["flops"] > 0 and 0 < result["efficiency"] < 5
    assert result["artifact_size_bytes"] == (bundle.path / "artifact" / "model.optimized.onnx").stat().st_size
    assert result["layers"] and result["layers"][0]["time_ms"] >= result["layers"][-1]["time_ms"]


def test_profile_compares_with_the_baseline_in_interleaved_runs_and_records_the_machine(bundle) -> None:
    from onnxsmith.report import write_report

    result = profile_bundle(bundle, load_profile("quick")).to_json()
    comparison = result["comparison"]
    ci = comparison["ratio_p50"]
    assert len(comparison["artifact_runs_p50_ms"]) == len(comparison["baseline_runs_p50_ms"]) == 4  # quick: 4 rounds
    assert ci["paired"] and ci["runs_a"] == 4 and ci["low"] <= ci["ratio"] <= ci["high"]
    env = result["environment"]
    assert env["cpu_model"] and env["usable_cores"] >= 1 and env["load_average_before"] is not None
    assert isinstance(env["busy"], bool) and "frequency_governor" in env
    assert len(result["block_p50_ms"]) >= 1
    bundle.write_json("profile.json", result)
    text = write_report(bundle)
    assert "Interleaved runs (4 of 0.05 s per side, alternating): p50 ratio to the baseline" in text
    assert f"Machine: {env['cpu_model']}" in text


def test_a_significantly_slower_artifact_is_called_out_with_the_faster_choice() -> None:
    from onnxsmith.cli.profile import profile_verdict_lines
    from onnxsmith.profiling.environment import busy_warning
    from onnxsmith.profiling.record import slower_than_baseline
    from onnxsmith.profiling.stats import compare_runs

    slow = compare_runs([2.3, 2.31, 2.28, 2.33, 2.29, 2.3], [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]).to_json()
    record = {"backend": "openvino", "precision_used": "fp32", "comparison": {"ratio_p50": slow},
              "environment": {"busy": True, "load_average_before": 3.1, "usable_cores": 2,
                              "other_processes_cpu_share": 0.4, "cpu_model": "x"}}
    message = slower_than_baseline(record)
    assert message is not None and message.startswith("the openvino fp32 artifact is 2.30x slower than ONNX Runtime fp32")
    assert "the faster choice here is ONNX Runtime fp32 (compile with --backend onnxruntime)" in message
    manifest = {"model": {"source": "m.onnx"}, "target": {"id": "host"}}
    assert ("ONNX Runtime fp32 (onnxsmith compile m.onnx --target host --backend onnxruntime --precision fp32)"
            in (slower_than_baseline(record, manifest) or ""))
    assert "load average 3.1 before the run on 2 cores" in (busy_warning(record["environment"]) or "")
    lines = profile_verdict_lines(record)
    assert any(line.startswith("warning: the openvino fp32 artifact") for line in lines)
    within = compare_runs([1.0, 1.02, 0.99, 1.01], [1.01, 1.0, 1.0, 0.99]).to_json()
    assert slower_than_baseline({**record, "comparison": {"ratio_p50": within}}) is None
    assert busy_warning({"busy": False}) is None


def test_validate_with_labels_keeps_worst_examples(bundle, cnn_path: Path) -> None:
    data = synthetic(load_model(cnn_path), 20, seed=3)
    labels = np.arange(20) % 10
    result = validate_bundle(bundle, Dataset(data.arrays, labels, "test"), keep_worst=3)
    assert result.passed and result.samples == 20
    assert result.cosine_min > 0.9999 and result.top1_agreement == 1.0
    assert result.accuracy == result.reference_accuracy
    assert len(result.worst) == 3
    with np.load(bundle.path / result.worst[0].file) as npz:
        assert set(npz.files) == {"input.input", "artifact.probs", "reference.probs", "label"}


def test_int8_without_calibration_is_refused(cnn_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="needs a backend that offers int8 here")
    with pytest.raises(DataError, match="int8 needs calibration data"):
        compile_model(load_model(cnn_path), load_target("host"), profile=load_profile("quick"),
                      output=tmp_path / "x", backend="openvino", precision="int8")
    assert not (tmp_path / "x").exists()
    # a backend that does not offer int8 is refused for that reason, before any calibration question
    with pytest.raises(UnsupportedError, match="cannot compile int8"):
        compile_model(load_model(cnn_path), load_target("host"), profile=load_profile("quick"),
                      output=tmp_path / "x", backend="onnxruntime", precision="int8")


def test_failed_compile_leaves_no_half_written_bundle(cnn_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown onnxruntime option 'bogus'"):
        compile_model(load_model(cnn_path), load_target("host"), profile=load_profile("quick"),
                      output=tmp_path / "x", backend="onnxruntime", options={"bogus": "1"})
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_gpu_name_match_is_whole_word() -> None:
    from onnxsmith.host import gpu_name_matches

    assert gpu_name_matches("H100", "NVIDIA H100 80GB HBM3")
    assert gpu_name_matches("L4", "NVIDIA L4")
    assert not gpu_name_matches("L4", "NVIDIA L40S")
    assert not gpu_name_matches("A100", "NVIDIA A1000")


def test_a_gpu_target_is_not_satisfied_by_a_gpu_whose_name_contains_its_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The L4 target on a machine whose only GPU is an L40S: refused by TVM's runs_here (it once substring-matched
    the name). Only the device query is replaced, nothing the backend decides."""
    pytest.importorskip("tvm")
    import onnxsmith.compilers.tvm.backend as tvm_backend
    from onnxsmith.registry import get_backend

    l4 = load_target("nvidia/l4")
    monkeypatch.setattr(tvm_backend, "_cuda_device", lambda: "NVIDIA L40S")
    runs = get_backend("tvm").runs_here(l4)
    assert not runs and "L4" in runs.reason and "L40S" in runs.reason, runs
    monkeypatch.setattr(tvm_backend, "_cuda_device", lambda: "NVIDIA L4")
    assert get_backend("tvm").runs_here(l4).ok


def test_transformed_model_keeps_the_original_as_reference(cnn_path: Path, tmp_path: Path) -> None:
    """An int8 QDQ graph run by ONNX Runtime says it is int8, and validates against the fp32 original."""
    from onnxsmith.optimize.passes import get_pass

    original = load_model(cnn_path)
    calibration = synthetic(original, 8)
    done = get_pass("int8_qdq").run(original, calibration=calibration)
    from onnxsmith.model.saving import save_model

    quantized = load_model(save_model(done.model, tmp_path / "q" / "cnn.onnx"))
    bundle = compile_model(quantized, load_target("host"), profile=load_profile("quick"), output=tmp_path / "b",
                           backend="onnxruntime", reference=original)
    assert bundle.manifest["precision_used"] == "int8"
    assert bundle.manifest["model"]["fingerprint"] == quantized.fingerprint
    assert bundle.manifest["reference_fingerprint"] == original.fingerprint
    assert load_model(bundle.path / "reference" / "model.onnx").fingerprint == load_model(original.path).fingerprint


def test_profile_peak_memory_is_the_measuring_process_own(bundle) -> None:
    """Peak RSS comes from the child's VmHWM, not the parent's (ru_maxrss survives fork + exec)."""
    import resource

    ballast = np.ones(300 * 1024 * 1024 // 8)  # grow this process by 300 MB before the child is spawned
    parent_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = profile_bundle(bundle, load_profile("quick"), baseline=False).to_json()
    del ballast
    assert 0 < result["peak_rss_mb"] < parent_peak_mb - 100


def test_validate_and_the_ladder_agree_on_the_same_bundle(cnn_path: Path, tmp_path: Path) -> None:
    """One comparison engine: `validate` and `optimize`'s evaluation give the same cosine, agreement and worst
    examples for one int8 bundle on one labelled data set."""
    from onnxsmith.model.saving import save_model
    from onnxsmith.optimize.evaluate import evaluate, reference_outputs
    from onnxsmith.optimize.passes import get_pass

    original = load_model(cnn_path)
    quantized = load_model(save_model(get_pass("int8_qdq").run(original, calibration=synthetic(original, 8)).model,
                                      tmp_path / "q" / "cnn.onnx"))
    bundle = compile_model(quantized, load_target("host"), profile=load_profile("quick"), output=tmp_path / "b",
                           backend="onnxruntime", reference=original)
    data = synthetic(original, 40, seed=5)
    data = Dataset(data.arrays, np.arange(40) % 10, "labelled")
    validated = validate_bundle(bundle, data, keep_worst=4, min_cosine=0.5)
    evaluated = evaluate(bundle, data, reference_outputs(original, data), tmp_path / "ex", tmp_path, keep_worst=4)
    assert validated.samples == evaluated.samples == 40
    assert validated.cosine_min == pytest.approx(evaluated.cosine_min, abs=1e-8) and validated.cosine_min < 0.99999
    assert validated.top1_agreement == evaluated.agreement and validated.accuracy == evaluated.accuracy
    assert [w.index for w in validated.worst] == [w.index for w in evaluated.worst]
    assert [w.cosine for w in validated.worst] == [w.cosine for w in evaluated.worst]
    for mine, theirs in zip(validated.worst, evaluated.worst):
        with np.load(bundle.path / mine.file) as a, np.load(tmp_path / theirs.npz) as b:
            assert set(a.files) == set(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
