"""The ladder end to end on real models: measured steps, real validation accuracy, the chosen bundle, the card."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxsmith
from onnxsmith.bundle import Bundle
from onnxsmith.errors import UserInputError
from onnxsmith.model import load_model
from onnxsmith.data.sources import open_dataset
from onnxsmith.optimize.ladder import run_ladder
from onnxsmith.profiles import load_profile
from onnxsmith.targets import load_target
from tests.models import make_cnn

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits_card(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The digits CNN through the ladder on ONNX Runtime only, quick profile, batch sweep 1 and 4."""
    model = load_model(DIGITS / "digits_cnn.onnx")
    data = open_dataset(str(DIGITS / "validation.npz"), model.inputs, labels="label")
    calibration = open_dataset(str(DIGITS / "calibration.npz"), model.inputs)
    profile = dataclasses.replace(load_profile("quick"), batch_sizes=(1, 4))
    output = tmp_path_factory.mktemp("ladder") / "out"
    card = run_ladder(model, load_target("host"), profile, data=data, calibration=calibration,
                      max_accuracy_drop=0.01, latency_budget_ms=None, output=output, backends=["onnxruntime"])
    return output, card


def test_every_step_is_measured_on_the_real_validation_images(digits_card: tuple[Path, object]) -> None:
    output, card = digits_card
    names = [s.name for s in card.steps]  # type: ignore[attr-defined]
    assert names[:3] == ["baseline", "simplify", "onnxruntime-int8"]
    assert names[3:] == [f"{card.chosen}@b1..4"]  # one dynamic-batch artifact: ONNX Runtime compiles ranges
    by = {s.name: s for s in card.steps}  # type: ignore[attr-defined]
    for step in card.steps:  # type: ignore[attr-defined]
        assert step.status in ("chosen", "rejected"), (step.name, step.reason)
        assert step.samples_checked == 360 and "360 of 360 samples" in step.checked
        assert step.latency_p50_ms > 0 and step.latency_p99_ms >= step.latency_p50_ms
        assert step.size_bytes > 0 and step.peak_memory_mb > 0 and step.throughput_per_s > 0
    assert by["baseline"].accuracy == pytest.approx(354 / 360)  # the README's figure, measured again here
    assert by["baseline"].agreement == 1.0 and by["baseline"].cosine_min == pytest.approx(1.0)
    int8 = by["onnxruntime-int8"]
    assert int8.precision == "int8" and int8.parent == "simplify" and int8.size_bytes < by["simplify"].size_bytes / 2
    assert int8.pass_record["name"] == "int8_qdq" and int8.pass_record["details"]["calibration"]["samples"] == 128
    assert int8.cosine_min < 1.0 and 0.95 < int8.accuracy <= 1.0
    assert by["simplify"].pass_record["tool"].startswith("onnxslim")
    assert card.constraints.metric == "accuracy"  # type: ignore[attr-defined]
    assert card.chosen in by and by[card.chosen].status == "chosen"  # type: ignore[attr-defined]
    sweep = next(s for s in card.steps if s.name.endswith("@b1..4"))  # type: ignore[attr-defined]
    assert sweep.batch == 4 and not sweep.candidate and "not a candidate" in sweep.reason
    assert any("one artifact for batch 1..4, profiled at each size" in n for n in sweep.notes)
    bundle = json.loads((output / "steps" / sweep.name / "manifest.json").read_text()) \
        if (output / "steps" / sweep.name).is_dir() else None
    assert bundle is None or bundle["shape_ranges"]["image"] == {"min": [1, 1, 8, 8], "opt": [4, 1, 8, 8],
                                                                 "max": [4, 1, 8, 8]}
    points = [p["batch"] for p in card.batching["sweep"]["points"]]  # type: ignore[attr-defined]
    assert points == [1, 4]


