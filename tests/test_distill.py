"""Distillation (onnxsmith distill) and the student as a ladder step (optimize --student)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import cli

pytest.importorskip("torch")
DIGITS = Path(__file__).resolve().parents[1] / "onnxsmith" / "examples" / "digits"
TEACHER = str(DIGITS / "digits_cnn.onnx")
MLP = "onnxsmith.examples.digits.student:mlp"


def test_distill_trains_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    from onnxsmith.torchin.distill import Settings, distill

    out = tmp_path / "d"
    settings = Settings(epochs=6, seed=1)
    seen: list[int] = []

    def interrupt(line, _total) -> None:
        seen.append(line.epoch)
        if line.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(TEACHER, MLP, train_spec=str(DIGITS / "train.npz"), val_spec=str(DIGITS / "validation.npz"),
                labels="label", output=out, settings=settings, on_epoch=interrupt)
    from onnxsmith.torchin.distill import work_dir

    # the run trains beside -o (.d.distilling) and is renamed to -o only when finished
    assert (work_dir(out) / "checkpoint.pt").is_file() and (work_dir(out) / "checkpoint.json").is_file()
    assert not out.exists()
    record = distill(TEACHER, MLP, train_spec=str(DIGITS / "train.npz"), val_spec=str(DIGITS / "validation.npz"),
                     labels="label", output=out, settings=settings, on_epoch=lambda line, _: seen.append(line.epoch))
    assert record["resumed"] and seen == [1, 2, 3, 4, 5, 6] and record["epochs"] == 6
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5, 6]
    assert record["parameters"]["student"] == 7212 and record["parameters"]["teacher"] == 40394
    assert record["validation"]["samples"] == 360 and record["validation"]["student_accuracy"] > 0.8
    assert record["export"]["check"]["cosine_min"] >= 0.9999 and record["export"]["outputs"] == ["logits"]
    assert record["latency_ms"]["student"] > 0 and record["latency_ms"]["teacher"] > 0
    assert json.loads((out / "distill.json").read_text())["status"] == "done" and not work_dir(out).exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json", "checkpoint.pt", "distill.json",
                                                     "student.onnx"]
    # a rerun of the same distillation finds it done; other settings are refused, not silently mixed
    again = distill(TEACHER, MLP, train_spec=str(DIGITS / "train.npz"), val_spec=str(DIGITS / "validation.npz"),
                    labels="label", output=out, settings=settings)
    assert again["identity"] == record["identity"] and again["train_seconds"] == record["train_seconds"]


def test_distill_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["distill", TEACHER, "--data", str(DIGITS / "train.npz"), "-o", str(tmp_path / "d")]
    code, _, err = cli([*base, "--student", "tests.torch_models:not_a_module", "--epochs", "1"], capsys)
    assert code == 2 and "not a torch.nn.Module" in err
    code, _, err = cli([*base, "--student", str(DIGITS / "digits_cnn.onnx"), "--epochs", "1"], capsys)
    assert code == 2 and "invalid --student" in err
    code, _, err = cli([*base, "--student", MLP, "--epochs", "1", "--labels", "nope"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_optimize_student_is_a_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxsmith.torchin.distill import Settings, distill

    distill(TEACHER, MLP, train_spec=str(DIGITS / "train.npz"), val_spec=str(DIGITS / "validation.npz"),
            labels="label", output=tmp_path / "student", settings=Settings(epochs=40))
    code, out, err = cli(["optimize", TEACHER, "--profile", "quick", "--backend", "onnxruntime", "--data",
                          str(DIGITS / "validation.npz"), "--labels", "label", "--calibration",
                          str(DIGITS / "calibration.npz"), "--student", str(tmp_path / "student"),
                          "--max-accuracy-drop", "5%", "--keep-steps", "-o", str(tmp_path / "opt"), "--json"], capsys)
    assert code == 0, err
    card = json.loads(out)
    steps = {s["name"]: s for s in card["steps"]}
    student = steps["student"]
    assert student["parent"] == "baseline" and student["change"].startswith("architecture: the distilled student")
    assert student["status"] != "failed" and student["accuracy"] is not None and student["samples_checked"] == 360
    assert student["size_bytes"] < steps["baseline"]["size_bytes"]
    assert any(n.startswith("student ") for n in card["notes"])
    assert "student-onnxruntime-int8" in steps and steps["student-onnxruntime-int8"]["parent"] == "student"
    assert "student" in (tmp_path / "opt" / "card.md").read_text()
    manifest = json.loads((tmp_path / "opt" / student["bundle"] / "manifest.json").read_text())
    assert manifest["model"]["export"]["from"] == f"{MLP} (distilled)"
    code, _, err = cli(["optimize", TEACHER, "--student", MLP, "-o", str(tmp_path / "opt2")], capsys)
    assert code == 2 and "--train-data" in err


@pytest.mark.slow
def test_digits_student_acceptance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The acceptance run: <= 1/4 of the teacher's parameters, <= 3 minutes, within 1 point, lower latency."""
    code, out, err = cli(["distill", TEACHER, "--student", MLP, "--data", str(DIGITS / "train.npz"), "--val",
                          str(DIGITS / "validation.npz"), "--labels", "label", "--minutes", "3", "-o",
                          str(tmp_path / "d"), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["parameters"]["ratio"] <= 0.25 and record["train_seconds"] <= 180
    val = record["validation"]
    assert val["samples"] == 360 and val["teacher_accuracy"] - val["student_accuracy"] <= 0.01
    assert record["latency_ms"]["student"] < record["latency_ms"]["teacher"]


def test_pytorch_teacher_runs_eagerly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    train = np.load(DIGITS / "train.npz")
    np.savez(tmp_path / "train.npz", input=train["image"][:256], label=train["label"][:256])
    code, out, err = cli(["distill", "onnxsmith.examples.digits.train:build_model", "--shape", "input=1x1x8x8",
                          "--student", MLP, "--data", str(tmp_path / "train.npz"), "--labels", "label",
                          "--epochs", "2", "-o", str(tmp_path / "d"), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["epochs"] == 2 and record["export"]["outputs"] == ["output"]
    assert record["parameters"]["student"] == 7212


class _Payload:
    """Unpickling this runs a command: what a hostile checkpoint.pt would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_is_checked_against_its_record_and_never_unpickled_as_code(tmp_path: Path) -> None:
    import hashlib

    import torch

    from onnxsmith.torchin.distill import Settings, distill, work_dir
    from onnxsmith.errors import UserInputError

    out = tmp_path / "d"
    kwargs = dict(train_spec=str(DIGITS / "train.npz"), labels="label", output=out, settings=Settings(epochs=4))

    def stop(line, _total) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(TEACHER, MLP, **kwargs, on_epoch=stop)
    checkpoint, meta_path = work_dir(out) / "checkpoint.pt", work_dir(out) / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    marker = tmp_path / "executed"
    torch.save({"identity": meta["identity"], "student": _Payload(marker)}, checkpoint)
    with pytest.raises(UserInputError, match="does not match the sha256"):  # refused before it is opened
        distill(TEACHER, MLP, **kwargs)
    meta_path.write_text(json.dumps({**meta, "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}))
    with pytest.raises(UserInputError, match="does not load as tensors"):  # the record matches: weights_only
        distill(TEACHER, MLP, **kwargs)
    meta_path.write_text(json.dumps({**meta, "identity": "another run"}))
    with pytest.raises(UserInputError, match="another teacher"):
        distill(TEACHER, MLP, **kwargs)
    meta_path.unlink()
    with pytest.raises(UserInputError, match="no readable record"):
        distill(TEACHER, MLP, **kwargs)
    assert not marker.exists() and not out.exists()
