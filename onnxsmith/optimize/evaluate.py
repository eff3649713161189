"""Accuracy and agreement of one ladder step against the ONNX Runtime fp32 outputs of the *original* model.

The fp32 reference is computed once for the whole ladder. (A step's bundle holds the ONNX it was compiled from as
its reference, which for an int8 QDQ or fp16 step is the transformed model itself, so comparing with it would
hide the precision's error.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError
from onnxsmith.optimize.plots import input_png
from onnxsmith.optimize.record import Example

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.data import Dataset
    from onnxsmith.model import LoadedModel


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
    lowest_cosine_index: int


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import numpy as np

    a64 = a.reshape(len(a), -1).astype(np.float64)
    b64 = b.reshape(len(b), -1).astype(np.float64)
    # NaN/Inf where the reference is finite breaks the row (cosine 0); where the reference is not finite, the
    # position is left out.
    a_ok, b_ok = np.isfinite(a64), np.isfinite(b64)
    broken = (b_ok & ~a_ok).any(axis=1)
    a64, b64 = np.where(a_ok & b_ok, a64, 0.0), np.where(a_ok & b_ok, b64, 0.0)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    dot = (a64 * b64).sum(axis=1)
    out = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return np.where(broken | ((na == 0) ^ (nb == 0)), 0.0, out)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference over the positions where both are finite."""
    import numpy as np

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both = np.isfinite(a64) & np.isfinite(b64)
    return float(np.abs(a64[both] - b64[both]).max(initial=0.0))


def _run_all(runner: Any, data: Dataset, batch: int, names: list[str], max_seconds: float | None = None
             ) -> dict[str, np.ndarray]:
    """Outputs for every full batch of ``data``; stops early (on whole batches) past ``max_seconds``."""
    import time

    import numpy as np

    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    start = time.perf_counter()
    for feeds in data.batches(batch):
        got = runner.run(feeds)
        for name in names:
            parts[name].append(np.asarray(got[name]))
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if not parts[names[0]]:
        raise DataError("not enough validation samples", f"{len(data)} samples, the batch is {batch}")
    return {n: np.concatenate(v) for n, v in parts.items()}


def reference_outputs(model: LoadedModel, data: Dataset) -> Reference:
    """Run ONNX Runtime fp32 on ``model`` over every validation sample."""
    import numpy as np

    from onnxsmith.reference import reference_runner
    from onnxsmith.data import model_batch

    batch = model_batch(model.inputs[0]) if model.inputs else 1
    names = [o.name for o in model.outputs]
    with reference_runner(model.path) as runner:
        outputs = _run_all(runner, data, batch, names)
    first = outputs[names[0]]
    classifier = first.ndim == 2 and first.shape[1] >= 2 and np.issubdtype(first.dtype, np.floating)
    accuracy = None
    if classifier and data.labels is not None:
        labels = np.asarray(data.labels).reshape(len(data.labels), -1)[: len(first), 0]
        accuracy = float((first.argmax(axis=1) == labels).mean())
    return Reference(outputs, bool(classifier), accuracy)


def evaluate(bundle: Bundle, data: Dataset, reference: Reference, examples_dir: Path, rel_to: Path,
             keep_worst: int = 5, max_seconds: float | None = 180.0) -> Evaluation:
    """Run ``bundle`` over ``data``; compare with ``reference``; save the worst examples under ``examples_dir``.

    A step so slow that the whole set would take more than ``max_seconds`` is checked on the samples done by then
    (and says so), so one slow backend cannot stall the ladder."""
    import numpy as np

    from onnxsmith.data import model_batch, save_npz

    batch = model_batch(bundle.inputs[0]) if bundle.inputs else 1
    names = [o.name for o in bundle.outputs]
    with bundle.load_runner() as runner:
        got = _run_all(runner, data, batch, names, max_seconds)
    n = len(got[names[0]])
    cosines = np.ones(n)
    for name in names:
        want = reference.outputs[name][:n]
        if got[name].shape != want.shape:
            raise DataError(f"output '{name}' differs in shape", f"artifact {got[name].shape}, reference {want.shape}")
        cosines = np.minimum(cosines, _cosine_rows(got[name], want))
    accuracy = agreement = None
    preds = ref_preds = labels = None
    if reference.classifier:
        preds = got[names[0]].argmax(axis=1)
        ref_preds = reference.outputs[names[0]][:n].argmax(axis=1)
        agreement = float((preds == ref_preds).mean())
        if data.labels is not None:
            labels = np.asarray(data.labels).reshape(len(data.labels), -1)[:n, 0]
            accuracy = float((preds == labels).mean())
    # Worst first: wrong against the label, then disagreeing with fp32, then by lowest cosine.
    wrong = (preds != labels) if labels is not None and preds is not None else np.zeros(n, bool)
    disagree = (preds != ref_preds) if preds is not None and ref_preds is not None else np.zeros(n, bool)
    order = np.lexsort((cosines, ~disagree, ~wrong))
    worst = []
    for rank, index in enumerate(order[:keep_worst], 1):
        index = int(index)
        npz = examples_dir / f"worst-{rank:02d}.npz"
        arrays = {f"input.{k}": v[index:index + 1] for k, v in data.arrays.items()}
        arrays.update({f"artifact.{k}": got[k][index:index + 1] for k in names})
        arrays.update({f"reference.{k}": reference.outputs[k][index:index + 1] for k in names})
        if labels is not None:
            arrays["label"] = labels[index:index + 1]
        save_npz(npz, arrays)
        png_rel = None
        first_input = next(iter(data.arrays.values()))
        png = input_png(first_input[index:index + 1])
        if png is not None:
            (examples_dir / f"worst-{rank:02d}.png").write_bytes(png)
            png_rel = str((examples_dir / f"worst-{rank:02d}.png").relative_to(rel_to))
        worst.append(Example(
            index=index, cosine=round(float(cosines[index]), 8),
            max_abs_error=round(max(_max_abs(got[k][index], reference.outputs[k][index]) for k in names), 8),
            label=None if labels is None else int(labels[index]),
            prediction=None if preds is None else int(preds[index]),
            reference_prediction=None if ref_preds is None else int(ref_preds[index]),
            npz=str(npz.relative_to(rel_to)), png=png_rel))
    checked = f"{n} of {len(data)} samples of {data.source}" + (" (with labels)" if data.labels is not None else "")
    if n < len(data) - len(data) % batch:
        checked += f"; stopped after {max_seconds:g} s: the step is too slow to check every sample"
    elif n < len(data):
        checked += f"; the last {len(data) - n} do not fill a batch of {batch}"
    return Evaluation(accuracy, agreement, float(cosines.min()), float(cosines.mean()), n, checked, tuple(worst),
                      int(cosines.argmin()))
