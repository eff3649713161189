"""The data layer: every verb's data option (``compile --calibration``, ``validate --data``, ``run --input``,
``profile --input``, ``optimize --data/--calibration``) is read by :func:`open_dataset`, in one of these forms:

- ``data.npz``: one array per model input, named after it, samples along axis 0; other keys are ignored unless named
  by ``labels``. ``data.npy``: the same for a one-input model.
- a folder of ``.npy`` files, either **one file per input** (``<input name>.npy``, samples along axis 0; used when
  every model input has its file) or, for a one-input model, **one file per sample** (any other names, read in
  sorted order, each shaped like the input without its batch dim, or with a leading 1). Labels: ``<labels>.npy``
  in the folder when ``labels`` names it.
- an image folder with a ``preprocess.toml`` inside it, or a ``.toml`` file whose ``root`` key names the image
  folder (relative to the file). Images sit in one subfolder per class (the label is the folder's number when every
  folder name is an integer, else its index in ``classes`` or in sorted order), or directly in the folder (no
  labels). Keys: ``input`` (default: the only input), ``resize`` (shorter side, or ``[height, width]``), ``crop``
  (centre crop, ``n`` or ``[height, width]``), ``mode`` (``RGB`` or ``L``), ``scale`` (default 1/255), ``mean`` /
  ``std`` (per channel, after scaling), ``layout`` (``NCHW`` or ``NHWC``), ``classes``.
- ``package.module:function``: a function returning a :class:`~onnxsmith.data.dataset.Dataset`, or an iterable of
  batches, each a dict of arrays named after the inputs (samples along axis 0); with ``labels``, each batch's
  array of that name is taken as labels. At most :data:`MAX_SAMPLES` samples are read.

``.npy`` data is read header first (:mod:`onnxsmith.data.npyfile`): shapes and dtypes are checked against the model and
the bytes to load against a cap (4 GiB, ``$ONNXSMITH_MAX_DATA_BYTES``) before anything is decompressed; image
folders are checked against the cap before any image is decoded. ``limit`` reads only the first samples when the data
has no labels (``validate --samples``, ``profile``'s first batch). Every form is then checked against the model's
inputs with :func:`onnxsmith.data.dataset.check_against_model` and, unless ``finite=False`` (``run``), refused when a float
input holds NaN or infinity.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.data.dataset import Dataset, check_against_model, make_dataset
from onnxsmith.deploy.quoting import file_stems
from onnxsmith.errors import DataError, OnnxsmithError, first_line
from onnxsmith.data.npyfile import MAX_BYTES_VARIABLE, ArrayFiles, ArrayHeader, check_budget, max_bytes
from onnxsmith.units import fmt_bytes

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.model import TensorSpec

MAX_SAMPLES = 100_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PREPROCESS_FILE = "preprocess.toml"
FORMS = ("an .npz (one array per input, samples along axis 0), a .npy (one-input model), a folder of .npy files, "
         "an image folder with preprocess.toml (or its .toml spec), or package.module:function")
"""The forms every data option takes, as the CLI's help states them."""
_GIVE = "give an .npz, a .npy, a folder of .npy files or images, a .toml preprocessing spec, or package.module:function"
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def open_dataset(spec: str | Path, model_inputs: tuple[TensorSpec, ...], labels: str | None = None,
                 what: str = "data", *, finite: bool = True, limit: int | None = None,
                 known_batch: Collection[str] | None = None) -> Dataset:
    """Read ``spec`` (a file, folder, TOML spec or ``module:function``) as a Dataset that fits ``model_inputs``.

    ``what`` names the data in messages (``calibration data``); ``finite=False`` lets NaN/Inf through (``run``);
    ``limit`` reads at most that many samples when the data has no labels."""
    spec = str(spec)
    if limit is not None and limit <= 0:
        limit = None
    path = Path(spec)
    if not path.exists() and _CALLABLE.match(spec):
        return from_callable(spec, model_inputs, labels, what, finite=finite, limit=limit, known_batch=known_batch)
    if not path.exists():
        raise DataError(f"cannot read {what} '{spec}'", "no such file or folder, and not a module:function",
                        _GIVE)
    if path.is_file() and path.suffix in (".npz", ".npy"):
        return from_array_file(path, model_inputs, labels, what, finite=finite, limit=limit,
                               known_batch=known_batch)
    if path.is_file() and path.suffix == ".toml":
        return from_image_spec(path, model_inputs, what, finite=finite, limit=limit, known_batch=known_batch)
    if path.is_dir():
        if (path / PREPROCESS_FILE).is_file():
            return from_image_spec(path / PREPROCESS_FILE, model_inputs, what, finite=finite, limit=limit,
                                   known_batch=known_batch)
        if any(path.glob("*.npy")):
            return from_npy_folder(path, model_inputs, labels, what, finite=finite, limit=limit,
                                   known_batch=known_batch)
        if _find_images(path):
            raise DataError(f"cannot read {what} folder '{path}'", "it holds images but no preprocessing spec",
                            f"add {path / PREPROCESS_FILE} with e.g. resize = 256, crop = 224, mean = [0.485, "
                            "0.456, 0.406], std = [0.229, 0.224, 0.225], layout = \"NCHW\"")
        raise DataError(f"cannot read {what} folder '{path}'", "it holds no .npy files and no images",
                        _GIVE)
    raise DataError(f"cannot read {what} '{path}'", f"unknown file type '{path.suffix}'", _GIVE)


