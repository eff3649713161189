"""Input, calibration and validation data: one :class:`Dataset` abstraction for every stage.

Data is read by :func:`onnxsmith.datasets.open_dataset` (``.npz``, ``.npy``, folders of ``.npy``, image folders,
``module:function``); this module holds the Dataset, the checks against the model's inputs and generated inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.model import LoadedModel, TensorSpec

_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


@dataclasses.dataclass
class Dataset:
    """Samples for a model's inputs: ``arrays[name]`` has samples along axis 0; ``labels`` is optional."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "generated"
    files: tuple[Path, ...] = ()
    """The files or folders the samples were read from (an output directory must never contain them)."""

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.arrays):
            arr = self.arrays[name]
            digest.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            digest.update(_contiguous(arr))  # the bytes tobytes() gives, without a copy of a C-order array
        if self.labels is not None:
            digest.update(_contiguous(self.labels))
        return digest.hexdigest()[:16]

    def batches(self, batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch`` samples each; a last short batch is dropped (compiled shapes are fixed)."""
        for start in range(0, len(self) - batch + 1, batch):
            yield {k: v[start:start + batch] for k, v in self.arrays.items()}

    def subset(self, count: int) -> Dataset:
        return Dataset({k: v[:count] for k, v in self.arrays.items()},
                       None if self.labels is None else self.labels[:count], self.source, self.files)


def _contiguous(arr: np.ndarray) -> memoryview:
    import numpy as np

    return memoryview(np.ascontiguousarray(arr)).cast("B")


def model_batch(spec: TensorSpec) -> int:
    first = spec.shape[0] if spec.shape else 1
    return first if isinstance(first, int) else 1


def check_against_model(arrays: Mapping[str, np.ndarray], model_inputs: tuple[TensorSpec, ...], where: str) -> None:
    """Each model input present, each sample shaped like the model's input without its batch dim, same dtype."""
    import numpy as np

    names = [s.name for s in model_inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{where} does not fit the model", f"no array for input(s) {', '.join(missing)} "
                        f"(arrays present: {', '.join(arrays) or 'none'})",
                        f"save one array per model input, named {', '.join(names)}")
    counts = set()
    for spec in model_inputs:
        arr = arrays[spec.name]
        want = spec.shape[1:]
        if arr.ndim != len(spec.shape) or any(isinstance(w, int) and w != h for w, h in zip(want, arr.shape[1:])):
            raise DataError(f"{where} does not fit the model",
                            f"array '{spec.name}' has shape {'x'.join(map(str, arr.shape))}, the input takes "
                            f"{spec.shape_text()} (samples along the first axis)",
                            "reshape the data to N x " + ("x".join(str(d) for d in want) or "(scalar)"))
        if np.dtype(arr.dtype).name != spec.dtype:
            raise DataError(f"{where} does not fit the model",
                            f"array '{spec.name}' is {arr.dtype}, the input takes {spec.dtype}",
                            f"convert it with .astype('{spec.dtype}')")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise DataError(f"{where} does not fit the model", f"inputs have different sample counts {sorted(counts)}")


def check_finite(arrays: Mapping[str, np.ndarray], model_inputs: tuple[TensorSpec, ...], where: str) -> None:
    """Name the first float input array holding NaN or infinity, and where."""
    import numpy as np

    for spec in model_inputs:
        arr = arrays[spec.name]
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            count = int(bad.sum())
            first = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
            raise DataError(f"{where} holds NaN or infinite values", f"array '{spec.name}' has {count} of them, the "
                            f"first in sample {first}", "clean the data (numpy.nan_to_num, or drop those samples)")


def make_dataset(arrays: dict[str, np.ndarray], label_array: np.ndarray | None, model_inputs: tuple[TensorSpec, ...],
                 where: str, source: str, files: tuple[Path, ...] = (), finite: bool = True) -> Dataset:
    """Check ``arrays`` against the model's inputs and the labels against the sample count; keep the inputs only.

    ``finite``: refuse NaN or infinite values in float inputs (calibration and validation data; ``run`` may feed
    them on purpose)."""
    check_against_model(arrays, model_inputs, where)
    if finite:
        check_finite(arrays, model_inputs, where)
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise DataError(f"cannot use {where}", "it holds no samples")
    if label_array is not None and len(label_array) != n:
        raise DataError(f"cannot use {where}", f"{len(label_array)} labels for {n} samples")
    names = {s.name for s in model_inputs}
    return Dataset({k: v for k, v in arrays.items() if k in names}, label_array, source, tuple(files))


def _index_bounds(model: LoadedModel) -> dict[str, int]:
    """Upper bounds for integer inputs used as Gather indices (token ids -> embedding rows)."""
    inits = {t.name: t for t in model.proto.graph.initializer}
    bounds: dict[str, int] = {}
    for node in model.proto.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits:
            bounds[node.input[1]] = int(inits[node.input[0]].dims[0])
    return bounds


def synthetic(model: LoadedModel, samples: int, seed: int = 0) -> Dataset:
    """Seeded generated inputs: floats ~ N(0, 1); integer ids within embedding tables; masks of ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bounds = _index_bounds(model)
    arrays: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
        per_sample = shape[1:]
        full = (samples * (shape[0] if shape else 1), *per_sample) if shape else (samples,)
        if spec.dtype in _FLOAT_KINDS:
            arrays[spec.name] = rng.standard_normal(full).astype(spec.dtype)
        elif spec.dtype == "bool" or "mask" in spec.name.lower():
            arrays[spec.name] = np.ones(full, dtype=spec.dtype)
        else:
            high = min(bounds.get(spec.name, 100), np.iinfo(spec.dtype).max)
            arrays[spec.name] = rng.integers(0, high, size=full).astype(spec.dtype)
    return Dataset(arrays, None, f"generated (seed {seed})")


def save_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """Write an .npz atomically."""
    import os

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
