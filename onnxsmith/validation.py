"""Stage 4b, validate: run the artifact and the ONNX Runtime fp32 reference on the same inputs and compare.

Per sample and output: max abs/rel error and cosine similarity; for classifier-like outputs (N x C, C >= 2)
top-1/top-5 agreement; with labels, the task accuracy of both. The worst examples (lowest cosine) are kept in
the bundle with their inputs and both outputs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.data import Dataset

# Cosine similarity a precision must reach on every checked sample to pass.
DEFAULT_MIN_COSINE = {"fp32": 0.9999, "bf16": 0.995, "fp16": 0.999, "int8": 0.98}


@dataclasses.dataclass(frozen=True)
class WorstExample:
    index: int
    cosine: float
    max_abs_error: float
    file: str
    label: int | None = None
    prediction: int | None = None
    reference_prediction: int | None = None


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    samples: int
    data: str
    output_checked: str
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    cosine_min: float
    cosine_mean: float
    top1_agreement: float | None
    top5_agreement: float | None
    accuracy: float | None
    reference_accuracy: float | None
    min_cosine_required: float
    passed: bool
    failures: tuple[str, ...]
    worst: tuple[WorstExample, ...]
    per_output: dict[str, dict[str, float]]
    precision_used: str
    nonfinite_outputs: int = 0
    """Output values that are NaN or infinite where the reference is finite (any makes validation fail)."""
    reference_nonfinite: int = 0
    """Output values the fp32 reference itself gives as NaN or infinite (left out of the comparison)."""

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failures"] = list(self.failures)
        data["worst"] = [dataclasses.asdict(w) for w in self.worst]
        data["accuracy_drop"] = self.accuracy_drop
        return data


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a64, b64) / (na * nb))


def check_min_cosine(value: float | None) -> None:
    """A required cosine is a finite number in [-1, 1]: NaN would make every comparison pass."""
    import math

    if value is not None and (not math.isfinite(value) or not -1.0 <= value <= 1.0):
        raise DataError(f"invalid minimum cosine {value}", "a cosine similarity is a number from -1 to 1",
                        "for example --min-cosine 0.999")


def validate_bundle(bundle: Bundle, data: Dataset | None = None, *, samples: int = 64, seed: int = 0,
                    keep_worst: int = 5, min_cosine: float | None = None, runner: Any = None) -> ValidationResult:
    """Compare the bundle's outputs with ONNX Runtime fp32 on ``data`` (or seeded generated inputs)."""
    import numpy as np

    from onnxsmith.compilers.onnxruntime.backend import reference_runner
    from onnxsmith.data import save_npz, synthetic
    from onnxsmith.model import load_model

    inputs = bundle.inputs
    if data is None:
        data = synthetic(load_model(bundle.reference_model, check=False), samples, seed, bundle.batch_inputs)
    else:
        from onnxsmith.data import check_against_model

        whole, per_feed = check_against_model(data.arrays, inputs, f"validation data '{data.source}'",
                                              bundle.batch_inputs, labelled=data.labels is not None)
        data = dataclasses.replace(data, whole=whole, batch=per_feed)
        if samples and len(data) > samples and data.labels is None:
            data = data.subset(samples)
    # One feed (every array exactly its input's shape) is one sample: its outputs are compared whole.
    batch = 1 if data.one_feed else data.batch

    def pick(value: Any, i: int, keep_axis: bool = False) -> np.ndarray:
        arr = np.asarray(value)
        return arr if data.one_feed else arr[i:i + 1] if keep_axis else arr[i]

    if not data.one_feed and len(data) < batch:
        raise DataError("not enough validation samples", f"{len(data)} samples, the compiled batch is {batch}")
    precision = bundle.manifest["precision_used"]
    check_min_cosine(min_cosine)
    threshold = min_cosine if min_cosine is not None else DEFAULT_MIN_COSINE.get(precision.split("+")[0], 0.98)
    own_runner = runner is None
    runner = runner or bundle.load_runner()
    reference = reference_runner(bundle.reference_model)
    names = [o.name for o in bundle.outputs]
    main_out = next((n for n in names), "")
    rows: list[dict[str, Any]] = []
    per_output: dict[str, dict[str, float]] = {n: {"max_abs_error": 0.0, "max_rel_error": 0.0, "cosine_min": 1.0}
                                               for n in names}
    abs_sum, abs_count = 0.0, 0
    nonfinite, reference_nonfinite, first_nonfinite = 0, 0, None
    try:
        if own_runner:
            runner.__enter__()
        for b_index, feeds in enumerate(data.batches()):
            got = runner.run(feeds)
            want = reference.run(feeds)
            for i in range(batch):
                index = b_index * batch + i
                row: dict[str, Any] = {"index": index, "cosine": 1.0, "max_abs": 0.0}
                for name in names:
                    g = pick(got[name], i).astype(np.float64)
                    w = pick(want[name], i).astype(np.float64)
                    if g.shape != w.shape:
                        raise DataError(f"output '{name}' differs in shape", f"artifact {g.shape}, reference {w.shape}")
                    # NaN/Inf: where the reference is finite and the artifact is not, the sample fails (a NaN
                    # would otherwise compare as "no error"); where the reference itself is not finite, the
                    # position is left out of the figures and counted.
                    g_ok, w_ok = np.isfinite(g), np.isfinite(w)
                    broken = int((w_ok & ~g_ok).sum())
                    reference_nonfinite += int((~w_ok).sum())
                    both = g_ok & w_ok
                    diff = np.abs(g[both] - w[both])
                    max_abs = float(diff.max()) if diff.size else 0.0
                    rel = float((diff / np.maximum(np.abs(w[both]), 1e-6)).max()) if diff.size else 0.0
                    cos = 0.0 if broken else _cosine(np.where(w_ok, g, 0.0), np.where(w_ok, w, 0.0))
                    if broken:
                        nonfinite += broken
                        first_nonfinite = index if first_nonfinite is None else first_nonfinite
                    stats = per_output[name]
                    stats["max_abs_error"] = max(stats["max_abs_error"], max_abs)
                    stats["max_rel_error"] = max(stats["max_rel_error"], rel)
                    stats["cosine_min"] = min(stats["cosine_min"], cos)
                    abs_sum += float(diff.sum())
                    abs_count += diff.size
                    row["cosine"] = min(row["cosine"], cos)
                    row["max_abs"] = max(row["max_abs"], max_abs)
                    if name == main_out and g.ndim == 1 and g.size >= 2:
                        row["pred"] = int(np.argmax(g))
                        row["ref_pred"] = int(np.argmax(w))
                        row["top5"] = set(np.argsort(-g)[:5]) == set(np.argsort(-w)[:5]) if g.size >= 5 else None
                        row["ref_top1_in_top5"] = int(np.argmax(w)) in set(np.argsort(-g)[:5])
                if data.labels is not None:
                    row["label"] = int(np.asarray(data.labels[index]).ravel()[0])
                row["feeds"] = {k: v if k in data.whole else v[i:i + 1] for k, v in feeds.items()}
                row["got"] = {k: pick(got[k], i, keep_axis=True) for k in names}
                row["want"] = {k: pick(want[k], i, keep_axis=True) for k in names}
                rows.append(row)
                # keep memory bounded: drop arrays of rows that can no longer be among the worst
                if len(rows) > 4 * max(keep_worst, 1):
                    rows.sort(key=lambda r: r["cosine"])
                    for r in rows[keep_worst:]:
                        r.pop("feeds", None), r.pop("got", None), r.pop("want", None)
    finally:
        if own_runner:
            runner.__exit__(None, None, None)
    classifier = all("pred" in r for r in rows)
    top1 = top5 = accuracy = ref_accuracy = None
    if classifier:
        top1 = sum(r["pred"] == r["ref_pred"] for r in rows) / len(rows)
        top5 = sum(bool(r["ref_top1_in_top5"]) for r in rows) / len(rows)
        if data.labels is not None:
            accuracy = sum(r["pred"] == r["label"] for r in rows) / len(rows)
            ref_accuracy = sum(r["ref_pred"] == r["label"] for r in rows) / len(rows)
    rows.sort(key=lambda r: r["cosine"])
    worst = []
    examples_dir = bundle.path / "examples"
    if examples_dir.is_symlink():  # never follow a link out of the bundle
        examples_dir.unlink()
    elif examples_dir.exists():
        import shutil

        shutil.rmtree(examples_dir)
    for rank, row in enumerate(rows[:keep_worst], 1):
        if "feeds" not in row:
            continue
        rel = f"examples/worst-{rank:02d}.npz"
        arrays = {f"input.{k}": v for k, v in row["feeds"].items()}
        arrays.update({f"artifact.{k}": v for k, v in row["got"].items()})
        arrays.update({f"reference.{k}": v for k, v in row["want"].items()})
        save_npz(bundle.path / rel, arrays)
        worst.append(WorstExample(row["index"], round(row["cosine"], 8), round(row["max_abs"], 8), rel,
                                  row.get("label"), row.get("pred"), row.get("ref_pred")))
    cosines = [r["cosine"] for r in rows]
    failures = []
    if nonfinite:
        failures.append(f"{nonfinite} output value(s) are NaN or infinite where the reference is finite (first on "
                        f"sample {first_nonfinite})")
    if min(cosines) < threshold:
        failures.append(f"cosine similarity {min(cosines):.6f} on sample {rows[0]['index']} is below the "
                        f"{threshold} required for {precision}")
    return ValidationResult(
        samples=len(rows), data=data.source, output_checked=", ".join(names),
        max_abs_error=max(s["max_abs_error"] for s in per_output.values()),
        max_rel_error=max(s["max_rel_error"] for s in per_output.values()),
        mean_abs_error=abs_sum / max(abs_count, 1),
        cosine_min=round(min(cosines), 8), cosine_mean=round(sum(cosines) / len(cosines), 8),
        top1_agreement=top1, top5_agreement=top5, accuracy=accuracy, reference_accuracy=ref_accuracy,
        min_cosine_required=threshold, passed=not failures, failures=tuple(failures), worst=tuple(worst),
        per_output=per_output, precision_used=precision, nonfinite_outputs=nonfinite,
        reference_nonfinite=reference_nonfinite,
    )
