"""The checks after an export: the ONNX checker (full), strict shape inference, and ONNX Runtime against eager
PyTorch on the data (else random inputs), at another batch size too when the batch is dynamic."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import CheckFailedError, first_line
from onnxsmith.torchin.export import ExportError
from onnxsmith.torchin.inputs import InputArg, _batched, _to_torch, flatten_outputs, random_feeds
from onnxsmith.torchin.source import import_torch

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.torchin.source import TorchModel


MIN_COSINE = 0.999
"""An export whose outputs fall below this cosine to eager PyTorch on any checked sample is refused (exit 6)."""
CHECK_SAMPLES = 64
"""Samples of real data the numerics check runs (random inputs: :data:`RANDOM_SAMPLES`)."""
RANDOM_SAMPLES = 8


def check_export(model: TorchModel, inputs: Sequence[InputArg], path: Path, record: Mapping[str, Any],
                 data: Dataset | None, progress: Callable[[str], None]) -> dict[str, Any]:
    """ONNX checker, shape inference, and ONNX Runtime vs eager PyTorch on ``data`` (else random inputs)."""
    import numpy as np
    import onnx

    from onnxsmith.check.numerics import compare
    from onnxsmith.check.reference import reference_runner

    progress("checking the export (ONNX checker, shape inference, numerics vs eager PyTorch)")
    proto = onnx.load_model(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the ONNX export of {model.spec} is invalid", f"the ONNX checker says: {first_line(exc)}",
                          "report it to PyTorch (torch.onnx); try another torch version") from exc
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        typed = sum(1 for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape"))
        shape_note = f"strict, {typed} intermediate tensors typed"
    except Exception as exc:
        raise ExportError(f"the ONNX export of {model.spec} fails shape inference", first_line(exc),
                          "report it to PyTorch (torch.onnx); try another torch version") from exc
    torch = import_torch()
    names = record["output_names"]
    if data is not None:
        feeds = list(data.batches())
        source = f"{sum(len(next(iter(f.values()))) for f in feeds) if not data.one_feed else 1} samples of {data.source}"
    else:
        feeds = random_feeds(inputs, RANDOM_SAMPLES)
        source = f"{RANDOM_SAMPLES} random inputs (give data for a check on real inputs)"
    got: dict[str, list[Any]] = {n: [] for n in names}
    want: dict[str, list[Any]] = {n: [] for n in names}
    with reference_runner(path) as runner, torch.no_grad():
        for feed in feeds:
            ort = runner.run({a.name: np.asarray(feed[a.name]) for a in inputs})
            eager = flatten_outputs(model.eager(*_to_torch(torch, feed, inputs)))
            for name, value in zip(names, eager):
                want[name].append(value.reshape(-1, *value.shape[1:]) if value.ndim else value.reshape(1))
                out = ort[name]
                got[name].append(out.reshape(-1, *out.shape[1:]) if out.ndim else out.reshape(1))
    stacked_got = {n: np.concatenate(v) for n, v in got.items()}
    stacked_want = {n: np.concatenate(v).astype(stacked_got[n].dtype, copy=False) for n, v in want.items()}
    result = compare(stacked_got, stacked_want, names=names)
    figures = {"samples": result.samples, "data": source, "cosine_min": round(result.cosine_min, 8),
               "cosine_mean": round(result.cosine_mean, 8), "max_abs_error": float(f"{result.max_abs_error:.3g}"),
               "top1_agreement": result.top1_agreement, "onnx_checker": "full check passed",
               "shape_inference": shape_note}
    if record.get("dynamic_batch"):
        figures["dynamic_batch_check"] = _check_other_batch(model, inputs, path, names, torch)
    if result.nonfinite or result.cosine_min < MIN_COSINE:
        raise CheckFailedError(f"the ONNX export of {model.spec} computes something else than PyTorch",
                               f"cosine to eager {result.cosine_min:.6f} (below {MIN_COSINE}), max abs error "
                               f"{result.max_abs_error:.3g} on {source}",
                               "look for ops that behave differently in eval mode or at export (random, in-place "
                               "state); --debug shows the traceback")
    return figures


def _check_other_batch(model: TorchModel, inputs: Sequence[InputArg], path: Path, names: list[str],
                       torch: Any) -> dict[str, Any]:
    """The dynamic batch verified at another batch size (so a batch sweep compiles what PyTorch computes)."""
    from onnxsmith.check.numerics import compare
    from onnxsmith.check.reference import reference_runner

    other = inputs[0].dims[0] + 1
    wider = [dataclasses.replace(a, dims=(other, *a.dims[1:])) for a in inputs]
    feed = random_feeds(wider, 1, seed=2)[0]
    try:
        with reference_runner(path) as runner, torch.no_grad():
            got = runner.run(feed)
            want = flatten_outputs(model.eager(*_to_torch(torch, feed, wider)))
        result = compare({n: got[n] for n in names}, {n: w.astype(got[n].dtype) for n, w in zip(names, want)},
                         names=names)
        return {"batch": other, "cosine_min": round(result.cosine_min, 8), "ok": result.cosine_min >= MIN_COSINE}
    except Exception as exc:  # noted; load_model fixes the batch the user asked for, which the main check covers
        return {"batch": other, "ok": False, "reason": first_line(exc)}


def _check_data(data: str, inputs: Sequence[InputArg]) -> Dataset:
    """``data`` read for the check: at most :data:`CHECK_SAMPLES` samples, as feeds of the export's dims."""
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.model import TensorSpec

    specs = tuple(TensorSpec(a.name, a.dtype or "float32", a.dims) for a in inputs)
    dataset = open_dataset(data, specs, what="data for the export check", limit=CHECK_SAMPLES,
                           known_batch=tuple(a.name for a in inputs) if _batched(inputs) else None)
    return dataset.subset(min(len(dataset), CHECK_SAMPLES))
