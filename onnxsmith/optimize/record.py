"""The optimization record: one :class:`Card` of :class:`Step` s, the single source of every figure in the card.

``card.json``, ``card.md`` and ``card.html`` are all rendered from a :class:`Card`; ``Card.from_json`` reads the
JSON back, so a card can be re-rendered without measuring again.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

STATUSES = ("chosen", "rejected", "failed", "measured")
"""``measured``: not yet judged; ``failed``: the step could not be built or measured (``reason`` says why)."""

# Relative changes smaller than these are noise, not an improvement (timings on shared machines jitter).
NOISE = {"latency_p50_ms": 0.03, "throughput_per_s": 0.03, "peak_memory_mb": 0.05, "size_bytes": 0.01}


@dataclasses.dataclass(frozen=True)
class Example:
    """One validation example kept because the step did worst on it."""

    index: int
    """Position in the validation data."""
    cosine: float | None = None
    max_abs_error: float | None = None
    label: int | None = None
    prediction: int | None = None
    reference_prediction: int | None = None
    npz: str | None = None
    """Inputs and both outputs, relative to the card's directory."""
    png: str | None = None
    """The input rendered as an image (when it is one), relative to the card's directory."""

    @property
    def wrong(self) -> bool:
        return self.label is not None and self.prediction is not None and self.prediction != self.label


class Verdict(str, enum.Enum):
    """Why a step ended where it did, as a code the ladder decides by (``Step.reason`` is the prose shown)."""

    NONE = ""
    CHOSEN = "chosen"
    LOST = "lost"
    """Meets every constraint; another step is better by the objective."""
    CONSTRAINT = "constraint"
    """Misses the accuracy constraint or the latency budget."""
    NOT_CANDIDATE = "not_candidate"
    """A batch-sweep step under the latency objective."""
    SCREENED = "screened"
    """Cut after a short probe: far slower than the best step so far."""
    NOT_SIGNIFICANT = "not_significant"
    """Meets every constraint, but does not beat its parent significantly: the simpler parent is kept."""
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Step:
    """One rung of the ladder: a measured artifact that changes one thing from its parent."""

    name: str
    parent: str | None
    change: str
    """What changed from the parent, in words (``precision fp32 -> int8 (QDQ, per-channel, MinMax)``)."""
    backend: str
    precision: str
    batch: int = 1
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    throughput_per_s: float | None = None
    peak_memory_mb: float | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    """Task accuracy on the labelled validation data (``None`` without labels)."""
    agreement: float | None = None
    """Top-1 agreement with the fp32 reference (classifier-like outputs only)."""
    cosine_min: float | None = None
    """Lowest cosine similarity to the fp32 reference over the checked samples."""
    samples_checked: int = 0
    checked: str = ""
    """Which validation examples were checked (``all 360 samples of validation.npz``)."""
    status: str = "measured"
    reason: str = ""
    """Why it was rejected or failed; for the chosen step, why it won."""
    improved: tuple[str, ...] = ()
    worse: tuple[str, ...] = ()
    risky: tuple[str, ...] = ()
    worst: tuple[Example, ...] = ()
    pass_record: Mapping[str, Any] | None = None
    """The :class:`~onnxsmith.optimize.passes.PassRecord` (as JSON) of the ONNX pass this step ran, if any."""
    candidate: bool = True
    """Whether this step may be chosen (batch-sweep steps only under a throughput objective)."""
    bundle: str | None = None
    notes: tuple[str, ...] = ()
    screened: bool = False
    verdict: str = Verdict.NONE.value
    """A :class:`Verdict` value, set by the selection."""
    partial_check: bool = False
    """Validated on a subset only: the evaluation hit its time cap."""
    runs: tuple[float, ...] = ()
    """Per-run figures every comparison of this step is decided by (:mod:`onnxsmith.profiling.stats`): medians of the
    interleaved runs when the step took part in a head-to-head, else of contiguous blocks of its one profile run."""
    runs_metric: str = ""
    """What ``runs`` hold: ``latency_p50_ms`` (median latency per run) or ``throughput_per_s``."""
    runs_kind: str = ""
    """``interleaved#N`` (the Nth head-to-head: runs of the same N were timed alternately, run i beside run i) or
    ``blocks`` (contiguous blocks of one profile run)."""
    vs_parent: Mapping[str, Any] | None = None
    """The ratio of this step to its parent on the objective, with its confidence interval (``RatioCI`` as JSON),
    set by the selection."""
    replication: Mapping[str, Any] | None = None
    """The pick's second head-to-head against its parent, the two alone in fresh processes (``ratio``: RatioCI as
    JSON; ``runs``, ``parent_runs``): the pick keeps its place only when this win replicates
    (:mod:`onnxsmith.optimize.contest`)."""

    @property
    def measured(self) -> bool:
        return self.status != "failed" and self.latency_p50_ms is not None

    def quality(self, metric: str) -> float | None:
        """The value of the constraint's metric: ``accuracy``, ``agreement`` or ``cosine_min``."""
        return getattr(self, metric)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("improved", "worse", "risky", "notes", "runs"):
            data[key] = list(data[key])
        data["vs_parent"] = None if self.vs_parent is None else dict(self.vs_parent)
        data["worst"] = [dataclasses.asdict(e) for e in self.worst]
        data["pass_record"] = None if self.pass_record is None else dict(self.pass_record)
        data["replication"] = None if self.replication is None else dict(self.replication)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        values = {k: v for k, v in data.items() if k in _STEP_FIELDS}
        for key in ("improved", "worse", "risky", "notes", "runs"):
            values[key] = tuple(values.get(key, ()))
        values["worst"] = tuple(Example(**e) for e in values.get("worst", ()))
        return cls(**values)


