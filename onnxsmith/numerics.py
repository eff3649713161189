"""The one comparison engine: collect outputs -> :func:`compare` (pure) -> :func:`save_examples`.

``validate`` (:mod:`onnxsmith.validation`) and the optimization ladder (:mod:`onnxsmith.optimize.evaluate`) both
call it, so the same bundle on the same data gets the same cosine, agreement and worst examples from either.

Rules, in one place:

* per sample and output: cosine similarity, max abs and max relative error over the positions where both are
  finite, and the relative L2 error ``||got - want|| / ||want||`` (worst sample); a NaN or infinity in the
  artifact where the reference is finite breaks the sample (cosine 0, counted);
  positions where the reference itself is not finite are left out and counted;
* classifier: the first output holds one score vector per sample (``N x C``, C >= 2, floating point): top-1 and
  top-5 agreement with the reference, and task accuracy of both when labels are given;
* worst first: wrong against the label, then disagreeing with the reference, then lowest cosine.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError

if TYPE_CHECKING:
    import numpy as np


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found; per-sample arrays are indexed like the inputs."""

    samples: int
    cosine: np.ndarray
    max_abs: np.ndarray
    per_output: dict[str, dict[str, float]]
    mean_abs_error: float
    nonfinite: int
    """Values NaN or infinite in the artifact where the reference is finite."""
    first_nonfinite: int | None
    reference_nonfinite: int
    classifier: bool
    predictions: np.ndarray | None
    reference_predictions: np.ndarray | None
    labels: np.ndarray | None
    top1_agreement: float | None
    top5_agreement: float | None
    accuracy: float | None
    reference_accuracy: float | None
    order: tuple[int, ...]
    """Sample indices, worst first."""

    @property
    def cosine_min(self) -> float:
        return float(self.cosine.min()) if self.samples else 1.0

    @property
    def cosine_mean(self) -> float:
        return float(self.cosine.mean()) if self.samples else 1.0

    @property
    def max_abs_error(self) -> float:
        return max((s["max_abs_error"] for s in self.per_output.values()), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((s["max_rel_error"] for s in self.per_output.values()), default=0.0)


def collect(runner: Any, batches: Iterable[Mapping[str, np.ndarray]], names: list[str],
            max_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Every output of ``runner`` over ``batches``, concatenated along the sample axis; stops early (on whole
    batches) past ``max_seconds``."""
    import numpy as np

    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    start = time.perf_counter()
    for feeds in batches:
        got = runner.run(feeds)
        for name in names:
            parts[name].append(np.asarray(got[name]))
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if not names or not parts[names[0]]:
        raise DataError("not enough validation samples", "not one full batch to run")
    return {n: v[0] if len(v) == 1 else np.concatenate(v) for n, v in parts.items()}


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    return a.reshape(n, -1).astype(np.float64) if n else np.zeros((0, 1))


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
            names: list[str] | None = None) -> Comparison:
    """Compare the artifact's outputs ``got`` with the reference's ``want`` (samples along axis 0)."""
    import numpy as np

    names = names or list(want)
    n = min(len(np.asarray(got[names[0]])), len(np.asarray(want[names[0]])))
    cosine = np.ones(n)
    max_abs = np.zeros(n)
    per_output: dict[str, dict[str, float]] = {}
    abs_sum, abs_count, nonfinite, reference_nonfinite = 0.0, 0, 0, 0
    broken_any = np.zeros(n, bool)
    for name in names:
        g, w = np.asarray(got[name])[:n], np.asarray(want[name])[:n]
        if g.shape != w.shape:
            raise DataError(f"output '{name}' differs in shape", f"artifact {g.shape}, reference {w.shape}")
        g64, w64 = _rows(g, n), _rows(w, n)
        g_ok, w_ok = np.isfinite(g64), np.isfinite(w64)
        both = g_ok & w_ok
        broken = (w_ok & ~g_ok).sum(axis=1)
        nonfinite += int(broken.sum())
        reference_nonfinite += int((~w_ok).sum())
        broken_any |= broken > 0
        gz, wz = np.where(both, g64, 0.0), np.where(both, w64, 0.0)
        diff = np.abs(gz - wz)
        rel = diff / np.maximum(np.abs(wz), 1e-6)
        na, nb = np.linalg.norm(gz, axis=1), np.linalg.norm(wz, axis=1)
        cos = np.where((na == 0) & (nb == 0), 1.0, (gz * wz).sum(axis=1) / np.maximum(na * nb, 1e-300))
        cos = np.where(((na == 0) ^ (nb == 0)) | (broken > 0), 0.0, cos)
        row_abs = diff.max(axis=1, initial=0.0)
        cosine, max_abs = np.minimum(cosine, cos), np.maximum(max_abs, row_abs)
        rel_l2 = np.linalg.norm(gz - wz, axis=1) / np.maximum(nb, 1e-30)
        per_output[name] = {"max_abs_error": float(row_abs.max(initial=0.0)),
                            "max_rel_error": float(rel.max(initial=0.0)),
                            "rel_l2_error": float(rel_l2.max(initial=0.0)),
                            "cosine_min": float(cos.min(initial=1.0))}
        abs_sum += float(diff.sum())
        abs_count += int(both.sum())
    first = np.asarray(want[names[0]])[:n]
    classifier = first.ndim == 2 and first.shape[1] >= 2 and np.issubdtype(first.dtype, np.floating)
    preds = ref_preds = label_values = None
    top1 = top5 = accuracy = ref_accuracy = None
    if classifier and n:
        g, w = np.asarray(got[names[0]])[:n].astype(np.float64), first.astype(np.float64)
        g = np.where(np.isfinite(g), g, -np.inf)
        preds, ref_preds = g.argmax(axis=1), w.argmax(axis=1)
        top1 = float((preds == ref_preds).mean())
        k = min(5, g.shape[1])
        top_k = np.argsort(-g, axis=1)[:, :k]
        top5 = float((top_k == ref_preds[:, None]).any(axis=1).mean())
        if labels is not None:
            label_values = np.asarray(labels).reshape(len(labels), -1)[:n, 0].astype(np.int64)
            accuracy = float((preds == label_values).mean())
            ref_accuracy = float((ref_preds == label_values).mean())
    wrong = (preds != label_values) if label_values is not None and preds is not None else np.zeros(n, bool)
    disagree = (preds != ref_preds) if preds is not None else np.zeros(n, bool)
    order = tuple(int(i) for i in np.lexsort((cosine, ~disagree, ~wrong)))
    first_bad = int(np.argmax(broken_any)) if broken_any.any() else None
    return Comparison(n, cosine, max_abs, per_output, abs_sum / max(abs_count, 1), nonfinite, first_bad,
                      reference_nonfinite, bool(classifier), preds, ref_preds, label_values, top1, top5, accuracy,
                      ref_accuracy, order)


def save_examples(comparison: Comparison, inputs: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                  want: Mapping[str, np.ndarray], directory: Path, keep: int, png: bool = False,
                  whole: Collection[str] = ()) -> list[dict[str, Any]]:
    """Write the ``keep`` worst samples to ``directory/worst-NN.npz`` (inputs, both outputs, the label), and a
    ``.png`` of the input where it is an image and ``png``; returns one record per example (paths as written).
    ``whole``: inputs without a sample axis (fed whole into every feed), saved as they are."""
    from onnxsmith.data import save_npz

    if directory.is_symlink():  # never follow a link out of the bundle
        directory.unlink()
    elif directory.exists():
        import shutil

        shutil.rmtree(directory)
    records = []
    for rank, index in enumerate(comparison.order[:keep], 1):
        arrays = {f"input.{k}": v if k in whole else v[index:index + 1] for k, v in inputs.items()}
        arrays.update({f"artifact.{k}": got[k][index:index + 1] for k in want})
        arrays.update({f"reference.{k}": want[k][index:index + 1] for k in want})
        label = None if comparison.labels is None else int(comparison.labels[index])
        if label is not None:
            arrays["label"] = comparison.labels[index:index + 1]
        npz = directory / f"worst-{rank:02d}.npz"
        save_npz(npz, arrays)
        png_path = None
        if png:
            from onnxsmith.optimize.plots import input_png

            name, first = next(iter(inputs.items()))
            picture = None if name in whole else input_png(first[index:index + 1])
            if picture is not None:
                png_path = directory / f"worst-{rank:02d}.png"
                png_path.write_bytes(picture)
        records.append({
            "index": index, "cosine": round(float(comparison.cosine[index]), 8),
            "max_abs_error": round(float(comparison.max_abs[index]), 8), "label": label,
            "prediction": None if comparison.predictions is None else int(comparison.predictions[index]),
            "reference_prediction": None if comparison.reference_predictions is None
            else int(comparison.reference_predictions[index]),
            "npz": npz, "png": png_path})
    return records
