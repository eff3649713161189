"""Input, calibration and validation data: one :class:`Dataset` abstraction for every stage.

Data is read by :func:`onnxsmith.data.sources.open_dataset` (``.npz``, ``.npy``, folders of ``.npy``, image folders,
``module:function``); this module holds the Dataset, the checks against the model's inputs and generated inputs.

The sample convention: when every array has exactly its input's shape, the file is **one feed** (one sample).
Otherwise the inputs with a batch dimension (a dynamic first dim in the original model, else a first dim equal to
the first input's) hold N samples along axis 0 and are split into feeds of the compiled batch; every other input
(BatchNorm scale, Slice starts, a broadcast operand, a scalar) must have exactly its shape and goes whole into each
feed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.model import LoadedModel, TensorSpec

_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


@dataclasses.dataclass
class Dataset:
    """Samples for a model's inputs: ``arrays[name]`` has samples along axis 0 unless ``name`` is in ``whole``;
    ``labels`` is optional."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "generated"
    files: tuple[Path, ...] = ()
    """The files or folders the samples were read from (an output directory must never contain them)."""
    whole: tuple[str, ...] = ()
    """Arrays that have no sample axis: each goes whole into every feed. All of them: the data is one feed."""
    batch: int = 1
    """Samples per feed (the compiled batch of the split inputs)."""

    @property
    def one_feed(self) -> bool:
        """Every array is fed as it stands, once (one sample)."""
        return all(k in self.whole for k in self.arrays)

    def __len__(self) -> int:
        if self.one_feed:
            return 1
        return len(next(v for k, v in self.arrays.items() if k not in self.whole))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        from onnxsmith.data.values import flatten

        arrays = {k: a for name, value in self.arrays.items() for k, a in flatten(name, value).items()}
        for name in sorted(arrays):
            arr = arrays[name]
            digest.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            digest.update(_contiguous(arr))  # the bytes tobytes() gives, without a copy of a C-order array
        if self.labels is not None:
            digest.update(_contiguous(self.labels))
        return digest.hexdigest()[:16]

    def batches(self, batch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch`` (default :attr:`batch`) samples each, the ``whole`` arrays in every one; a last short
        batch is dropped (compiled shapes are fixed). One feed when :attr:`one_feed`."""
        if self.one_feed:
            yield dict(self.arrays)
            return
        batch = batch or self.batch
        for start in range(0, len(self) - batch + 1, batch):
            yield {k: v if k in self.whole else v[start:start + batch] for k, v in self.arrays.items()}

    def subset(self, count: int) -> Dataset:
        if self.one_feed:
            return self
        return dataclasses.replace(self, arrays={k: v if k in self.whole else v[:count] for k, v in self.arrays.items()},
                                   labels=None if self.labels is None else self.labels[:count])


def _contiguous(arr: np.ndarray) -> memoryview:
    import numpy as np

    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind in "USV" or not arr.dtype.isnative:  # no buffer format memoryview can cast
        return memoryview(arr.reshape(-1).view(np.uint8)) if arr.size and arr.dtype.itemsize else memoryview(b"")
    return memoryview(arr).cast("B")


def model_batch(spec: TensorSpec) -> int:
    """The compiled first dim of ``spec`` (1 for a scalar or a dynamic dim)."""
    first = spec.shape[0] if spec.shape else 1
    return first if isinstance(first, int) else 1


def batch_inputs(model_inputs: Sequence[TensorSpec], known: Collection[str] | None = None) -> tuple[str, ...]:
    """The inputs with a batch dimension: ``known`` (those whose first dim was dynamic in the original model), else
    those whose first dim equals the first input's (the declared batch). Scalars never have one."""
    ranked = [s for s in model_inputs if s.shape]
    if known is not None:
        return tuple(s.name for s in ranked if s.name in known)
    if not ranked:
        return ()
    declared = ranked[0].shape[0]
    return tuple(s.name for s in ranked if s.shape[0] == declared)


def feed_batch(model_inputs: Sequence[TensorSpec], known: Collection[str] | None = None) -> int:
    """Samples in one compiled feed: the first dim of the batch inputs (1 when there are none)."""
    names = batch_inputs(model_inputs, known)
    spec = next((s for s in model_inputs if s.name in names), None)
    return model_batch(spec) if spec is not None else 1


def _fits(shape: tuple[int, ...], want: Sequence[Any]) -> bool:
    return len(shape) == len(want) and all(not isinstance(w, int) or w == h for w, h in zip(want, shape))


def check_against_model(arrays: Mapping[str, np.ndarray], model_inputs: tuple[TensorSpec, ...], where: str,
                        known_batch: Collection[str] | None = None,
                        labelled: bool = False) -> tuple[tuple[str, ...], int]:
    """Each model input present with its dtype, and shaped by the sample convention (module docstring).

    Returns the inputs fed whole (all of them: one feed) and the samples per feed. ``known_batch``: the inputs
    whose first dim was dynamic in the original model (``None``: unknown). ``labelled``: labels count samples, so
    arrays of exactly the compiled shapes are one batch of samples, not one feed."""
    import numpy as np

    names = [s.name for s in model_inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{where} does not fit the model", f"no array for input(s) {', '.join(missing)} "
                        f"(arrays present: {', '.join(arrays) or 'none'})",
                        f"save one array per model input, named {', '.join(names)}")
    for spec in model_inputs:
        arr = arrays[spec.name]
        if spec.wrap:
            _check_structured(arr, spec, where)
            continue
        if spec.dtype == "string":
            if not (hasattr(arr, "dtype") and np.dtype(arr.dtype).kind in "US"):
                raise DataError(f"{where} does not fit the model", f"array '{spec.name}' is "
                                f"{getattr(arr, 'dtype', type(arr).__name__)}, the input takes strings",
                                "give a numpy text array (np.array([...], dtype=str)); object arrays are not read")
            continue
        if np.dtype(arr.dtype).name != spec.dtype and not _void_of(arr, spec.dtype):
            raise dtype_mismatch(where, spec.name, arr, spec.dtype)
    batched = batch_inputs(model_inputs, known_batch)
    if all(s.wrap or _fits(arrays[s.name].shape, s.shape) for s in model_inputs) and not (labelled and batched):
        return tuple(s.name for s in model_inputs), 1
    counts: dict[str, int] = {}
    batch_sizes = set()
    for spec in model_inputs:
        arr = arrays[spec.name]
        if spec.wrap:  # a sequence or optional has no sample axis: it goes whole into every feed
            continue
        shape = "x".join(map(str, arr.shape)) or "scalar"
        if spec.name not in batched:
            if not _fits(arr.shape, spec.shape):
                raise DataError(f"{where} does not fit the model",
                                f"array '{spec.name}' has shape {shape}, the input takes {spec.shape_text()} and has "
                                "no batch dimension", f"give '{spec.name}' exactly as {spec.shape_text()}")
            continue
        per_sample = spec.shape[1:]
        if arr.ndim != len(spec.shape) or not _fits(arr.shape[1:], per_sample):
            raise DataError(f"{where} does not fit the model",
                            f"array '{spec.name}' has shape {shape}, the input takes {spec.shape_text()} "
                            "(samples along the first axis)",
                            "reshape the data to N x " + ("x".join(str(d) for d in per_sample) or "(scalar)"))
        counts[spec.name] = arr.shape[0]
        batch_sizes.add(model_batch(spec))
    if len(set(counts.values())) > 1:
        raise DataError(f"{where} does not fit the model", f"inputs have different sample counts "
                        f"{', '.join(f'{k}: {v}' for k, v in counts.items())}",
                        "give every batched input the same number of samples along its first axis")
    if len(batch_sizes) > 1:
        raise DataError(f"{where} does not fit the model", f"the batched inputs were compiled with different batch "
                        f"sizes {sorted(batch_sizes)}", "give every input exactly its shape (one feed)")
    whole = tuple(s.name for s in model_inputs if s.name not in counts)
    return whole, (batch_sizes.pop() if batch_sizes else 1)


def _check_structured(value: Any, spec: TensorSpec, where: str) -> None:
    """A sequence or optional input's value: assembled from its keys (:func:`onnxsmith.data.values.assemble`), or
    given in Python; never an array header standing in for it."""
    from onnxsmith.data.values import check_value

    if hasattr(value, "fortran_order"):  # an ArrayHeader: the .npz stored it as one plain array
        raise DataError(f"{where} does not fit the model", f"'{spec.name}' is one array, the input takes a "
                        f"{spec.type_text()}", "store a sequence NAME as NAME.0, NAME.1, ... and NAME.length; an "
                        "absent optional as NAME.none (see onnxsmith.data.values)")
    check_value(value, spec, where)


def check_finite(arrays: Mapping[str, np.ndarray], model_inputs: tuple[TensorSpec, ...], where: str) -> None:
    """Name the first float input array holding NaN or infinity, and where."""
    import numpy as np

    for spec in model_inputs:
        arr = arrays[spec.name]
        if spec.wrap:
            _check_finite_elements(arr, spec, where)
            continue
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            count = int(bad.sum())
            first = int(np.argwhere(bad)[0][0]) if arr.ndim else 0  # the first index along axis 0
            raise DataError(f"{where} holds NaN or infinite values", f"array '{spec.name}' has {count} of them, the "
                            f"first in sample {first}", "clean the data (numpy.nan_to_num, or drop those samples)")


def _check_finite_elements(value: Any, spec: TensorSpec, where: str) -> None:
    import numpy as np

    from onnxsmith.data.values import flatten

    for key, arr in flatten(spec.name, value).items():
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise DataError(f"{where} holds NaN or infinite values", f"element '{key}' of {spec.type_text()} "
                            f"input '{spec.name}' has {int((~np.isfinite(arr)).sum())} of them",
                            "clean the data (numpy.nan_to_num)")


def make_dataset(arrays: dict[str, np.ndarray], label_array: np.ndarray | None, model_inputs: tuple[TensorSpec, ...],
                 where: str, source: str, files: tuple[Path, ...] = (), finite: bool = True,
                 known_batch: Collection[str] | None = None) -> Dataset:
    """Check ``arrays`` against the model's inputs and the labels against the sample count; keep the inputs only.

    ``finite``: refuse NaN or infinite values in float inputs (calibration and validation data; ``run`` may feed
    them on purpose)."""
    arrays = _text_inputs(arrays, model_inputs, where)
    whole, batch = check_against_model(arrays, model_inputs, where, known_batch, labelled=label_array is not None)
    if finite:
        check_finite(arrays, model_inputs, where)
    names = {s.name for s in model_inputs}
    data = Dataset({k: v for k, v in arrays.items() if k in names}, label_array, source, tuple(files), whole, batch)
    n = len(data)
    if n == 0:
        raise DataError(f"cannot use {where}", "it holds no samples")
    if label_array is not None and len(label_array) != n:
        raise DataError(f"cannot use {where}", f"{len(label_array)} labels for {n} samples")
    return data


def _text_inputs(arrays: dict[str, Any], model_inputs: tuple[TensorSpec, ...], where: str) -> dict[str, Any]:
    """String inputs as native unicode arrays (UTF-8 bytes decoded, code points checked)."""
    from onnxsmith.data.values import text_array

    for spec in model_inputs:
        if spec.is_tensor and spec.dtype == "string" and spec.name in arrays and hasattr(arrays[spec.name], "dtype") \
                and arrays[spec.name].dtype.kind in "US":
            arrays[spec.name] = text_array(arrays[spec.name], where, spec.name)
    return arrays


def _void_of(value: Any, name: str) -> bool:
    """A file's typed void items of ml_dtypes' ``name`` size: how ``np.save`` stores bfloat16/float8, read back as
    the input's type (:func:`onnxsmith.data.npyfile.typed_view`). Raw void data (``'|V2'``), or any void array already
    in memory, is not: it may be anything of that size."""
    import numpy as np

    dtype = np.dtype(value.dtype)
    if dtype.kind != "V" or dtype.names is not None or dtype.type is not np.void:  # a real ml_dtypes array: its name
        return False
    import ml_dtypes

    kind = getattr(ml_dtypes, name, None)
    return (kind is not None and np.dtype(kind).itemsize == dtype.itemsize
            and bool(getattr(value, "typed_void", False)))


def dtype_mismatch(where: str, name: str, value: Any, wanted: str) -> DataError:
    """The one-line error for an array of the wrong dtype (a raw void array said so: it is no ml_dtypes type)."""
    import numpy as np

    dtype = np.dtype(value.dtype)
    if dtype.kind == "V" and dtype.names is None and dtype.type is np.void:
        saved = "void items np.save wrote for an ml_dtypes array" if getattr(value, "typed_void", False) else \
            "raw void items, not an ml_dtypes array np.save wrote"
        return DataError(f"{where} does not fit the model", f"array '{name}' holds {dtype.itemsize}-byte {saved} "
                         f"({dtype.str}), the input takes {wanted}",
                         f"save it as an ml_dtypes.{wanted} array (np.savez keeps its type)"
                         if wanted in _ML_TYPES else f"convert it with .astype('{wanted}')")
    how = f"ml_dtypes.{wanted}" if wanted in _ML_TYPES else f"'{wanted}'"
    return DataError(f"{where} does not fit the model", f"array '{name}' is {dtype.name}, the input takes {wanted}",
                     f"convert it with .astype({how})")


_ML_TYPES = ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
             "float4_e2m1fn", "int4", "uint4", "int2", "uint2")


