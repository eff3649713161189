"""One data layer: every verb's data option takes a folder of .npy files and an image folder, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.test_cli import _assert_one_line_error, cli

SAMPLES = 5


@pytest.fixture
def npy_folder(tmp_path: Path) -> Path:
    """One .npy per sample of the CNN's 1x3x16x16 input (some with their batch dim of 1)."""
    folder = tmp_path / "npy"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(SAMPLES):
        sample = rng.standard_normal((3, 16, 16)).astype(np.float32)
        np.save(folder / f"s{i:02d}.npy", sample[None] if i % 2 else sample)
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """16x16 RGB PNGs in class subfolders 0/ and 1/, with a preprocess.toml (scale to [0, 1], NCHW)."""
    root = tmp_path / "images"
    rng = np.random.default_rng(4)
    for label, count in (("0", 2), ("1", 2)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(root / label / f"{i}.png")
    (root / "preprocess.toml").write_text('layout = "NCHW"\n')
    return root


def _image_pixels(root: Path) -> np.ndarray:
    """What the preprocessing must produce: sorted files, pixels / 255, HWC -> CHW."""
    files = sorted(p for p in root.rglob("*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) / 255 for p in files])


def _npy_samples(folder: Path) -> np.ndarray:
    return np.stack([np.load(p).reshape(3, 16, 16) for p in sorted(folder.glob("*.npy"))])


def test_compile_calibration_takes_npy_and_image_folders(cnn_path: Path, tmp_path: Path, npy_folder: Path,
                                                         image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for folder, count in ((npy_folder, SAMPLES), (image_folder, 4)):
        out = tmp_path / f"c-{folder.name}"
        code, stdout, err = cli(["compile", str(cnn_path), "-b", "onnxruntime", "--calibration", str(folder),
                                 "-o", str(out), "--json"], capsys)
        assert code == 0, err
        calibration = json.loads((out / "manifest.json").read_text())["calibration"]
        assert calibration["samples"] == count and str(folder) in calibration["source"]


def test_validate_data_takes_npy_and_image_folders(bundle: Path, npy_folder: Path, image_folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["validate", str(bundle), "--data", str(npy_folder), "--samples", "3", "--json"], capsys)
    record = json.loads(out)
    assert code == 0, err
    assert record["samples"] == 3 and str(npy_folder) in record["data"] and record["cosine_min"] > 0.9999
    code, out, err = cli(["validate", str(bundle), "--data", str(image_folder), "--json"], capsys)
    record = json.loads(out)
    assert code == 0, err
    # the class subfolders are the labels: accuracy is measured on all 4 images, not on the first --samples
    assert record["samples"] == 4 and "4 images" in record["data"] and record["accuracy"] is not None


def test_run_input_takes_npy_and_image_folders(bundle: Path, tmp_path: Path, npy_folder: Path, image_folder: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for folder, expected in ((npy_folder, _npy_samples(npy_folder)), (image_folder, _image_pixels(image_folder))):
        np.savez(tmp_path / "same.npz", input=expected)
        code, _, err = cli(["run", str(bundle), "--input", str(folder), "--output", str(tmp_path / "a.npz")], capsys)
        assert code == 0, err
        code, _, err = cli(["run", str(bundle), "--input", str(tmp_path / "same.npz"), "--output",
                            str(tmp_path / "b.npz")], capsys)
        assert code == 0, err
        got, want = np.load(tmp_path / "a.npz")["probs"], np.load(tmp_path / "b.npz")["probs"]
        assert got.shape == (len(expected), 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # the folder fed exactly these samples


def test_profile_input_takes_npy_and_image_folders(bundle: Path, npy_folder: Path, image_folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for folder in (npy_folder, image_folder):
        code, out, err = cli(["profile", str(bundle), "-p", "quick", "--no-baseline", "--seconds", "0.1",
                              "--iterations", "5", "--input", str(folder), "--json"], capsys)
        assert code == 0, err
        record = json.loads(out)
        assert record["inputs"].startswith(str(folder))  # one sample of exactly the input shape: one feed


def test_optimize_takes_an_image_folder_and_an_npy_folder(cnn_path: Path, tmp_path: Path, npy_folder: Path,
                                                          image_folder: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["optimize", str(cnn_path), "-b", "onnxruntime", "-p", "quick", "--max-accuracy-drop", "50%",
                          "--data", str(image_folder), "--calibration", str(npy_folder), "-o", str(tmp_path / "o"),
                          "--json"], capsys)
    assert code in (0, 6), err
    card = json.loads(out)
    assert str(image_folder) in card["validation"] and "4 images" in card["validation"]
    int8 = [s for s in card["steps"] if s["precision"].startswith("int8") and s["status"] != "failed"]
    assert int8 and str(npy_folder) in json.dumps(int8[0]), card["steps"]  # calibrated on the .npy folder


def test_every_verb_gives_the_same_error_for_the_same_bad_data(bundle: Path, cnn_path: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    commands = {
        "calibration data": ["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(tmp_path / "x"),
                             "--calibration", str(empty)],
        "validation data": ["validate", str(bundle), "--data", str(empty)],
        "input data": ["run", str(bundle), "--input", str(empty)],
    }
    for what, args in commands.items():
        _assert_one_line_error(*cli(args, capsys), 2, f"cannot read {what} folder '{empty}': it holds no .npy "
                                                      "files and no images")
    _assert_one_line_error(*cli(["profile", str(bundle), "--input", str(empty)], capsys), 2, "no .npy files")
    _assert_one_line_error(*cli(["optimize", str(cnn_path), "--data", str(empty), "-o", str(tmp_path / "o")],
                                capsys), 2, "no .npy files")


@pytest.mark.parametrize("verb, option", [("compile", "--calibration"), ("validate", "--data"), ("run", "--input"),
                                          ("profile", "--input"), ("optimize", "--data"),
                                          ("optimize", "--calibration")])
def test_help_names_every_data_form(verb: str, option: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli([verb, "--help"], capsys)
    text = " ".join(out.split())
    start = text.index(option + " DATA")
    help_text = text[start:start + 400]
    assert code == 0
    for form in (".npz", "folder of .npy files", "image folder with preprocess.toml", "package.module:function",
                 "ONNXSMITH_MAX_DATA_BYTES"):
        assert form in help_text, (verb, option, help_text)