def test_failure_examples_are_kept(digits_card: tuple[Path, object]) -> None:
    output, card = digits_card
    baseline = card.step("baseline")  # type: ignore[attr-defined]
    assert len(baseline.worst) == 5
    assert all(e.wrong for e in baseline.worst)  # fp32 gets 6 of 360 wrong: those come first
    for example in baseline.worst:
        with np.load(output / example.npz) as npz:
            assert npz["input.image"].shape == (1, 1, 8, 8)
            assert int(npz["label"][0]) == example.label
            assert int(npz["artifact.logits"].argmax()) == example.prediction
        assert (output / str(example.png)).read_bytes()[:4] == b"\x89PNG"


def test_chosen_bundle_card_and_batching(digits_card: tuple[Path, object]) -> None:
    output, card = digits_card
    bundle = Bundle.open(output / "bundle")  # checksums verified
    chosen = card.step(card.chosen)  # type: ignore[attr-defined]
    assert bundle.backend == chosen.backend and (output / "bundle" / "profile.json").is_file()
    assert not (output / "steps").exists() and not (output / ".models").exists()
    record = json.loads((output / "card.json").read_text())
    assert record["chosen"] == card.chosen and len(record["steps"]) == 4  # type: ignore[attr-defined]
    html = (output / "card.html").read_text()
    assert all(f'data-step="{s.name}"' in html for s in card.steps)  # type: ignore[attr-defined]
    batching = card.batching  # type: ignore[attr-defined]
    assert [p["batch"] for p in batching["sweep"]["points"]] == [1, 4]
    assert batching["best"] is not None and batching["settings"]


