"""OpenVINO int8: the NNCF-quantized IR is reused by compiles that change only runtime settings (optimize's knob
steps: threads, streams, hint, pinning), never by one whose quantization would differ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnxsmith
from onnxsmith.build.compile import compile_model
from onnxsmith.data.sources import open_dataset
from onnxsmith.model import load_model
from onnxsmith.profiles import load_profile
from onnxsmith.targets import load_target

pytest.importorskip("openvino")
pytest.importorskip("nncf")
DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"


def _int8(tmp_path: Path, name: str, **options: object) -> tuple[dict, object]:
    model = load_model(DIGITS / "digits_cnn.onnx")
    calibration = open_dataset(str(DIGITS / "calibration.npz"), model.inputs)
    bundle = compile_model(model, load_target("host"), profile=load_profile("quick"), output=tmp_path / name,
                           backend="openvino", precision="int8", calibration=calibration, options=options)
    manifest = json.loads((tmp_path / name / "manifest.json").read_text())
    return manifest, bundle


def test_runtime_knobs_reuse_the_quantized_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a cache of its own: the worker's shared cache may already hold other tests' int8 IRs
    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "cache"))
    first, parent = _int8(tmp_path, "parent")
    quantization = first["artifact"]["metadata"]["quantization"]
    assert "reused_from" not in quantization and quantization["fake_quantize_nodes"] > 0
    entries = list((Path(onnxsmith.build.cache.cache_root()) / "openvino-int8").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.xml").is_file()
    name = parent.inputs[0].name
    feed = {name: open_dataset(str(DIGITS / "validation.npz"), parent.inputs).arrays[name][:1]}
    with parent.load_runner() as runner:
        expected = next(iter(runner.run(feed).values()))
    for step, options in (("threads", {"num_threads": 1}), ("pinning", {"pinning": False}),
                          ("hint", {"performance_hint": "throughput"})):
        # was: NNCF calibrated again for every knob (a knob only changes what compile_model gets)
        manifest, bundle = _int8(tmp_path, step, **options)
        reused = manifest["artifact"]["metadata"]["quantization"]
        assert reused["reused_from"] == str(entries[0])
        assert any("NNCF calibration not run again" in n for n in manifest["artifact"]["notes"])
        with bundle.load_runner() as runner:  # the same int8 program, other runtime settings
            np.testing.assert_allclose(next(iter(runner.run(feed).values())), expected, rtol=1e-4,
                                       atol=1e-4)
    other, _ = _int8(tmp_path, "subset", subset_size=2)  # quantization settings are in the key
    assert "reused_from" not in other["artifact"]["metadata"]["quantization"]
    assert len(list((Path(onnxsmith.build.cache.cache_root()) / "openvino-int8").iterdir())) == 2


def test_overflow_fix_is_a_quantization_setting_and_a_ladder_variant_without_vnni(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NNCF's overflow fix (7-bit weights for AVX2-without-VNNI CPUs) is an int8 option in the quantization key,
    recorded in the artifact, and offered as a ladder variant when this CPU has AVX2 but no VNNI."""
    import onnxsmith.optimize.ladder_steps as ladder_steps
    from onnxsmith.registry import get_backend

    monkeypatch.setenv("ONNXSMITH_CACHE_DIR", str(tmp_path / "cache"))
    default, _ = _int8(tmp_path, "default")
    fixed, _ = _int8(tmp_path, "fixed", overflow_fix="enable")
    assert default["artifact"]["metadata"]["quantization"]["overflow_fix"] == "NNCF's default"
    quantization = fixed["artifact"]["metadata"]["quantization"]
    assert quantization["overflow_fix"] == "enable" and "reused_from" not in quantization  # its own calibration
    assert len(list((Path(onnxsmith.build.cache.cache_root()) / "openvino-int8").iterdir())) == 2

    host, backend = load_target("host"), get_backend("openvino")
    monkeypatch.setattr(ladder_steps, "avx2_without_vnni", lambda: True)
    variants = backend.ladder_variants(host, "int8")
    assert [v.options for v in variants] == [{}, {"overflow_fix": "enable"}] and "VNNI" in variants[1].change
    monkeypatch.setattr(ladder_steps, "avx2_without_vnni", lambda: False)
    assert len(backend.ladder_variants(host, "int8")) == 1
