"""``onnxsmith probe``: measured peaks through a real backend, stored per device fingerprint, used by profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxsmith.cli import main


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    assert exit_info.value.code == 0, out.err
    return out.out


def test_probe_stores_peaks_that_profiles_doctor_and_targets_show_use(capsys: pytest.CaptureFixture[str],
                                                                      cnn_path: Path, tmp_path: Path) -> None:
    from onnxsmith.probe import host_fingerprint, peaks_path

    record = json.loads(_cli(["probe", "--backend", "onnxruntime", "--quick", "--json"], capsys))
    fp32 = record["peaks"]["fp32"]
    assert [s["shape"] for s in fp32["shapes"]] == ["matmul 256x2048x2048", "conv 256x56x56 3x3 256"]
    assert fp32["tflops"] == max(s["tflops"] for s in fp32["shapes"]) > 0
    assert record["memory_bandwidth_gbps"] > 0 and record["fingerprint"] == host_fingerprint()
    assert json.loads(peaks_path().read_text())["peaks"] == record["peaks"]

    doctor = json.loads(_cli(["doctor", "--json"], capsys))
    assert doctor["measured_peaks"]["peaks"]["fp32"]["tflops"] == fp32["tflops"]
    assert "measured peaks (onnxruntime" in _cli(["targets", "show", "host"], capsys)

    bundle = tmp_path / "b"
    _cli(["compile", str(cnn_path), "-t", "host", "-b", "onnxruntime", "-p", "quick", "-o", str(bundle)], capsys)
    text = _cli(["profile", str(bundle), "-p", "quick"], capsys)
    assert "of measured peak" in text and "of nominal peak" in text
    profile = json.loads((bundle / "profile.json").read_text())
    assert profile["measured_peak_tflops"] == fp32["tflops"]
    assert profile["efficiency_of_measured_peak"] == pytest.approx(profile["achieved_tflops"] / fp32["tflops"],
                                                                   rel=1e-3)
    assert profile["efficiency"] == pytest.approx(profile["achieved_tflops"] / profile["peak_tflops"], rel=1e-3)


def test_without_a_probe_profiles_say_so(capsys: pytest.CaptureFixture[str], cnn_path: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "fresh-cache"))  # no probe stored there
    bundle = tmp_path / "b"
    _cli(["compile", str(cnn_path), "-t", "host", "-b", "onnxruntime", "-p", "quick", "-o", str(bundle)], capsys)
    text = _cli(["profile", str(bundle), "-p", "quick", "--no-baseline"], capsys)
    assert "measured peak: not probed" in text and "of nominal peak" in text
    assert "none yet (run 'onnxsmith probe')" in _cli(["doctor"], capsys)