# --- .npz, .npy and folders of .npy: header first -----------------------------------------------------------------

def _rows(header: ArrayHeader, spec: TensorSpec, limit: int | None) -> int | None:
    """Rows to read for ``limit`` samples; an array shaped exactly like a static input is one feed, read whole."""
    if limit is None or not header.shape or header.shape == tuple(spec.shape) or header.shape[0] <= limit:
        return None
    return limit


def _read_inputs(source: ArrayFiles, model_inputs: tuple[TensorSpec, ...], labels: str | None, where: str,
                 limit: int | None, label_hint: str, known_batch: Collection[str] | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Check the headers against the model and the byte cap, then read the inputs (and labels) only."""
    label_header = None
    if labels is not None:
        if labels not in source:
            raise DataError(f"cannot use {where}", f"it has no {label_hint.format(labels)} for the labels",
                            f"arrays present: {', '.join(source.names) or 'none'}")
        label_header = source.header(labels)
    # headers stand in for the arrays (shape, ndim, dtype); other keys are listed by name, never read
    present: dict[str, Any] = dict.fromkeys(n for n in source.names if n != labels)
    structured, struct_parts = _read_structured(source, model_inputs, where)
    present.update(structured)
    present.update({s.name: source.header(s.name) for s in model_inputs if s.is_tensor and s.name in present})
    whole, _ = check_against_model(present, model_inputs, where, known_batch, labelled=label_header is not None)
    rows = {s.name: None if label_header is not None or s.name in whole else _rows(source.header(s.name), s, limit)
            for s in model_inputs if s.is_tensor}
    parts = [(source.header(n), r) for n, r in rows.items()] + struct_parts
    check_budget(parts + ([(label_header, None)] if label_header is not None else []), where)
    dtypes = {s.name: s.dtype for s in model_inputs}
    arrays: dict[str, Any] = {n: source.read(n, r, as_type=dtypes[n]) for n, r in rows.items()}
    arrays.update(structured)
    return arrays, None if labels is None else source.read(labels)


def _read_structured(source: ArrayFiles, model_inputs: tuple[TensorSpec, ...], where: str
                     ) -> tuple[dict[str, Any], list[tuple[ArrayHeader, int | None]]]:
    """The sequence and optional inputs, each assembled from its keys (``NAME.0``, ``NAME.length``, ``NAME.none``:
    :mod:`onnxsmith.data.values`) after their headers passed the byte cap; with the headers read, for the total."""
    from onnxsmith.data.values import assemble, keys_for

    values: dict[str, Any] = {}
    parts: list[tuple[ArrayHeader, int | None]] = []
    for spec in model_inputs:
        if not spec.wrap:
            continue
        keys = keys_for(spec.name, source.names)
        headers = [(source.header(k), None) for k in keys]
        check_budget(parts + headers, where)
        parts += headers
        values[spec.name] = assemble(spec, keys, source.read, where)
    return values, parts


def from_array_file(path: Path, model_inputs: tuple[TensorSpec, ...], labels: str | None = None,
                    what: str = "data", *, finite: bool = True, limit: int | None = None,
                 known_batch: Collection[str] | None = None) -> Dataset:
    """An ``.npz`` (one array per input) or an ``.npy`` (one-input model), read header first."""
    where = f"{what} '{path}'"
    if path.suffix == ".npy":
        if len(model_inputs) != 1:
            raise DataError(f"cannot use {where}", f"the model has {len(model_inputs)} inputs; a .npy holds one",
                            "save an .npz with one array per input")
        if labels is not None:
            raise DataError(f"cannot use {where}", f"a .npy holds no '{labels}' array for the labels",
                            "save an .npz with the inputs and the labels")
        source = ArrayFiles.files({model_inputs[0].name: path}, where)
    else:
        source = ArrayFiles.npz(path, where)
    with source:
        arrays, label_array = _read_inputs(source, model_inputs, labels, where, limit, "array '{}'", known_batch)
    return make_dataset(arrays, label_array, model_inputs, where, str(path), files=(path,), finite=finite,
                        known_batch=known_batch)


def from_npy_folder(folder: Path, model_inputs: tuple[TensorSpec, ...], labels: str | None = None,
                    what: str = "data", *, finite: bool = True, limit: int | None = None,
                 known_batch: Collection[str] | None = None) -> Dataset:
    """One ``<input>.npy`` per input (samples along axis 0), or one ``.npy`` per sample for a one-input model."""
    import numpy as np

    where = f"{what} folder '{folder}'"
    files = {p.stem: p for p in sorted(folder.glob("*.npy"))}
    names = [s.name for s in model_inputs]
    stems = file_stems(names)
    for name in names:  # an input whose name is no safe file name is saved under its safe stem (deploy/example/)
        if name not in files and stems[name] in files:
            files[name] = files.pop(stems[name])
    if labels is not None and labels not in files:
        raise DataError(f"cannot use {where}", f"it has no '{labels}.npy' for the labels",
                        f"files present: {', '.join(sorted(files)) or 'none'}")
    if all(n in files for n in names) or any(s.wrap for s in model_inputs):
        arrays, label_array = _read_inputs(ArrayFiles.files(files, where), model_inputs, labels, where, limit,
                                           "'{}.npy'", known_batch)
        return make_dataset(arrays, label_array, model_inputs, where, str(folder), files=(folder,), finite=finite,
                            known_batch=known_batch)
    if len(model_inputs) != 1:
        missing = [n for n in names if n not in files]
        raise DataError(f"cannot use {where}", f"no file for input(s) {', '.join(missing)}; with several inputs "
                        "the folder must hold one <input name>.npy per input", f"save {', '.join(n + '.npy' for n in names)}")
    spec = model_inputs[0]
    source = ArrayFiles.files(files, where)
    label_array = None
    if labels is not None:
        check_budget([(source.header(labels), None)], where)
        label_array = source.read(labels)
        del files[labels]
    if len(files) > MAX_SAMPLES:
        raise DataError(f"cannot use {where}", f"{len(files)} sample files, more than the {MAX_SAMPLES} read")
    chosen = list(files)[:limit] if limit is not None and label_array is None else list(files)
    headers = source.headers(chosen)
    for name, header in headers.items():
        one = header.shape[1:] if header.ndim == len(spec.shape) and header.shape[:1] == (1,) else header.shape
        if len(one) != len(spec.shape) - 1:
            raise DataError(f"cannot use {where}", f"sample '{name}.npy' has shape {'x'.join(map(str, header.shape))}; "
                            f"one sample of input '{spec.name}' ({spec.shape_text()}) has {len(spec.shape) - 1} dims",
                            f"save one sample per file, or name the file {spec.name}.npy to give all samples at once")
    shapes = {h.shape[1:] if h.ndim == len(spec.shape) else h.shape for h in headers.values()}
    if len(shapes) > 1:
        raise DataError(f"cannot use {where}", f"sample files have different shapes: "
                        f"{', '.join('x'.join(map(str, s)) for s in sorted(shapes))}")
    check_budget([(h, None) for h in headers.values()], where)
    samples = [source.read(name, as_type=spec.dtype) for name in chosen]
    samples = [a[0] if a.ndim == len(spec.shape) else a for a in samples]
    return make_dataset({spec.name: np.stack(samples)}, label_array, model_inputs, where,
                        f"{folder} ({len(samples)} files)", files=(folder,), finite=finite, known_batch=known_batch)


# --- module:function ----------------------------------------------------------------------------------------------

def _import_function(spec: str, where: str) -> Any:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] or str(Path.cwd()) in sys.path:
            raise DataError(f"cannot import {where}", first_line(exc), "check the module name and PYTHONPATH") from exc
        sys.path.insert(0, str(Path.cwd()))  # `module:function` names a file in the working directory
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc2:
            raise DataError(f"cannot import {where}", first_line(exc2),
                            "check the module name, or add its folder to PYTHONPATH") from exc2
        finally:
            sys.path.remove(str(Path.cwd()))
    except Exception as exc:
        raise DataError(f"cannot import {where}", f"importing '{module_name}' raised {first_line(exc)}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"cannot use {where}", f"module '{module_name}' has no function '{func_name}'")
    return func


def from_callable(spec: str, model_inputs: tuple[TensorSpec, ...], labels: str | None = None,
                  what: str = "data", *, finite: bool = True, limit: int | None = None,
                 known_batch: Collection[str] | None = None) -> Dataset:
    """Call ``module:function``; it returns a Dataset or an iterable of batches (dicts of arrays).

    Batches are taken until ``limit`` samples (without labels) or :data:`MAX_SAMPLES`, and while their bytes stay
    under the cap."""
    import numpy as np

    where = f"{what} '{spec}'"
    structured = [s.name for s in model_inputs if s.wrap]
    if structured:
        raise DataError(f"cannot use {where}", f"input '{structured[0]}' is a sequence or optional, which "
                        "module:function data does not carry", "save the inputs as an .npz (a sequence NAME as "
                        "NAME.0, NAME.1, ..., NAME.length; see onnxsmith.data.values)")
    most = limit if limit is not None and labels is None else MAX_SAMPLES
    cap = max_bytes()
    func = _import_function(spec, where)
    try:
        produced = func()
    except OnnxsmithError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {where}", f"the function raised {type(exc).__name__}: {first_line(exc)}") from exc
    if isinstance(produced, Dataset):
        if produced.labels is None and len(produced) > most:
            produced = produced.subset(most)
        return make_dataset(dict(produced.arrays), produced.labels, model_inputs, where, f"{spec} ({produced.source})",
                            finite=finite, known_batch=known_batch)
    if isinstance(produced, Mapping):
        produced = [produced]
    if not isinstance(produced, Iterable):
        raise DataError(f"cannot use {where}", f"the function returned {type(produced).__name__}",
                        "return a Dataset or an iterable of dicts mapping input names to arrays")
    parts: dict[str, list[np.ndarray]] = {}
    label_parts: list[np.ndarray] = []
    count = loaded = 0
    for index, batch in enumerate(produced):
        if not isinstance(batch, Mapping):
            raise DataError(f"cannot use {where}", f"batch {index} is a {type(batch).__name__}, not a dict of arrays",
                            "yield dicts mapping input names to arrays (samples along axis 0)")
        batch = {k: np.asarray(v) for k, v in batch.items()}
        if labels is not None:
            if labels not in batch:
                raise DataError(f"cannot use {where}", f"batch {index} has no '{labels}' array for the labels",
                                f"arrays present: {', '.join(batch)}")
            label_parts.append(batch.pop(labels))
        check_against_model(batch, model_inputs, f"{where} batch {index}", known_batch,
                            labelled=True)
        for spec_ in model_inputs:
            parts.setdefault(spec_.name, []).append(batch[spec_.name])
            loaded += batch[spec_.name].nbytes
        if loaded > cap:
            raise DataError(f"{where} is too large", f"its batches passed {fmt_bytes(cap)} after {index + 1} "
                            "batch(es)", f"yield fewer samples, or raise the cap with {MAX_BYTES_VARIABLE}=16GiB")
        count += len(next(iter(batch.values())))
        if count >= most:
            break
    if not parts:
        raise DataError(f"cannot use {where}", "the function produced no batches")
    arrays = {k: np.concatenate(v)[:most] for k, v in parts.items()}
    label_array = np.concatenate(label_parts)[:most] if label_parts else None
    return make_dataset(arrays, label_array, model_inputs, where, spec, finite=finite, known_batch=known_batch)


# --- image folders ------------------------------------------------------------------------------------------------

def _find_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pair(f: Any, key: str) -> tuple[int, int] | int | None:
    value = f.get(key, (int, list), None)
    if value is None:
        return None
    if isinstance(value, int):
        if value <= 0:
            raise f._fail(key, "must be positive")
        return value
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise f._fail(key, "must be a positive integer or [height, width]")
    return (value[0], value[1])


def _floats(f: Any, key: str, channels: int) -> tuple[float, ...] | None:
    value = f.get(key, list, None)
    if value is None:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or len(value) not in (1, channels):
        raise f._fail(key, f"must be a list of 1 or {channels} numbers (one per channel)")
    if key == "std" and any(v == 0 for v in value):
        raise f._fail(key, "must not contain 0")
    return tuple(float(v) for v in value)


def from_image_spec(spec_file: Path, model_inputs: tuple[TensorSpec, ...], what: str = "data", *,
                    finite: bool = True, limit: int | None = None,
                    known_batch: Collection[str] | None = None) -> Dataset:
    """Read an image folder as preprocessed by the TOML spec ``spec_file`` (the byte cap checked before decoding)."""
    import numpy as np

    from onnxsmith.tomlutil import Fields, read_toml

    try:
        data = read_toml(spec_file)
    except OnnxsmithError as exc:
        raise DataError(exc.what, exc.why, exc.hint) from exc
    f = Fields(data, spec_file)
    try:
        f.unknown({"root", "input", "resize", "crop", "mode", "scale", "mean", "std", "layout", "classes"})
        root = spec_file.parent / f.get("root", str, ".")
        names = [s.name for s in model_inputs]
        input_name = f.get("input", str, names[0] if len(names) == 1 else ...)
        if input_name not in names:
            raise f._fail("input", f"names no model input (inputs: {', '.join(names)})")
        spec = next(s for s in model_inputs if s.name == input_name)
        layout = f.get("layout", str, "NCHW", choices=("NCHW", "NHWC"))
        if len(spec.shape) != 4:
            raise f._fail("input", f"names '{input_name}' of shape {spec.shape_text()}; image inputs are 4-D")
        channel_dim = 1 if layout == "NCHW" else 3
        channels = spec.shape[channel_dim]
        if channels not in (1, 3):
            raise f._fail("layout", f"puts the channels of {spec.shape_text()} at dim {channel_dim}, which is "
                          f"{channels}; images have 1 or 3 channels")
        mode = f.get("mode", str, "L" if channels == 1 else "RGB", choices=("L", "RGB"))
        if (mode == "L") != (channels == 1):
            raise f._fail("mode", f"is {mode} but input '{input_name}' has {channels} channel(s)")
        resize = _pair(f, "resize")
        crop = _pair(f, "crop")
        scale = f.get("scale", float, 1 / 255)
        mean = _floats(f, "mean", channels) or (0.0,)
        std = _floats(f, "std", channels) or (1.0,)
        classes = f.str_list("classes", ())
    except OnnxsmithError as exc:
        raise DataError(exc.what, exc.why, exc.hint) from exc
    if len(model_inputs) != 1:
        raise DataError(f"cannot use image spec '{spec_file}'", f"the model has {len(model_inputs)} inputs; an image "
                        "folder feeds one", "give the data as .npz or module:function")
    if not root.is_dir():
        raise DataError(f"cannot use image spec '{spec_file}'", f"key 'root' names '{root}', which is not a folder")
    images = _find_images(root)
    if not images:
        raise DataError(f"cannot use image folder '{root}'", f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    if len(images) > MAX_SAMPLES:
        images = images[:MAX_SAMPLES]
    height, width = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else (spec.shape[1], spec.shape[2])
    if not isinstance(height, int) or not isinstance(width, int):
        raise DataError(f"cannot use image spec '{spec_file}'", f"input '{input_name}' has dynamic spatial dims",
                        "fix them with --shape")
    label_array = _labels_for(images, root, classes, spec_file)
    if label_array is None and limit is not None:
        images = images[:limit]
    dtype = spec.dtype if spec.dtype in ("float16", "float32", "float64") else "float32"
    sample_bytes = height * width * channels * max(4, np.dtype(dtype).itemsize)
    if len(images) * sample_bytes > max_bytes():
        raise DataError(f"{what} image folder '{root}' is too large", f"{len(images)} images of {height}x{width}x"
                        f"{channels} take {fmt_bytes(len(images) * sample_bytes)}, more than the "
                        f"{fmt_bytes(max_bytes())} cap", f"use fewer images, or raise the cap with "
                        f"{MAX_BYTES_VARIABLE}=16GiB")
    pixels = np.stack([_preprocess(p, mode, resize, crop, (height, width), spec_file) for p in images])
    pixels = pixels * scale
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)  # HWC broadcast
    if layout == "NCHW":
        pixels = pixels.transpose(0, 3, 1, 2)
    source = f"{root} ({len(images)} images, preprocessed by {spec_file.name})"
    return make_dataset({input_name: np.ascontiguousarray(pixels.astype(dtype))}, label_array, model_inputs,
                        f"image folder '{root}'", source, files=(spec_file, root), finite=finite,
                        known_batch=known_batch)


def _labels_for(images: list[Path], root: Path, classes: tuple[str, ...], spec_file: Path) -> np.ndarray | None:
    import numpy as np

    folders = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in images]
    if all(f is None for f in folders):
        return None
    if any(f is None for f in folders):
        raise DataError(f"cannot use image folder '{root}'", "some images sit in class subfolders and some do not",
                        "put every image in a subfolder named after its class")
    names = sorted(set(folders))  # type: ignore[arg-type]
    if classes:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DataError(f"cannot use image spec '{spec_file}'", f"subfolder '{unknown[0]}' is not in 'classes'")
        index = {c: i for i, c in enumerate(classes)}
    elif all(n.isdigit() for n in names):
        index = {n: int(n) for n in names}
    else:
        index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[f] for f in folders], dtype=np.int64)  # type: ignore[index]


RESIZE_MAX_FACTOR = 64
"""A resize before a centre crop may make at most this many times the input's pixels (PIL's own
``MAX_IMAGE_PIXELS`` caps it too): a tiny PNG with a huge ``resize`` otherwise took gigabytes."""


def _check_resize(path: Path, target: tuple[int, int], size: tuple[int, int], cropped: bool, spec_file: Path) -> None:
    """Refuse a resize whose result could not become the input's size, before any pixel is allocated."""
    from PIL import Image

    (w, h), (height, width) = target, size
    if not cropped and (h, w) != size:
        raise DataError(f"image '{path}' does not fit the model", f"after preprocessing it is {h}x{w}, the input takes "
                        f"{height}x{width}", f"set resize/crop in {spec_file} so the result is {height}x{width}")
    limit = min(RESIZE_MAX_FACTOR * height * width, Image.MAX_IMAGE_PIXELS or RESIZE_MAX_FACTOR * height * width)
    if w * h > limit:
        raise DataError(f"cannot preprocess '{path}'", f"resizing it to {h}x{w} makes {w * h:,} pixels, more than "
                        f"{RESIZE_MAX_FACTOR}x the {height}x{width} the input takes",
                        f"lower 'resize' in {spec_file} (e.g. to {max(height, width)})")