_STEP_FIELDS = {f.name for f in dataclasses.fields(Step)}


@dataclasses.dataclass(frozen=True)
class Constraints:
    """What a step must meet to be chosen."""

    max_accuracy_drop: float
    """Largest accepted drop of ``metric`` below the reference step, as a fraction (0.01 = 1 point of accuracy)."""
    latency_budget_ms: float | None = None
    """Largest accepted p50 latency."""
    metric: str = "accuracy"
    """``accuracy`` (labelled data), ``agreement`` (top-1 with fp32) or ``cosine_min``."""
    objective: str = "latency"
    """``latency`` (lowest p50 wins) or ``throughput`` (highest throughput wins)."""


@dataclasses.dataclass(frozen=True)
class Card:
    """The whole optimization record of one model for one target."""

    model: str
    model_fingerprint: str
    target: str
    profile: str
    constraints: Constraints
    reference: str
    """The step every accuracy drop is measured from (the ONNX Runtime fp32 baseline)."""
    steps: tuple[Step, ...]
    chosen: str | None = None
    failure: str | None = None
    """When nothing met the constraints: which constraint failed and by how much."""
    validation: str = ""
    """The validation data, in words."""
    batching: Mapping[str, Any] | None = None
    """The batch sweep and dynamic-batching simulation (:class:`~onnxsmith.serving.batching.BatchingReport`)."""
    bundle: str | None = None
    """Where the chosen artifact's bundle was written."""
    created: str = ""
    host: str = ""
    onnxsmith_version: str = ""
    notes: tuple[str, ...] = ()

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "model_fingerprint": self.model_fingerprint, "target": self.target,
            "profile": self.profile, "constraints": dataclasses.asdict(self.constraints),
            "reference": self.reference, "chosen": self.chosen, "failure": self.failure,
            "validation": self.validation, "bundle": self.bundle,
            "steps": [s.to_json() for s in self.steps],
            "batching": None if self.batching is None else dict(self.batching),
            "created": self.created, "host": self.host, "onnxsmith_version": self.onnxsmith_version,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Card:
        return cls(
            model=data["model"], model_fingerprint=data.get("model_fingerprint", ""), target=data["target"],
            profile=data.get("profile", ""), constraints=Constraints(**data["constraints"]),
            reference=data["reference"], steps=tuple(Step.from_json(s) for s in data["steps"]),
            chosen=data.get("chosen"), failure=data.get("failure"), validation=data.get("validation", ""),
            batching=data.get("batching"), bundle=data.get("bundle"), created=data.get("created", ""),
            host=data.get("host", ""), onnxsmith_version=data.get("onnxsmith_version", ""),
            notes=tuple(data.get("notes", ())),
        )


