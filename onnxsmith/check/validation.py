"""Stage 4b, validate: run the artifact and the ONNX Runtime fp32 reference on the same inputs and compare.

Per sample and output: max abs/rel error and cosine similarity; for classifier-like outputs (N x C, C >= 2)
top-1/top-5 agreement; with labels, the task accuracy of both. The worst examples (lowest cosine) are kept in
the bundle with their inputs and both outputs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError
from onnxsmith.precisions import MIN_COSINE, min_cosine_for

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle
    from onnxsmith.data.dataset import Dataset

# Cosine similarity a precision must reach on every checked sample to pass.
DEFAULT_MIN_COSINE = MIN_COSINE  # the defaults, by headline precision (onnxsmith.precisions)


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
    shapes: tuple[dict[str, Any], ...] = ()
    """A bundle compiled for a shape range: the check at each of its ``min``, ``opt`` and ``max`` points (the
    main figures are the worst over them)."""
    evaluated_by: dict[str, Any] | None = None
    """Where the bundle cannot run here and its backend evaluated the compiled program instead
    (:meth:`onnxsmith.plugin.Compiler.load_emulated`): its label, what that checks and what it does not."""
    mismatched_samples: int = 0
    """Samples whose string outputs, or sequence/optional structure, differ from the reference (any fails)."""

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
        if not self.shapes:
            data.pop("shapes")
        else:
            data["shapes"] = list(self.shapes)
        return data


def check_min_cosine(value: float | None) -> None:
    """A required cosine is a finite number in [-1, 1]: NaN would make every comparison pass."""
    import math

    if value is not None and (not math.isfinite(value) or not -1.0 <= value <= 1.0):
        raise DataError(f"invalid minimum cosine {value}", "a cosine similarity is a number from -1 to 1",
                        "for example --min-cosine 0.999")


def validate_bundle(bundle: Bundle, data: Dataset | None = None, *, samples: int = 64, seed: int = 0,
                    keep_worst: int = 5, min_cosine: float | None = None, runner: Any = None) -> ValidationResult:
    """Compare the bundle's outputs with ONNX Runtime fp32 on ``data`` (or seeded generated inputs), through the
    one comparison engine (:mod:`onnxsmith.check.numerics`).

    A bundle compiled for a shape range is checked at each of its ``min``, ``opt`` and ``max`` points: generated
    inputs of that shape (about ``samples`` samples each), or ``data`` split into feeds of that batch (a point the
    data cannot fill is skipped, and says so); the result is the worst point's, with every point in ``shapes``."""
    bundle.wrote("examples")  # sealed in records.json with the report's rebuild
    if not bundle.shape_ranges:
        return _validate_at(bundle, data, bundle.inputs, samples=samples, seed=seed, keep_worst=keep_worst,
                            min_cosine=min_cosine, runner=runner, examples=bundle.path / "examples")
    import shutil

    from onnxsmith.data.dataset import feed_batch
    from onnxsmith.profiling.run import range_points

    examples = bundle.path / "examples"
    if examples.is_symlink():
        examples.unlink()
    elif examples.exists():
        shutil.rmtree(examples)
    own_runner = runner is None
    runner = runner or bundle.load_runner(emulate=True)
    results: list[tuple[str, ValidationResult]] = []
    shapes: dict[str, dict[str, list[Any]]] = {}
    skipped: list[str] = []
    try:
        if own_runner:
            runner.__enter__()
        for label, specs in range_points(bundle):
            batch = feed_batch(specs, bundle.batch_inputs)
            shapes[label] = {s.name: list(s.shape) for s in specs if s.name in bundle.shape_ranges}
            try:
                result = _validate_at(bundle, data, specs, samples=max(1, samples // batch) if data is None else
                                      samples, seed=seed, keep_worst=keep_worst, min_cosine=min_cosine,
                                      runner=runner, examples=examples / label)
            except DataError as exc:
                if data is None:
                    raise
                skipped.append(f"{label}: {exc.one_line()}")
                continue
            results.append((label, result))
    finally:
        if own_runner:
            runner.__exit__(None, None, None)
    if not results:
        raise DataError("the validation data fits no point of the compiled shape range", "; ".join(skipped),
                        "give data with at least as many samples as the range's max batch")
    points = tuple({"point": label, "shape": shapes[label], "samples": r.samples, "cosine_min": r.cosine_min,
                    "max_abs_error": r.max_abs_error, "top1_agreement": r.top1_agreement, "passed": r.passed,
                    "failures": list(r.failures)} for label, r in results)
    points += tuple({"point": text.split(":")[0], "shape": shapes[text.split(":")[0]],
                     "skipped": text.split(": ", 1)[1]} for text in skipped)
    _, worst = min(results, key=lambda item: (item[1].passed, item[1].cosine_min))
    failures = tuple(f"at {label}: {f}" for label, r in results for f in r.failures)
    return dataclasses.replace(
        worst, samples=sum(r.samples for _, r in results), data=worst.data if data is not None else
        f"generated (seed {seed}) at {', '.join(label for label, _ in results)}",
        max_abs_error=max(r.max_abs_error for _, r in results), max_rel_error=max(r.max_rel_error for _, r in results),
        cosine_mean=round(sum(r.cosine_mean * r.samples for _, r in results) / sum(r.samples for _, r in results), 8),
        passed=all(r.passed for _, r in results), failures=failures, shapes=points,
        nonfinite_outputs=sum(r.nonfinite_outputs for _, r in results),
        reference_nonfinite=sum(r.reference_nonfinite for _, r in results))


def _validate_at(bundle: Bundle, data: Dataset | None, inputs: Any, *, samples: int, seed: int, keep_worst: int,
                 min_cosine: float | None, runner: Any, examples: Any) -> ValidationResult:
    """One validation with the inputs shaped as ``inputs`` (the bundle's, or one point of its shape range)."""
    import numpy as np

    from onnxsmith.check.numerics import collect, compare, save_examples
    from onnxsmith.data.dataset import batch_inputs, check_against_model, synthetic
    from onnxsmith.model import load_model
    from onnxsmith.plugin import backend_call
    from onnxsmith.check.reference import reference_runner

    if data is None:
        data = synthetic(load_model(bundle.reference_model, check=False), samples, seed, bundle.batch_inputs,
                         specs=inputs)
        if bundle.shape_ranges:  # one generated feed of a range's point still holds a batch of samples
            batched = batch_inputs(inputs, bundle.batch_inputs)
            data = dataclasses.replace(data, whole=tuple(n for n in data.whole if n not in batched))
    else:
        whole, per_feed = check_against_model(data.arrays, inputs, f"validation data '{data.source}'",
                                              bundle.batch_inputs, labelled=data.labels is not None)
        data = dataclasses.replace(data, whole=whole, batch=per_feed)
        if samples and len(data) > samples and data.labels is None:
            data = data.subset(samples)
    if not data.one_feed and len(data) < data.batch:
        raise DataError("not enough validation samples", f"{len(data)} samples, the compiled batch is {data.batch}")
    precision = bundle.manifest["precision_used"]
    check_min_cosine(min_cosine)
    threshold = min_cosine_for(precision, min_cosine)
    names = [o.name for o in bundle.outputs]
    own_runner = runner is None
    runner = runner or bundle.load_runner(emulate=True)
    emulation = getattr(runner, "emulation", None)
    try:
        if own_runner:
            runner.__enter__()
        with backend_call(bundle.backend, "run"):
            got = collect(runner, data.batches(), names)
    finally:
        if own_runner:
            runner.__exit__(None, None, None)
    with reference_runner(bundle.reference_model) as reference:
        want = collect(reference, data.batches(), names)
    feeds: dict[str, Any] = dict(data.arrays)
    whole: tuple[str, ...] = data.whole
    if data.one_feed:  # one feed (every array exactly its input's shape) is one sample, its outputs compared whole
        wrapped = {s.name for s in (*bundle.inputs, *bundle.outputs) if s.wrap}
        got, want = ({k: v if k in wrapped else np.asarray(v)[None] for k, v in d.items()} for d in (got, want))
        feeds = {k: [v] if k in wrapped else np.asarray(v)[None] for k, v in feeds.items()}
        whole = ()
    result = compare(got, want, data.labels, names)
    n = result.samples
    examples = save_examples(result, {k: v if k in whole else v[:n] for k, v in feeds.items()}, got, want,
                             examples, keep_worst, whole=whole)
    kept = tuple(WorstExample(e["index"], e["cosine"], e["max_abs_error"],
                               e["npz"].relative_to(bundle.path).as_posix(), e["label"], e["prediction"],
                               e["reference_prediction"]) for e in examples)
    failures = []
    if result.nonfinite:
        failures.append(f"{result.nonfinite} output value(s) are NaN or infinite where the reference is finite "
                        f"(first on sample {result.first_nonfinite})")
    if result.mismatched:
        failures.append(f"{result.mismatched} sample(s) differ exactly (string outputs, or the structure of a "
                        f"sequence or optional output; first on sample {result.first_mismatch})")
    if result.cosine_min < threshold:
        failures.append(f"cosine similarity {result.cosine_min:.6f} on sample {int(result.cosine.argmin())} "
                        f"is below the {threshold} required for {precision}")
    return ValidationResult(
        samples=n, data=data.source, output_checked=", ".join(names),
        max_abs_error=result.max_abs_error, max_rel_error=result.max_rel_error,
        mean_abs_error=result.mean_abs_error,
        cosine_min=round(result.cosine_min, 8), cosine_mean=round(result.cosine_mean, 8),
        top1_agreement=result.top1_agreement, top5_agreement=result.top5_agreement, accuracy=result.accuracy,
        reference_accuracy=result.reference_accuracy, min_cosine_required=threshold, passed=not failures,
        failures=tuple(failures), worst=kept, per_output=result.per_output, precision_used=precision,
        nonfinite_outputs=result.nonfinite, reference_nonfinite=result.reference_nonfinite,
        evaluated_by=emulation.to_json() if emulation is not None else None,
        mismatched_samples=result.mismatched,
    )

