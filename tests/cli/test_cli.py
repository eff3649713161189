"""The command line: every verb, JSON output, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxsmith.cli import main

HEAVY = ("tvm", "openvino", "nncf", "coremltools", "tensorrt", "onnxruntime", "torch", "ray", "numpy", "onnx",
         "scipy", "matplotlib")


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_help_imports_no_heavy_library() -> None:
    code = ("import sys; from onnxsmith.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_full_flow(cnn_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b"
    code, out, _ = cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(bundle), "--json"], capsys)
    assert code == 0 and json.loads(out)["precision_used"] == "fp32"
    code, out, _ = cli(["profile", str(bundle), "-p", "quick", "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["latency_ms"]["p50"] > 0 and record["baseline"]["latency_ms"]["p50"] > 0
    assert record["latency_ms"]["p99"] >= record["latency_ms"]["p50"] and record["throughput_per_s"] > 0
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", input=rng.standard_normal((12, 3, 16, 16)).astype(np.float32),
             label=np.arange(12) % 10)
    code, out, _ = cli(["validate", str(bundle), "--data", str(tmp_path / "val.npz"), "--labels", "label", "--json"],
                       capsys)
    v = json.loads(out)
    assert code == 0 and v["cosine_min"] > 0.9999 and v["top1_agreement"] == 1.0
    assert v["accuracy"] == v["reference_accuracy"]
    np.savez(tmp_path / "x.npz", input=rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    code, out, _ = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz"), "--output", str(tmp_path / "y.npz"),
                        "--json"], capsys)
    assert code == 0 and json.loads(out)["outputs"]["probs"]["shape"] == [3, 10]
    assert np.load(tmp_path / "y.npz")["probs"].shape == (3, 10)
    report = (bundle / "report.md").read_text()
    assert "## Profile" in report and "## Validation" in report and "PASSED" in report


def _assert_one_line_error(code: int, out: str, err: str, expected_code: int, pattern: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and pattern in lines[0]


def test_errors_are_one_line_with_exit_codes(cnn_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "model.onnx"
    text.write_text("hello, I am not a model")
    _assert_one_line_error(*cli(["compile", str(text), "-o", str(tmp_path / "o")], capsys), 2, "not a valid ONNX")
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(cnn_path.read_bytes()[:300])
    _assert_one_line_error(*cli(["inspect", str(truncated)], capsys), 2, "cannot load model")
    _assert_one_line_error(*cli(["compile", str(cnn_path), "-t", "nvidia/nope"], capsys), 2, "unknown target")
    from tests.test_model import _external_model

    escaping = _external_model(tmp_path / "ext" if (tmp_path / "ext").mkdir() is None else tmp_path, "../weights.bin")
    _assert_one_line_error(*cli(["compile", str(escaping)], capsys), 2, "unsafe external data")
    _assert_one_line_error(*cli(["compile", str(cnn_path), "--precision", "int8", "--calibration",
                                 str(tmp_path / "missing.npz")], capsys), 2, "calibration data")
    bundle = tmp_path / "b"
    cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(bundle)], capsys)
    np.savez(tmp_path / "bad.npz", input=np.zeros((1, 3, 8, 8), np.float32))
    _assert_one_line_error(*cli(["run", str(bundle), "--input", str(tmp_path / "bad.npz")], capsys), 2,
                           "does not fit the model")
    np.savez(tmp_path / "bad64.npz", input=np.zeros((1, 3, 16, 16), np.float64))
    _assert_one_line_error(*cli(["run", str(bundle), "--input", str(tmp_path / "bad64.npz")], capsys), 2, "float64")
    artifact = bundle / "artifact" / "model.optimized.onnx"
    data = artifact.read_bytes()
    artifact.unlink()
    artifact.write_bytes(data + b"\0")
    _assert_one_line_error(*cli(["profile", str(bundle)], capsys), 2, "was modified")


def test_targets_and_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["targets", "--json"], capsys)
    ids = [t["id"] for t in json.loads(out)]
    assert code == 0 and ids[0] == "host"
    code, out, _ = cli(["targets", "show", "host", "--json"], capsys)
    assert code == 0 and json.loads(out)["runs_here"]["ok"] is True
    code, out, _ = cli(["doctor", "--json"], capsys)
    backends = {b["name"]: b for b in json.loads(out)["backends"]}
    assert code == 0 and backends["onnxruntime"]["available"] is True
    assert {"openvino", "tvm", "tensorrt", "coreml"} <= set(backends)


def test_inspect_json(cnn_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["inspect", str(cnn_path), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["ops"]["Conv"] == 2 and info["parameters"] == 1562
    # conv1: 1x8x16x16 outputs x 27 MACs, conv2: 1x16x8x8 x 72, fc: 10 x 16 -> FLOPs = 2 x MACs
    assert info["flops"] == 2 * (8 * 16 * 16 * 27 + 16 * 8 * 8 * 72 + 10 * 16)
    ort = next(b for b in info["backends"] if b["backend"] == "onnxruntime")
    assert ort["installed"] and ort["unsupported_ops"] == {}


def test_inspect_reports_dynamic_dims(mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["inspect", str(mlp_path), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["dynamic_inputs"] == {"x": [0]}
    # a dynamic batch alone is fixed to 1 for FLOPs and the per-backend op-support probe, and says so
    assert info["flops"] > 0 and any(b["backend"] == "onnxruntime" and b["unsupported_ops"] == {}
                                     for b in info["backends"])
    assert any("batch dimension fixed to 1" in note for note in info["notes"])


def test_optimize_cli_writes_card_and_bundle(cnn_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "opt"
    code, out, err = cli(["optimize", str(cnn_path), "-b", "onnxruntime", "-p", "quick", "--max-accuracy-drop", "5%",
                          "-o", str(out_dir), "--json"], capsys)
    assert code == 0, err
    card = json.loads(out)
    names = [s["name"] for s in card["steps"]]
    assert names[0] == "baseline" and card["chosen"] in names
    assert all(s["backend"] == "onnxruntime" for s in card["steps"])
    assert all(s["status"] == "failed" or s["latency_p50_ms"] > 0 for s in card["steps"])
    assert {"card.md", "card.html", "card.json", "bundle"} <= {p.name for p in out_dir.iterdir()}
    assert json.loads((out_dir / "bundle" / "manifest.json").read_text())["backend"] == "onnxruntime"
    _assert_one_line_error(*cli(["optimize", str(cnn_path), "-b", "nosuch", "-o", str(tmp_path / "o2")], capsys), 2,
                           "unknown backend 'nosuch'")