def test_output_directory_is_not_clobbered(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    model = load_model(DIGITS / "digits_cnn.onnx")
    with pytest.raises(UserInputError, match="is not empty"):
        run_ladder(model, load_target("host"), load_profile("quick"), data=None, calibration=None,
                   max_accuracy_drop=0.01, latency_budget_ms=None, output=tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_unreachable_budget_says_which_constraint_failed_and_pruning_is_measured(tmp_path: Path) -> None:
    onnx.save_model(make_cnn(), str(tmp_path / "cnn.onnx"))
    model = load_model(tmp_path / "cnn.onnx")
    card = run_ladder(model, load_target("host"), load_profile("quick"), data=None, calibration=None,
                      max_accuracy_drop=0.01, latency_budget_ms=1e-6, output=tmp_path / "out",
                      backends=["onnxruntime"], prune=True)
    assert card.chosen is None and card.bundle is None
    assert card.failure is not None and card.failure.startswith("latency: the fastest step that meets the accuracy "
                                                                "constraint")
    assert "over the 0.000 ms budget" in card.failure
    assert card.constraints.metric == "agreement"  # no labels: top-1 agreement with fp32
    by = {s.name: s for s in card.steps}
    assert {"prune-magnitude", "prune-2:4"} <= set(by)
    prune = by["prune-magnitude"]
    assert prune.pass_record["details"]["sparsity_pruned_weights"] == pytest.approx(0.5, abs=0.01)
    assert any("faster with the sparse weights" in n for n in prune.notes)
    assert any("no validation data" in n for n in card.notes)
    assert "Nothing met the constraints: latency" in (tmp_path / "out" / "card.md").read_text()
    assert not (tmp_path / "out" / "bundle").exists()


def test_a_far_slower_step_is_cut_after_a_probe_but_still_validated(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With the screening factor at 0 every step after the first is 'far slower': it is probed, not profiled in
    full, validated on the real data, rejected with the reason, and never chosen."""
    from onnxsmith.optimize import steps

    monkeypatch.setattr(steps, "SCREEN_FACTOR", 0.0)
    model = load_model(DIGITS / "digits_cnn.onnx")
    data = open_dataset(str(DIGITS / "validation.npz"), model.inputs, labels="label")
    profile = dataclasses.replace(load_profile("quick"), batch_sizes=(1,), ladder=("fp32",))
    card = run_ladder(model, load_target("host"), profile, data=data, calibration=None, max_accuracy_drop=0.01,
                      latency_budget_ms=None, output=tmp_path / "out", backends=["onnxruntime"])
    by = {s.name: s for s in card.steps}
    assert card.chosen == "baseline"
    cut = by["simplify"]
    assert cut.screened and cut.status == "rejected" and "probe" in cut.reason and "slower than baseline" in cut.reason
    assert cut.latency_p50_ms > 0 and cut.accuracy == pytest.approx(by["baseline"].accuracy)
    assert cut.samples_checked == 360
    assert "probe" in (tmp_path / "out" / "card.md").read_text()


def test_optimize_writes_a_triton_repository_with_the_simulations_setting(digits_card: tuple[Path, object]) -> None:
    """The chosen bundle's serving/ parses with Triton's own schema; the batching values are the simulation's."""
    pytest.importorskip("tritonclient")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    output, card = digits_card
    best = card.batching["best"]  # type: ignore[attr-defined]
    text = (output / "bundle" / "serving" / "triton" / "digits_cnn" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == best["max_batch"]
    assert list(config.dynamic_batching.preferred_batch_size) == [best["max_batch"]]
    assert config.dynamic_batching.max_queue_delay_microseconds == round(best["max_delay_ms"] * 1000)
    assert [i.name for i in config.input] == ["image"] and list(config.input[0].dims) == [1, 8, 8]
    native = text_format.Parse((output / "bundle" / "serving" / "triton-native" / "digits_cnn" / "config.pbtxt")
                               .read_text(), model_config_pb2.ModelConfig())
    assert native.platform == "onnxruntime_onnx" and native.max_batch_size == 0  # a static artifact
    record = json.loads((output / "bundle" / "serving" / "serving.json").read_text())
    assert record["best"] == best and record["sweep"] == card.batching["sweep"]  # type: ignore[attr-defined]
    assert "max_queue_delay_microseconds" in (output / "bundle" / "serving" / "README.md").read_text()


@pytest.mark.parametrize("flags,expected", [(frozenset({"avx2", "fma"}), True),
                                            (frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}), False)])
def test_int8_on_a_cpu_without_vnni_measures_the_recommended_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    flags: frozenset, expected: bool) -> None:
    """On AVX2 without VNNI (an AMD Zen 3, an older Xeon) ONNX Runtime int8 is also tried with 7-bit weights and as
    U8U8, each a step whose parent is the default U8S8 step; on a VNNI CPU only the default is. The ladder's view of
    the CPU's flags is what is set here (the variants run on whatever this machine is)."""
    import onnxsmith.optimize.ladder_steps as ladder_steps

    real = ladder_steps.avx2_without_vnni
    assert real(flags) == expected
    monkeypatch.setattr(ladder_steps, "avx2_without_vnni", lambda: real(flags))  # the ladder sees these flags
    onnx.save_model(make_cnn(), str(tmp_path / "cnn.onnx"))
    card = run_ladder(load_model(tmp_path / "cnn.onnx"), load_target("host"), load_profile("quick"), data=None,
                      calibration=None, max_accuracy_drop=0.05, latency_budget_ms=None, output=tmp_path / "out",
                      backends=["onnxruntime"])
    by = {s.name: s for s in card.steps}
    variants = {"onnxruntime-int8-reduce-range", "onnxruntime-int8-u8u8"}
    assert (variants <= set(by)) == expected and bool(variants & set(by)) == expected
    if expected:
        for name in variants:
            assert by[name].parent == "onnxruntime-int8" and by[name].status != "failed", by[name]
        assert "reduce_range" in by["onnxruntime-int8-reduce-range"].change
        assert "uint8 weights, uint8 activations" in by["onnxruntime-int8-u8u8"].pass_record["summary"]
        assert "(7-bit: reduce_range)" in by["onnxruntime-int8-reduce-range"].pass_record["summary"]
        assert any("AVX2 without VNNI" in n for n in card.notes)