def _index_bounds(model: LoadedModel) -> dict[str, int]:
    """Upper bounds for integer inputs used as Gather indices (token ids -> embedding rows)."""
    inits = {t.name: t for t in model.proto.graph.initializer}
    bounds: dict[str, int] = {}
    for node in model.proto.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            bounds[node.input[1]] = int(inits[node.input[0]].dims[0])
    return bounds


def synthetic(model: LoadedModel, samples: int, seed: int = 0, known_batch: Collection[str] | None = None,
              specs: tuple[TensorSpec, ...] | None = None) -> Dataset:
    """Seeded generated inputs: floats ~ N(0, 1); integer ids within embedding tables; masks of ones.

    The batch inputs (``known_batch``, else the model's own record, else the declared batch) get ``samples``
    batches; every other input one array of exactly its shape, fed whole. ``specs``: the input shapes to generate
    (default the model's; a shape range's ``min``/``opt``/``max`` point, for instance)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    known = known_batch if known_batch is not None else model.batch_inputs
    specs = specs if specs is not None else model.inputs
    batched = batch_inputs(specs, known)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        if not spec.numeric:
            raise DataError(f"cannot generate inputs for '{model.name}'", f"input '{spec.name}' takes "
                            f"{spec.type_text()}, and onnxsmith generates numbers only (generated text or sequences "
                            "would test nothing real)", "give real inputs: validate --data, profile --input, "
                            "optimize --data (an .npz; strings as np.array([...], dtype=str))")
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
        full = (samples * shape[0], *shape[1:]) if spec.name in batched else shape
        if spec.dtype in _FLOAT_KINDS:
            arrays[spec.name] = rng.standard_normal(full).astype(spec.dtype)
        elif spec.dtype == "bool" or "mask" in spec.name.lower():
            arrays[spec.name] = np.ones(full, dtype=spec.dtype)
        else:
            high = min(bounds.get(spec.name, 100), np.iinfo(spec.dtype).max)
            arrays[spec.name] = rng.integers(0, high, size=full).astype(spec.dtype)
    whole = tuple(s.name for s in specs if s.name not in batched or samples == 1)
    return Dataset(arrays, None, f"generated (seed {seed})", (), whole, feed_batch(specs, known))


def save_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """Write an .npz atomically, pickle-free: strings as ``'<U'`` arrays, sequences and optionals by the
    :mod:`onnxsmith.data.values` convention (``NAME.0``..., ``NAME.length``, ``NAME.none``)."""
    import os

    import numpy as np

    from onnxsmith.data.values import flatten_values

    arrays = flatten_values(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
