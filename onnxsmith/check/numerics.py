"""The one comparison engine: collect outputs -> :func:`compare` (pure) -> :func:`save_examples`.

``validate`` (:mod:`onnxsmith.check.validation`) and the optimization ladder (:mod:`onnxsmith.optimize.evaluate`) both
call it, so the same bundle on the same data gets the same cosine, agreement and worst examples from either.

Rules, in one place:

* per sample and output: cosine similarity, max abs and max relative error over the positions where both are
  finite, and the relative L2 error ``||got - want|| / ||want||`` (worst sample); a NaN or infinity in the
  artifact where the reference is finite breaks the sample (cosine 0, counted);
  positions where the reference itself is not finite are left out and counted;
* classifier: the first output holds one score vector per sample (``N x C``, C >= 2, floating point): top-1 and
  top-5 agreement with the reference, and task accuracy of both when labels are given;
* string outputs (and the text inside sequences) are compared for exact equality: no cosine, a sample whose text
  differs is a mismatch (counted; validation fails on any); a sequence or optional output is compared per sample
  (feed) by its structure (length, presence, element shapes: any difference is a mismatch), then its numeric
  elements together as one vector (cosine, errors) and its text exactly;
* worst first: wrong against the label, then disagreeing with the reference, then mismatched, then lowest cosine.
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
    mismatched: int = 0
    """Samples whose string outputs differ from the reference, or whose sequence/optional outputs differ in
    structure (exact comparisons)."""
    first_mismatch: int | None = None

    @property
    def cosine_min(self) -> float:
        return float(self.cosine.min()) if self.samples else 1.0

    @property
    def cosine_mean(self) -> float:
        return float(self.cosine.mean()) if self.samples else 1.0

    @property
    def max_abs_error(self) -> float:
        return max((s.get("max_abs_error", 0.0) for s in self.per_output.values()), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((s.get("max_rel_error", 0.0) for s in self.per_output.values()), default=0.0)


def collect(runner: Any, batches: Iterable[Mapping[str, np.ndarray]], names: list[str],
            max_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Every output of ``runner`` over ``batches``, concatenated along the sample axis; stops early (on whole
    batches) past ``max_seconds``."""
    import numpy as np

    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    start = time.perf_counter()
    from onnxsmith.data.values import is_structured

    structured = {o.name for o in getattr(runner, "outputs", ()) if getattr(o, "wrap", ())}
    for feeds in batches:
        got = runner.run(feeds)
        for name in names:
            if is_structured(got[name]) or name in structured:
                structured.add(name)  # a sequence or optional: one value per feed, kept as a list of them
                parts[name].append(got[name])
            else:
                parts[name].append(np.asarray(got[name]))
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if not names or not parts[names[0]]:
        raise DataError("not enough validation samples", "not one full batch to run")
    return {n: list(v) if n in structured else v[0] if len(v) == 1 else np.concatenate(v) for n, v in parts.items()}


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    return a.reshape(n, -1).astype(np.float64) if n else np.zeros((0, 1))


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
            names: list[str] | None = None) -> Comparison:
    """Compare the artifact's outputs ``got`` with the reference's ``want`` (samples along axis 0)."""
    import numpy as np

    names = names or list(want)
    n = min(_samples(got[names[0]]), _samples(want[names[0]]))
    cosine = np.ones(n)
    max_abs = np.zeros(n)
    per_output: dict[str, dict[str, float]] = {}
    abs_sum, abs_count, nonfinite, reference_nonfinite = 0.0, 0, 0, 0
    broken_any = np.zeros(n, bool)
    mismatch = np.zeros(n, bool)
    for name in names:
        if _exact_kind(want[name]):
            cos, row_abs, match, stats, sums = _compare_exact(name, got[name], want[name], n)
            cosine, max_abs, mismatch = np.minimum(cosine, cos), np.maximum(max_abs, row_abs), mismatch | ~match
            per_output[name] = stats
            abs_sum, abs_count = abs_sum + sums[0], abs_count + sums[1]
            nonfinite, reference_nonfinite = nonfinite + sums[2], reference_nonfinite + sums[3]
            broken_any |= sums[4]
            continue
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
    first = want[names[0]][:n] if isinstance(want[names[0]], list) else np.asarray(want[names[0]])[:n]
    classifier = not isinstance(first, list) and first.ndim == 2 and first.shape[1] >= 2 \
        and np.issubdtype(first.dtype, np.floating)
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
    order = tuple(int(i) for i in np.lexsort((cosine, ~mismatch, ~disagree, ~wrong)))
    first_bad = int(np.argmax(broken_any)) if broken_any.any() else None
    return Comparison(n, cosine, max_abs, per_output, abs_sum / max(abs_count, 1), nonfinite, first_bad,
                      reference_nonfinite, bool(classifier), preds, ref_preds, label_values, top1, top5, accuracy,
                      ref_accuracy, order, int(mismatch.sum()),
                      int(np.argmax(mismatch)) if mismatch.any() else None)


def _samples(value: Any) -> int:
    """Samples in one output: its first dim, or the values of a sequence/optional output (one per sample)."""
    import numpy as np

    return len(value) if isinstance(value, list) else len(np.asarray(value))


def _exact_kind(value: Any) -> bool:
    """Compared exactly, not by cosine: string tensors, and sequences/optionals (a list of one value per sample)."""
    return isinstance(value, list) or getattr(value, "dtype", None) is not None and value.dtype.kind in "USO"


