"""Every data form the data layer reads, and the errors for data that does not fit the model."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxsmith.errors import DataError
from onnxsmith.model import TensorSpec
from onnxsmith.data.sources import open_dataset

IMAGE = (TensorSpec("image", "float32", (1, 1, 8, 8)),)
RGB = (TensorSpec("input", "float32", (1, 3, 6, 6)),)
TWO = (TensorSpec("a", "float32", (1, 4)), TensorSpec("b", "int64", (1, 2)))


def _images(n: int, shape: tuple[int, ...] = (1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(0).random((n, *shape)).astype(np.float32)


def test_npz_and_npy(tmp_path: Path) -> None:
    np.savez(tmp_path / "v.npz", image=_images(5), label=np.arange(5))
    data = open_dataset(str(tmp_path / "v.npz"), IMAGE, labels="label")
    assert len(data) == 5 and data.labels is not None and list(data.labels) == [0, 1, 2, 3, 4]
    np.save(tmp_path / "x.npy", _images(3))
    assert len(open_dataset(str(tmp_path / "x.npy"), IMAGE)) == 3


def test_npy_folder_with_one_file_per_input(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((6, 4), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((6, 2), np.int64))
    np.save(tmp_path / "label.npy", np.arange(6))
    data = open_dataset(str(tmp_path), TWO, labels="label")
    assert set(data.arrays) == {"a", "b"} and len(data) == 6 and data.labels is not None


def test_npy_folder_with_one_file_per_sample(tmp_path: Path) -> None:
    images = _images(4)
    for i, image in enumerate(images):
        np.save(tmp_path / f"sample-{i:03d}.npy", image if i % 2 else image[None])  # with or without batch dim
    data = open_dataset(str(tmp_path), IMAGE)
    assert data.arrays["image"].shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(data.arrays["image"], images)
    assert "4 files" in data.source


def test_npy_folder_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((6, 4), np.float32))
    with pytest.raises(DataError, match=r"no file for input\(s\) b.*one <input name>\.npy per input"):
        open_dataset(str(tmp_path), TWO)
    np.save(tmp_path / "b.npy", np.zeros((6, 2), np.float32))
    with pytest.raises(DataError, match=r"array 'b' is float32, the input takes int64.*astype\('int64'\)"):
        open_dataset(str(tmp_path), TWO)
    odd = tmp_path / "odd"
    odd.mkdir()
    np.save(odd / "s1.npy", np.ones((8, 8), np.float32))
    with pytest.raises(DataError, match="sample 's1.npy' has shape 8x8"):
        open_dataset(str(odd), IMAGE)


def _write_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (10, 12),
                        mode: str = "L") -> None:
    rng = np.random.default_rng(1)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")


def test_image_folder_with_preprocess_toml(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _write_image_folder(root, {"0": 2, "1": 3, "10": 1})
    (root / "preprocess.toml").write_text('resize = 9\ncrop = 8\nmean = [0.5]\nstd = [0.25]\nlayout = "NCHW"\n')
    data = open_dataset(str(root), IMAGE)
    assert data.arrays["image"].shape == (6, 1, 8, 8) and data.arrays["image"].dtype == np.float32
    assert data.labels is not None and sorted(data.labels.tolist()) == [0, 0, 1, 1, 1, 10]  # numeric folder names
    # the preprocessing really ran: pixels were scaled to [0, 1], then normalised by mean/std
    assert -2.0 - 1e-6 <= float(data.arrays["image"].min()) and float(data.arrays["image"].max()) <= 2.0 + 1e-6
    img = Image.open(root / "1" / "0.png").convert("L")
    w, h = img.size
    scale = 9 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    left, top = (img.size[0] - 8) // 2, (img.size[1] - 8) // 2
    expected = (np.asarray(img.crop((left, top, left + 8, top + 8)), np.float32) / 255 - 0.5) / 0.25
    index = [i for i, label in enumerate(data.labels) if label == 1][0]
    np.testing.assert_allclose(data.arrays["image"][index, 0], expected, rtol=1e-5, atol=1e-5)


def test_toml_spec_file_nhwc_rgb_and_named_classes(tmp_path: Path) -> None:
    _write_image_folder(tmp_path / "pics", {"cat": 2, "dog": 1}, size=(6, 6), mode="RGB")
    spec = tmp_path / "spec.toml"
    spec.write_text('root = "pics"\nlayout = "NHWC"\nclasses = ["dog", "cat"]\nmean = [0.485, 0.456, 0.406]\n'
                    "std = [0.229, 0.224, 0.225]\n")
    model_inputs = (TensorSpec("input", "float32", (1, 6, 6, 3)),)
    data = open_dataset(str(spec), model_inputs)
    assert data.arrays["input"].shape == (3, 6, 6, 3)
    assert data.labels is not None and sorted(data.labels.tolist()) == [0, 1, 1]  # dog = 0, cat = 1


def test_image_errors_name_the_file_and_key(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _write_image_folder(root, {"a": 1})
    with pytest.raises(DataError, match="holds images but no preprocessing spec"):
        open_dataset(str(root), IMAGE)
    (root / "preprocess.toml").write_text("size = 8\n")
    with pytest.raises(DataError, match=r"key 'size' is not known"):
        open_dataset(str(root), IMAGE)
    (root / "preprocess.toml").write_text("resize = [10, 12]\n")  # no crop: 10x12 does not fit 8x8
    with pytest.raises(DataError, match=r"after preprocessing it is 10x12, the input takes 8x8"):
        open_dataset(str(root), IMAGE)
    (root / "preprocess.toml").write_text('mode = "RGB"\nresize = 8\ncrop = 8\n')
    with pytest.raises(DataError, match=r"key 'mode' is RGB but input 'image' has 1 channel"):
        open_dataset(str(root), IMAGE)
    (root / "preprocess.toml").write_text("crop = 20\n")
    with pytest.raises(DataError, match=r"crop 20x20 is larger than the image"):
        open_dataset(str(root), IMAGE)


def test_a_huge_resize_of_a_tiny_image_is_refused_before_it_allocates(tmp_path: Path) -> None:
    """Two 8x8 PNGs with resize = 100000 asked for ~10 G pixels each; now a one-line error, within a few MB."""
    import resource

    root = tmp_path / "images"
    _write_image_folder(root, {"0": 1, "1": 1}, size=(8, 8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for spec in ("resize = 100000\ncrop = 8\n", "resize = [60000, 60000]\ncrop = 8\n"):
        (root / "preprocess.toml").write_text(spec)
        with pytest.raises(DataError, match=r"more than 64x the 8x8 the input takes.*lower 'resize'"):
            open_dataset(str(root), IMAGE)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no gigabyte image
    (root / "preprocess.toml").write_text("resize = 64\ncrop = 8\n")  # 64x the pixels: still allowed
    assert open_dataset(str(root), IMAGE).arrays["image"].shape == (2, 1, 8, 8)


def test_module_function_returning_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(textwrap.dedent("""
        import numpy as np
        from onnxsmith.data.dataset import Dataset

        def batches():
            for i in range(3):
                yield {"image": np.full((4, 1, 8, 8), i, np.float32), "label": np.full(4, i)}

        def whole():
            return Dataset({"image": np.zeros((2, 1, 8, 8), np.float32)}, None, "made")

        def wrong_dtype():
            return [{"image": np.zeros((2, 1, 8, 8), np.float64)}]

        def broken():
            raise RuntimeError("no data today")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_data", raising=False)
    data = open_dataset("my_data:batches", IMAGE, labels="label")
    assert len(data) == 12 and data.labels is not None and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(open_dataset("my_data:whole", IMAGE)) == 2
    with pytest.raises(DataError, match=r"batch 0 does not fit the model.*is float64, the input takes float32"):
        open_dataset("my_data:wrong_dtype", IMAGE)
    with pytest.raises(DataError, match="RuntimeError: no data today"):
        open_dataset("my_data:broken", IMAGE)
    with pytest.raises(DataError, match="has no function 'missing'"):
        open_dataset("my_data:missing", IMAGE)
    with pytest.raises(DataError, match="cannot import"):
        open_dataset("no_such_module_xyz:f", IMAGE)


def test_module_function_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_data_mod.py").write_text("import numpy as np\n"
                                             "def f():\n    return {'image': np.zeros((3, 1, 8, 8), np.float32)}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cwd_data_mod", raising=False)
    assert len(open_dataset("cwd_data_mod:f", IMAGE)) == 3
    assert str(tmp_path) not in sys.path


def test_shape_mismatch_and_missing_paths(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", image=np.zeros((2, 1, 7, 8), np.float32))
    with pytest.raises(DataError, match=r"array 'image' has shape 2x1x7x8, the input takes 1x1x8x8"):
        open_dataset(str(tmp_path / "bad.npz"), IMAGE)
    with pytest.raises(DataError, match="no such file or folder"):
        open_dataset(str(tmp_path / "nothing.npz"), IMAGE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .npy files and no images"):
        open_dataset(str(tmp_path / "empty"), IMAGE)
