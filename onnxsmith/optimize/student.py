"""The distilled student as a ladder step (``optimize --student``): changed: the architecture; parent: the baseline.

The student is either a finished ``onnxsmith distill`` directory (its ``student.onnx``), or ``module:factory``,
distilled here from the optimized model on ``--train-data`` (:func:`onnxsmith.torchin.distill.distill`, into
``OUTPUT/distill``, where a rerun finds it trained). The step is built, profiled and validated like every step,
against the teacher's fp32 outputs, so the card sets teacher against student on latency, size and accuracy, with the
examples where they disagree. When the student meets the accuracy constraint, every precision step measured on the
teacher is measured on the student too (``student-<step>``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UserInputError

if TYPE_CHECKING:
    from onnxsmith.model import LoadedModel
    from onnxsmith.optimize.record import Constraints, Step
    from onnxsmith.optimize.steps import StepRunner
    from onnxsmith.targets import Target

STEP = "student"


@dataclasses.dataclass(frozen=True)
class Student:
    onnx: Path
    record: dict[str, Any]
    """The distill record (``distill.json``)."""


@dataclasses.dataclass(frozen=True)
class StudentSource:
    """What ``--student`` names, and what distilling it needs."""

    spec: str
    teacher_spec: str
    shapes: tuple[str, ...] = ()
    train: str | None = None
    val: str | None = None
    labels: str | None = None
    minutes: float = 3.0

    def check(self) -> None:
        """Refuse a bad ``--student`` before the ladder writes anything."""
        from onnxsmith.torchin.source import torch_kind

        folder = Path(self.spec)
        if folder.is_dir():
            if not (folder / "distill.json").is_file() or not (folder / "student.onnx").is_file():
                raise UserInputError(f"invalid --student '{self.spec}'", "the folder is not a finished 'onnxsmith "
                                     "distill' output (distill.json, student.onnx)", "run onnxsmith distill first, "
                                     "or give module:factory with --train-data")
            return
        if torch_kind(self.spec) != "factory":
            raise UserInputError(f"invalid --student '{self.spec}'", "expected package.module:factory or an "
                                 "'onnxsmith distill' output folder", "for example --student mypkg.models:small")
        if not self.train:
            raise UserInputError(f"--student {self.spec} needs training data", "the student is distilled from the "
                                 "model on it", "add --train-data train.npz (never the validation data)")

    def prepare(self, model: LoadedModel, output: Path, target: Target,
                progress: Callable[[str], None]) -> Student:
        folder = Path(self.spec)
        if folder.is_dir():
            record = json.loads((folder / "distill.json").read_text())
            if record.get("status") != "done":
                raise UserInputError(f"invalid --student '{self.spec}'", "its distillation did not finish",
                                     f"rerun onnxsmith distill with -o {self.spec} (it resumes)")
            if record.get("teacher_fingerprint") not in (None, model.fingerprint):
                raise UserInputError(f"invalid --student '{self.spec}'", "it was distilled from another model",
                                     "distill a student of this model")
            from onnxsmith.model import load_model

            mine = load_model(folder / "student.onnx")
            if [s.name for s in mine.inputs] != [s.name for s in model.inputs] or \
                    [s.name for s in mine.outputs][:1] != [s.name for s in model.outputs][:1]:
                raise UserInputError(f"invalid --student '{self.spec}'", "its inputs/outputs are named "
                                     f"{[s.name for s in mine.inputs]} -> {[s.name for s in mine.outputs]}, the "
                                     f"model's {[s.name for s in model.inputs]} -> {[s.name for s in model.outputs]}",
                                     "distill it again with this onnxsmith (it names them after the teacher)")
            return Student(folder / "student.onnx", record)
        from onnxsmith.torchin.distill import STUDENT, Settings, distill

        assert self.train is not None
        where = output / "distill"
        progress(f"distilling {self.spec} ({self.minutes:g} min budget)")
        record = distill(self.teacher_spec, self.spec, train_spec=self.train, output=where, val_spec=self.val,
                         labels=self.labels, shapes=self.shapes, settings=Settings(minutes=self.minutes),
                         target=target, force=True, progress=progress)
        return Student(where / STUDENT, record)


def student_steps(runner: StepRunner, student: Student, steps: Sequence[Step], constraints: Constraints,
                  notes: list[str]) -> list[Step]:
    """The student step, then the teacher's precision steps replayed on the student when it qualifies."""
    from onnxsmith.optimize.steps import Recipe

    record = student.record
    params = record.get("parameters", {})
    change = (f"architecture: the distilled student {record.get('student')} ({params.get('student', 0):,} "
              f"parameters; teacher {params.get('teacher', 0):,})")
    baseline = next(s for s in steps if s.name == "baseline")
    from onnxsmith.model import load_model

    loaded = load_model(student.onnx)
    loaded.export = record.get("export")  # the student's bundles say where their ONNX came from
    runner.preload(str(student.onnx), loaded)
    step = runner.measure(Recipe(STEP, "baseline", change, baseline.backend, "fp32", "fp32", source=str(student.onnx)))
    out = [step]
    notes.append(f"student {record.get('student')}: {params.get('student', 0):,} parameters against the teacher's "
                 f"{params.get('teacher', 0):,}; distilled {record.get('epochs')} epochs in "
                 f"{record.get('train_seconds')} s ({record.get('stopped')})")
    metric = constraints.metric
    ref, value = baseline.quality(metric), step.quality(metric)
    if not step.measured or ref is None or value is None or ref - value > constraints.max_accuracy_drop:
        why = (step.reason if not step.measured else f"its {metric} {value} is more than "
               f"{constraints.max_accuracy_drop:g} below the baseline's {ref}")
        notes.append(f"precisions not tried on the student: {why}")
        return out
    by_name = {s.name: s for s in steps}
    for name, recipe in list(runner.recipes.items()):
        teacher_step = by_name.get(name)
        if (name in ("baseline", "simplify", STEP) or recipe.source is not None or recipe.batch != 1
                or teacher_step is None or teacher_step.status == "failed" or name.startswith("prune")):
            continue
        parent = STEP if recipe.parent in ("baseline", "simplify") else f"{STEP}-{recipe.parent}"
        passes = tuple(p for p in recipe.passes if p[0] != "simplify")
        out.append(runner.measure(dataclasses.replace(recipe, name=f"{STEP}-{name}", parent=parent, passes=passes,
                                                      source=str(student.onnx))))
    return out
