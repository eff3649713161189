"""Acceptance runs of ``onnxsmith optimize`` (slow: every backend of the host, full measurements).

- the digits example through the CLI with ``--max-accuracy-drop 1%`` on its labelled validation data;
- a ResNet-50 export for ``host``: the pick is no slower than the best of ONNX Runtime fp32, ONNX Runtime int8 QDQ,
  OpenVINO default and OpenVINO int8 (all measured in the same run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxsmith

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"
pytestmark = pytest.mark.slow


def test_digits_optimize_cli_lists_every_step_with_real_accuracy(tmp_path: Path) -> None:
    from onnxsmith.cli import cli

    out = tmp_path / "opt"
    result = CliRunner().invoke(cli, [
        "optimize", str(DIGITS / "digits_cnn.onnx"), "--target", "host", "--max-accuracy-drop", "1%",
        "--data", str(DIGITS / "validation.npz"), "--labels", "label",
        "--calibration", str(DIGITS / "calibration.npz"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    names = [s["name"] for s in card["steps"]]
    assert names[:2] == ["baseline", "simplify"] and "onnxruntime-int8" in names
    measured = [s for s in card["steps"] if s["status"] != "failed"]
    assert len(measured) >= 4
    for step in measured:
        assert step["samples_checked"] == 360 and step["accuracy"] is not None
    table = (out / "card.md").read_text()
    assert all(f"| {name} |" in table for name in names)
    assert any(s["worst"] for s in card["steps"]) and list(out.glob("examples/*/worst-01.png"))
    assert card["chosen"] and (out / "bundle" / "manifest.json").is_file()


def test_resnet50_host_pick_is_no_slower_than_the_usual_candidates(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("openvino")
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import load_model
    from onnxsmith.optimize.ladder import run_ladder
    from onnxsmith.profiles import load_profile
    from onnxsmith.targets import load_target
    from tests.bench.models import export_resnet50, image_batch

    model = load_model(export_resnet50(tmp_path / "resnet50.onnx"))
    data = Dataset({"input": image_batch(32, seed=2)}, None, "generated images (32)")
    calibration = Dataset({"input": image_batch(64, seed=1)}, None, "generated images (64)")
    target = load_target("host")
    # Random weights make top-1 meaningless, so accuracy is not what is judged here: speed is.
    card = run_ladder(model, target, load_profile("balanced"), data=data, calibration=calibration,
                      max_accuracy_drop=1.0, latency_budget_ms=None, output=tmp_path / "out",
                      backends=["openvino", "onnxruntime"])
    by = {s.name: s for s in card.steps}
    default_openvino = "openvino-bf16" if "bf16" in target.precisions else "openvino-fp32"
    rivals = ["baseline", "onnxruntime-int8", default_openvino, "openvino-int8"]
    for name in rivals:
        assert by[name].measured, (name, by[name].reason)
    chosen = by[card.chosen or ""]
    from onnxsmith.optimize.record import runs_ratio

    # not significantly slower than any rival, by the interleaved runs the ladder decided with (a parent kept in
    # place of a child within noise may be a hair slower by the point estimate)
    for name in rivals:
        ci = runs_ratio(chosen, by[name], "latency_p50_ms")
        assert ci is not None and ci.verdict() != "worse", (name, ci)
    print({n: by[n].latency_p50_ms for n in by}, "chosen:", card.chosen)
