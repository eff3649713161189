"""The bundled example model (onnxsmith/examples/digits): it loads, its data fits, and it is accurate."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxsmith
from onnxsmith.data.sources import open_dataset
from onnxsmith.model import load_model

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"
MEASURED_ACCURACY = 0.9833  # ONNX Runtime on validation.npz when the model was trained (354 / 360)
MIN_ACCURACY = 0.95


def _onnxruntime_accuracy(model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": images})[0]
    assert logits.shape == (len(images), 10)
    return float((logits.argmax(axis=1) == labels).mean())


def test_files_are_shipped_and_small() -> None:
    for name in ("digits_cnn.onnx", "calibration.npz", "validation.npz", "train.py", "README.md"):
        assert (DIGITS / name).is_file(), name
    assert (DIGITS / "digits_cnn.onnx").stat().st_size < 1_000_000


def test_model_loads_with_dynamic_batch() -> None:
    model = load_model(DIGITS / "digits_cnn.onnx")
    assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("image", "float32", (1, 1, 8, 8))]
    assert [(s.name, s.dtype, s.shape) for s in model.outputs] == [("logits", "float32", (1, 10))]
    assert model.opset == 17
    batched = load_model(DIGITS / "digits_cnn.onnx", shapes={"image": (8, 1, 8, 8)})
    assert batched.inputs[0].shape == (8, 1, 8, 8) and batched.outputs[0].shape == (8, 10)
    dynamic = load_model(DIGITS / "digits_cnn.onnx", default_batch=None)
    assert dynamic.inputs[0].shape[0] == "N"


def test_data_fits_the_model() -> None:
    model = load_model(DIGITS / "digits_cnn.onnx")
    validation = open_dataset(DIGITS / "validation.npz", model.inputs, labels="label", what="validation data")
    assert len(validation) == 360 and validation.labels is not None
    assert validation.labels.dtype == np.int64 and set(validation.labels.tolist()) == set(range(10))
    assert all(35 <= n <= 37 for n in np.bincount(validation.labels))  # stratified split
    images = validation.arrays["image"]
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    calibration = open_dataset(DIGITS / "calibration.npz", model.inputs, what="calibration data")
    assert len(calibration) == 200 and calibration.labels is None
    # Calibration comes from the training split: no image of it is in the validation set.
    val_rows = {row.tobytes() for row in images}
    assert not any(row.tobytes() in val_rows for row in calibration.arrays["image"])


def test_onnxruntime_accuracy_on_validation() -> None:
    model = load_model(DIGITS / "digits_cnn.onnx", default_batch=None)
    validation = open_dataset(DIGITS / "validation.npz", model.inputs, labels="label")
    accuracy = _onnxruntime_accuracy(DIGITS / "digits_cnn.onnx", validation.arrays["image"], validation.labels)
    assert accuracy >= MIN_ACCURACY
    assert accuracy == pytest.approx(MEASURED_ACCURACY, abs=0.002)  # the file is fixed: so is its accuracy


def test_batch_one_model_agrees_with_batched_run() -> None:
    """The fixed-shape model onnxsmith hands to backends gives the same logits as one batched run."""
    import onnxruntime as ort

    model = load_model(DIGITS / "digits_cnn.onnx")  # batch fixed to 1
    validation = open_dataset(DIGITS / "validation.npz", model.inputs, labels="label")
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    single = np.concatenate([session.run(["logits"], feed)[0] for feed in validation.subset(32).batches(1)])
    full = ort.InferenceSession(str(DIGITS / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    batched = full.run(["logits"], {"image": validation.arrays["image"][:32]})[0]
    np.testing.assert_allclose(single, batched, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("sklearn") is None,
                    reason="retraining needs torch and scikit-learn")
def test_train_script_reproduces_the_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(DIGITS / "train.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=True)
    assert "validation accuracy" in proc.stdout
    with np.load(tmp_path / "validation.npz") as fresh, np.load(DIGITS / "validation.npz") as shipped:
        np.testing.assert_array_equal(fresh["image"], shipped["image"])
        np.testing.assert_array_equal(fresh["label"], shipped["label"])
        images, labels = shipped["image"], shipped["label"]
    assert _onnxruntime_accuracy(tmp_path / "digits_cnn.onnx", images, labels) >= MIN_ACCURACY