def _compare_exact(name: str, got: Any, want: Any, n: int) -> tuple[Any, Any, Any, dict[str, float], tuple]:
    """One string, sequence or optional output, per sample: (cosine of its numeric part, max abs error, exact
    match, per-output stats, (abs error sum, count, artifact non-finite, reference non-finite, broken rows))."""
    import numpy as np

    from onnxsmith.data.values import flatten

    if not isinstance(want, list):  # a string tensor, samples along axis 0
        g, w = np.asarray(got)[:n], np.asarray(want)[:n]
        if g.shape != w.shape:
            raise DataError(f"output '{name}' differs in shape", f"artifact {g.shape}, reference {w.shape}")
        match = (g.reshape(n, -1) == w.reshape(n, -1)).all(axis=1) if n else np.ones(0, bool)
        stats = {"exact_match": float(match.mean()) if n else 1.0, "mismatched_samples": int((~match).sum())}
        return np.ones(n), np.zeros(n), match, stats, (0.0, 0, 0, 0, np.zeros(n, bool))
    if not isinstance(got, list) or len(got) < n or len(want) < n:
        raise DataError(f"output '{name}' is a sequence or optional", "it is compared one value per sample, and "
                        f"the runs gave {len(got) if isinstance(got, list) else 'an array'} and {len(want)} for "
                        f"{n} samples", "validate it with one sample per feed (batch 1, or one feed)")
    cosine, max_abs, match = np.ones(n), np.zeros(n), np.ones(n, bool)
    broken = np.zeros(n, bool)
    structure = abs_count = nonfinite = reference_nonfinite = 0
    abs_sum, rel_max = 0.0, 0.0
    for i in range(n):
        fg, fw = flatten(name, got[i]), flatten(name, want[i])
        if fg.keys() != fw.keys() or any(fg[k].shape != fw[k].shape for k in fw):
            match[i], cosine[i] = False, 0.0
            structure += 1
            continue
        text = [k for k in fw if fw[k].dtype.kind in "USO"]
        if any(not np.array_equal(fg[k], fw[k]) for k in text):
            match[i] = False
        keys = [k for k in fw if k not in text]
        if not keys:
            continue
        gv = np.concatenate([fg[k].astype(np.float64).reshape(-1) for k in keys])
        wv = np.concatenate([fw[k].astype(np.float64).reshape(-1) for k in keys])
        both = np.isfinite(gv) & np.isfinite(wv)
        bad = int((np.isfinite(wv) & ~np.isfinite(gv)).sum())
        nonfinite += bad
        reference_nonfinite += int((~np.isfinite(wv)).sum())
        gz, wz = np.where(both, gv, 0.0), np.where(both, wv, 0.0)
        diff = np.abs(gz - wz)
        na, nb = np.linalg.norm(gz), np.linalg.norm(wz)
        cos = 1.0 if na == 0 and nb == 0 else 0.0 if (na == 0) != (nb == 0) else float(gz @ wz / (na * nb))
        cosine[i] = 0.0 if bad else cos
        broken[i] = bad > 0
        max_abs[i] = float(diff.max(initial=0.0))
        rel_max = max(rel_max, float((diff / np.maximum(np.abs(wz), 1e-6)).max(initial=0.0)))
        abs_sum, abs_count = abs_sum + float(diff.sum()), abs_count + int(both.sum())
    stats = {"max_abs_error": float(max_abs.max(initial=0.0)), "max_rel_error": rel_max,
             "cosine_min": float(cosine.min(initial=1.0)), "exact_match": float(match.mean()) if n else 1.0,
             "mismatched_samples": int((~match).sum()), "structure_mismatches": structure}
    return cosine, max_abs, match, stats, (abs_sum, abs_count, nonfinite, reference_nonfinite, broken)


def save_examples(comparison: Comparison, inputs: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                  want: Mapping[str, np.ndarray], directory: Path, keep: int, png: bool = False,
                  whole: Collection[str] = ()) -> list[dict[str, Any]]:
    """Write the ``keep`` worst samples to ``directory/worst-NN.npz`` (inputs, both outputs, the label), and a
    ``.png`` of the input where it is an image and ``png``; returns one record per example (paths as written).
    ``whole``: inputs without a sample axis (fed whole into every feed), saved as they are."""
    from onnxsmith.data.dataset import save_npz

    if directory.is_symlink():  # never follow a link out of the bundle
        directory.unlink()
    elif directory.exists():
        import shutil

        shutil.rmtree(directory)
    from onnxsmith.data.values import flatten, flatten_values

    def sample(values: Any, index: int, prefix: str) -> dict[str, Any]:
        if isinstance(values, list):  # a sequence or optional: one value per sample
            return flatten(prefix, values[index])
        return {prefix: values[index:index + 1]}

    records = []
    for rank, index in enumerate(comparison.order[:keep], 1):
        arrays = flatten_values({f"input.{k}": v for k, v in inputs.items() if k in whole})
        for k, v in inputs.items():
            if k not in whole:
                arrays.update(sample(v, index, f"input.{k}"))
        for k in want:
            arrays.update(sample(got[k], index, f"artifact.{k}"))
            arrays.update(sample(want[k], index, f"reference.{k}"))
        label = None if comparison.labels is None else int(comparison.labels[index])
        if label is not None:
            arrays["label"] = comparison.labels[index:index + 1]
        npz = directory / f"worst-{rank:02d}.npz"
        save_npz(npz, arrays)
        png_path = None
        if png:
            from onnxsmith.optimize.plots import input_png

            name, first = next(iter(inputs.items()))
            numeric = getattr(first, "dtype", None) is not None and first.dtype.kind in "biuf"
            picture = None if name in whole or not numeric else input_png(first[index:index + 1])
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