def _preprocess(path: Path, mode: str, resize: tuple[int, int] | int | None, crop: tuple[int, int] | int | None,
                size: tuple[int, int], spec_file: Path) -> np.ndarray:
    """One image as a float32 HWC array: convert, resize, centre-crop, check the final size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if isinstance(resize, int):
                w, h = img.size
                s = resize / min(w, h)
                target: tuple[int, int] | None = (max(1, round(w * s)), max(1, round(h * s)))
            else:
                target = None if resize is None else (resize[1], resize[0])
            if target is not None:
                _check_resize(path, target, size, crop is not None, spec_file)
            img = img.convert(mode)
            if target is not None:
                img = img.resize(target, Image.BILINEAR)
            if crop is not None:
                ch, cw = (crop, crop) if isinstance(crop, int) else crop
                w, h = img.size
                if ch > h or cw > w:
                    raise DataError(f"cannot preprocess '{path}'", f"crop {ch}x{cw} is larger than the image "
                                    f"({h}x{w} after resizing)", f"raise 'resize' in {spec_file}")
                left, top = (w - cw) // 2, (h - ch) // 2
                img = img.crop((left, top, left + cw, top + ch))
            arr = np.asarray(img, dtype=np.float32)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image '{path}'", first_line(exc)) from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[:2] != size:
        raise DataError(f"image '{path}' does not fit the model", f"after preprocessing it is "
                        f"{arr.shape[0]}x{arr.shape[1]}, the input takes {size[0]}x{size[1]}",
                        f"set resize/crop in {spec_file} so the result is {size[0]}x{size[1]}")
    return arr
