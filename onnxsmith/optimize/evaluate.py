"""Accuracy and agreement of one ladder step against the ONNX Runtime fp32 outputs of the *original* model.

The fp32 reference is computed once for the whole ladder. (A step's bundle holds the ONNX it was compiled from as
its reference, which for an int8 QDQ or fp16 step is the transformed model itself, so comparing with it would
hide the precision's error.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.optimize.record import Example

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel


def calibration_data(model: LoadedModel, data: Dataset, calibration: Dataset | None, notes: list[str]) -> Dataset:
    """``calibration``, else the first (at most 128) validation samples with a note saying so; checked against the
    model's inputs."""
    from onnxsmith.data.dataset import check_against_model

    if calibration is None:
        calibration = data.subset(min(len(data), 128))
        notes.append(f"no calibration data: int8 was calibrated on the first {len(calibration)} validation samples "
                     "(give --calibration with separate data so validation is not calibrated on)")
    check_against_model(calibration.arrays, model.inputs, f"calibration data '{calibration.source}'")
    return calibration


@dataclasses.dataclass(frozen=True)
class Reference:
    """Outputs of ONNX Runtime fp32 on the original model, one row per validation sample."""

    outputs: dict[str, np.ndarray]
    classifier: bool
    """The first output is N x C scores (C >= 2): top-1 agreement and accuracy apply."""
    accuracy: float | None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    accuracy: float | None
    agreement: float | None
    cosine_min: float
    cosine_mean: float
    samples: int
    checked: str
    worst: tuple[Example, ...]
    partial: bool = False
    """Stopped at the time cap before every sample was checked."""
    mismatched: int = 0
    """Samples whose string outputs or sequence/optional structure differ from the reference (exact checks)."""


def reference_outputs(model: LoadedModel, data: Dataset) -> Reference:
    """Run ONNX Runtime fp32 on ``model`` over every validation sample."""
    import numpy as np

    from onnxsmith.check.numerics import collect
    from onnxsmith.data.dataset import model_batch
    from onnxsmith.check.reference import reference_runner

    batch = model_batch(model.inputs[0]) if model.inputs else 1
    names = [o.name for o in model.outputs]
    with reference_runner(model.path) as runner:
        outputs = collect(runner, data.batches(batch), names)
    first = outputs[names[0]]
    classifier = isinstance(first, np.ndarray) and first.ndim == 2 and first.shape[1] >= 2 \
        and np.issubdtype(first.dtype, np.floating)  # a sequence output is a list of values
    accuracy = None
    if classifier and data.labels is not None:
        labels = np.asarray(data.labels).reshape(len(data.labels), -1)[: len(first), 0]
        accuracy = float((first.argmax(axis=1) == labels).mean())
    return Reference(outputs, bool(classifier), accuracy)


def evaluate(bundle: Bundle, data: Dataset, reference: Reference, examples_dir: Path, rel_to: Path,
             keep_worst: int = 5, max_seconds: float | None = 180.0) -> Evaluation:
    """Run ``bundle`` over ``data``; compare with ``reference`` through the one comparison engine
    (:mod:`onnxsmith.check.numerics`); save the worst examples under ``examples_dir``.

    A step so slow that the whole set would take more than ``max_seconds`` is checked on the samples done by then
    (and says so), so one slow backend cannot stall the ladder."""
    from onnxsmith.check.numerics import collect, compare, save_examples
    from onnxsmith.data.dataset import model_batch
    from onnxsmith.plugin import backend_call

    batch = model_batch(bundle.inputs[0]) if bundle.inputs else 1
    names = [o.name for o in bundle.outputs]
    with bundle.load_runner() as runner, backend_call(bundle.backend, "run"):
        got = collect(runner, data.batches(batch), names, max_seconds)
    n = len(got[names[0]])
    want = {k: reference.outputs[k][:n] for k in names}
    result = compare(got, want, data.labels, names)
    saved = save_examples(result, {k: v if k in data.whole else v[:n] for k, v in data.arrays.items()}, got, want,
                          examples_dir, keep_worst, png=True, whole=data.whole)
    worst = tuple(Example(
        index=e["index"], cosine=e["cosine"], max_abs_error=e["max_abs_error"], label=e["label"],
        prediction=e["prediction"], reference_prediction=e["reference_prediction"],
        npz=str(e["npz"].relative_to(rel_to)), png=None if e["png"] is None else str(e["png"].relative_to(rel_to)))
        for e in saved)
    checked = f"{n} of {len(data)} samples of {data.source}" + (" (with labels)" if data.labels is not None else "")
    partial = n < len(data) - len(data) % batch
    if partial:
        checked += f"; stopped after {max_seconds:g} s: the step is too slow to check every sample"
    elif n < len(data):
        checked += f"; the last {len(data) - n} do not fill a batch of {batch}"
    return Evaluation(result.accuracy, result.top1_agreement, result.cosine_min, result.cosine_mean, n, checked,
                      worst, partial, result.mismatched)