def _relative(new: float, old: float) -> float:
    return (new - old) / old if old else 0.0


def runs_ratio(step: Step, other: Step, metric: str) -> Any:
    """``step`` over ``other`` on ``metric`` from their per-run figures, with its confidence interval
    (:class:`onnxsmith.profiling.stats.RatioCI`); None when either has no runs of that metric. Runs of the same head-to-head
    are paired."""
    if not (step.runs and other.runs and step.runs_metric == metric == other.runs_metric):
        return None
    from onnxsmith.profiling.stats import compare_runs

    paired = (step.runs_kind.startswith("interleaved") and step.runs_kind == other.runs_kind
              and len(step.runs) == len(other.runs))
    return compare_runs(step.runs, other.runs, paired=paired)


def compare(child: Step, parent: Step) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which metrics ``child`` improved and which got worse against ``parent``: latency and throughput by the
    confidence interval of their per-run figures when both have runs, else (and for memory and size) by a noise
    threshold."""
    improved: list[str] = []
    worse: list[str] = []
    lower_better = {"latency_p50_ms": "latency", "peak_memory_mb": "memory", "size_bytes": "size"}
    for key, label in lower_better.items():
        ci = runs_ratio(child, parent, key) if key == "latency_p50_ms" else None
        if ci is not None:
            verdict = ci.verdict(lower_is_better=True)
            if verdict != "no significant change":
                (improved if verdict == "better" else worse).append(label)
            continue
        new, old = getattr(child, key), getattr(parent, key)
        if new is None or old is None:
            continue
        change = _relative(float(new), float(old))
        if change < -NOISE[key]:
            improved.append(label)
        elif change > NOISE[key]:
            worse.append(label)
    new_t, old_t = child.throughput_per_s, parent.throughput_per_s
    ci = runs_ratio(child, parent, "throughput_per_s")
    if ci is not None:
        if ci.significant:
            (improved if ci.verdict(lower_is_better=False) == "better" else worse).append("throughput")
    elif new_t is not None and old_t is not None:
        change = _relative(new_t, old_t)
        if change > NOISE["throughput_per_s"]:
            improved.append("throughput")
        elif change < -NOISE["throughput_per_s"]:
            worse.append("throughput")
    for key, label in (("accuracy", "accuracy"), ("agreement", "agreement with fp32")):
        new, old = getattr(child, key), getattr(parent, key)
        if new is None or old is None:
            continue
        if new > old + 1e-9:
            improved.append(label)
        elif new < old - 1e-9:
            worse.append(label)
    return tuple(improved), tuple(worse)


def pareto_front(steps: Sequence[Step], metric: str) -> list[str]:
    """Names of the measured steps no other step beats on both p50 latency (lower) and ``metric`` (higher)."""
    points = [(s.name, float(s.latency_p50_ms), float(q)) for s in steps
              if s.measured and s.latency_p50_ms is not None and (q := s.quality(metric)) is not None]
    front = []
    for name, lat, qual in points:
        dominated = any((ol <= lat and oq >= qual) and (ol < lat or oq > qual) for _, ol, oq in points)
        if not dominated:
            front.append(name)
    return front


def fmt_ms(value: float | None) -> str:
    return "–" if value is None else (f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}")


def fmt_pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
