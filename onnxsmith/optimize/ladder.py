"""The optimization ladder: measure one change at a time, keep the best artifact that meets the constraints.

Order: ``baseline`` (ONNX Runtime fp32, the original model) -> ``simplify`` (onnxslim) -> every precision of the
profile's ladder that the target lists, on every backend of the target that runs here (ONNX Runtime gets fp16 and
int8 through the ONNX passes; other backends compile the precision natively, int8 from the same calibration set)
-> pruning (magnitude and 2:4, on the fastest fp32 backend) where the profile enables it -> runtime knobs of the best
step's backend (one declared option each) where the profile enables them -> a head-to-head of the leaders and their
ancestors in interleaved runs -> the chosen step at the profile's other batch sizes, and a dynamic-batching plan
from those latencies. Each step names its parent and the one thing it changed; a step that does not beat its parent
significantly (the confidence interval of the ratio of medians, :mod:`onnxsmith.profiling.stats`) is "no significant change"
and the parent is kept. All figures come from the measured :class:`~onnxsmith.optimize.record.Card`.

This module is the driver (:func:`run_ladder`: the output folder, the usable backends, the order above, judging
each step against its parent, publishing the pick); the steps it adds are built in
:mod:`onnxsmith.optimize.ladder_steps`, the head-to-head runs in :mod:`onnxsmith.optimize.contest` and the batch
sweep in :mod:`onnxsmith.optimize.batch_sweep`.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnxsmith
from onnxsmith.errors import UnsupportedError
from onnxsmith.optimize.batch_sweep import _batch_sweep
from onnxsmith.optimize.contest import _contest, _replicate
from onnxsmith.optimize.ladder_steps import (BASELINE_BACKEND, SIMPLIFY, _knob_steps, _mixed_steps,
                                             _precision_steps, _prune_steps, usable_backends)
from onnxsmith.optimize.record import Card, Constraints, Step, compare
from onnxsmith.optimize.selection import select
from onnxsmith.optimize.steps import Recipe, StepRunner
from onnxsmith.precisions import min_cosine_for

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel
    from onnxsmith.optimize.student import StudentSource
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target


def _risky(step: Step) -> tuple[str, ...]:

    if not step.measured:
        return ()
    out = []
    threshold = min_cosine_for(step.precision)
    if step.cosine_min is not None and step.cosine_min < threshold:
        out.append(f"cosine to fp32 {step.cosine_min:.5f} is below the {threshold} expected for {step.precision}")
    if step.agreement is not None and step.agreement < 1.0:
        out.append(f"top-1 differs from fp32 on {round((1 - step.agreement) * step.samples_checked)} of "
                   f"{step.samples_checked} samples")
    if step.partial_check:
        out.append(f"checked on {step.samples_checked} samples only (time cap): its accuracy is on a subset")
    if step.samples_checked and step.samples_checked < 100:
        out.append(f"only {step.samples_checked} samples checked")
    return tuple(out)


def _judge(steps: list[Step]) -> list[Step]:
    """Fill improved/worse/risky of every step against its parent."""
    by_name = {s.name: s for s in steps}
    out = []
    for step in steps:
        parent = by_name.get(step.parent or "")
        improved, worse = compare(step, parent) if parent is not None and step.measured and parent.measured else ((), ())
        out.append(dataclasses.replace(step, improved=improved, worse=worse, risky=_risky(step)))
    return out


def run_ladder(model: LoadedModel, target: Target, profile: Profile, *, data: Dataset | None,
               calibration: Dataset | None, max_accuracy_drop: float, latency_budget_ms: float | None,
               output: Path, backends: Sequence[str] | None = None, prune: bool | None = None,
               arrival_rate: float | None = None, keep_worst: int = 5, keep_steps: bool = False,
               progress: Callable[[str], None] | None = None, force: bool = False,
               student: StudentSource | None = None) -> Card:
    """Walk the ladder for ``model`` on ``target``; write the card and the chosen bundle under ``output``.

    ``student``: a distilled student measured as one more step (:mod:`onnxsmith.optimize.student`).

    ``output`` is refused when it holds anything but a previous optimize result (unless ``force``), or when it
    contains the model, the data or the cache (always)."""
    from onnxsmith.build.cache import private_dir, replace_dir
    from onnxsmith.build.compile import protected_inputs
    from onnxsmith.model.shapes import require_static
    from onnxsmith.dirs import check_output_dir
    from onnxsmith.profiling.environment import LoadWatch, environment
    from onnxsmith.profiling.stats import is_busy

    require_static(model)
    notes: list[str] = []
    env, load = environment(), LoadWatch().load_before
    notes.append(f"machine: {env['cpu_model']}, {env['usable_cores']} usable cores, frequency governor "
                 f"{env['frequency_governor'] or 'not readable'}; load average {load} when the ladder started"
                 + ("; the machine was busy: timings are noisy, and steps within noise keep their parent"
                    if is_busy(load, env["usable_cores"] or 1) else ""))
    usable = usable_backends(target, backends, notes)  # before anything is written: a typo leaves no folder
    if student is not None:
        student.check()
    output = check_output_dir(output, "optimize", protected_inputs(model, data, calibration), force=force)
    # The ladder runs in a private folder beside -o that replaces it only when the card is written: an interrupted
    # run (Ctrl-C, SIGTERM, SIGKILL) leaves the previous result whole, and a later run sweeps a killed one's folder.
    with private_dir(output.parent, output.name) as work:
        if (output / "distill").is_dir():  # a previous student's training resumes from its own record
            shutil.copytree(output / "distill", work / "distill", symlinks=True)
        card = _run_ladder(model, target, profile, data=data, calibration=calibration,
                           max_accuracy_drop=max_accuracy_drop, latency_budget_ms=latency_budget_ms, output=work,
                           usable=usable, notes=notes, prune=prune, arrival_rate=arrival_rate, keep_worst=keep_worst,
                           keep_steps=keep_steps, progress=progress, student=student)
        replace_dir(work, output)
    return card


def _run_ladder(model: LoadedModel, target: Target, profile: Profile, *, data: Dataset | None,
                calibration: Dataset | None, max_accuracy_drop: float, latency_budget_ms: float | None,
                output: Path, usable: list[str], notes: list[str], prune: bool | None, arrival_rate: float | None,
                keep_worst: int, keep_steps: bool, progress: Callable[[str], None] | None,
                student: StudentSource | None) -> Card:
    from onnxsmith.data.dataset import check_against_model, synthetic
    from onnxsmith.optimize.card import write_card
    from onnxsmith.optimize.evaluate import calibration_data, reference_outputs

    say = progress or (lambda message: None)
    if data is None:
        data = synthetic(model, 64)
        notes.append("no validation data: steps are judged by agreement with fp32 on 64 generated inputs; give "
                     "--data with --labels to measure task accuracy")
    check_against_model(data.arrays, model.inputs, f"validation data '{data.source}'")
    calibration = calibration_data(model, data, calibration, notes)
    say("running the fp32 reference")
    reference = reference_outputs(model, data)
    metric = ("accuracy" if reference.classifier and data.labels is not None
              else "agreement" if reference.classifier else "cosine_min")
    if metric != "accuracy" and data.labels is not None:
        notes.append("labels were given but the first output is not N x classes: the constraint uses cosine")
    constraints = Constraints(max_accuracy_drop=max_accuracy_drop, latency_budget_ms=latency_budget_ms,
                              metric=metric, objective="throughput" if profile.performance_hint == "throughput"
                              else "latency")
    runner = StepRunner(model, target, profile, data, calibration, reference, output, keep_worst, say)
    steps: list[Step] = []

    baseline = runner.measure(Recipe("baseline", None, "ONNX Runtime fp32 on the original model (the reference)",
                                     BASELINE_BACKEND, "fp32", "fp32"))
    if baseline.status == "failed":
        raise UnsupportedError("the ONNX Runtime fp32 baseline failed", baseline.reason,
                               "check the model with 'onnxsmith inspect'")
    steps.append(baseline)
    chain: tuple = ()
    fp32_parent = "baseline"
    if profile.simplify:
        simplified = runner.measure(Recipe("simplify", "baseline", "graph simplified (onnxslim: constant folding, "
                                           "dead nodes, fusions)", BASELINE_BACKEND, "fp32", "fp32", (SIMPLIFY,)))
        steps.append(simplified)
        if simplified.status != "failed" and (simplified.cosine_min or 0) >= 0.9999:
            chain, fp32_parent = (SIMPLIFY,), "simplify"
            if simplified.pass_record:
                steps[-1] = dataclasses.replace(simplified, change=str(simplified.pass_record.get("summary")))
        elif simplified.status != "failed":
            notes.append(f"the simplified model changed outputs (cosine {simplified.cosine_min}); later steps use "
                         "the original")
    ladder = [p for p in profile.ladder if p in target.precisions]
    skipped = [p for p in profile.ladder if p not in target.precisions]
    if skipped:
        notes.append(f"precisions {', '.join(skipped)} skipped: {target.id} does not list them")
    steps += _precision_steps(runner, target, usable, ladder, chain, fp32_parent, notes)
    steps += _mixed_steps(runner, target, steps, chain, constraints, notes)
    if student is not None:
        from onnxsmith.optimize.student import student_steps

        steps += student_steps(runner, student.prepare(model, output, target, say), steps, constraints, notes)
    if profile.prune if prune is None else prune:
        steps += _prune_steps(runner, steps, chain, notes)
    if profile.knobs:
        steps += _knob_steps(runner, steps, constraints, target, profile)
    rounds, seconds = profile.measure.rounds, profile.measure.round_seconds
    steps = _contest(runner, steps, constraints, rounds, seconds, tag=1)
    steps = _replicate(runner, steps, constraints, rounds, seconds)
    steps = _judge(steps)
    first = select(steps, constraints, "baseline")
    batching = None
    if first.chosen:
        sweep_steps, batching = _batch_sweep(runner, first.steps, first.chosen, profile, constraints,
                                             latency_budget_ms, arrival_rate, notes)
        steps = steps + sweep_steps
        if constraints.objective == "throughput" and sweep_steps:
            steps = _contest(runner, steps, constraints, rounds, seconds, tag=2)
        steps = _judge(steps)
    final = select(steps, constraints, "baseline")
    bundle_rel = _publish(output, final.steps, final.chosen, keep_steps)
    if bundle_rel and batching:
        from onnxsmith.bundle import Bundle
        from onnxsmith.serving import write_serving

        say("writing the serving configuration")
        write_serving(Bundle.open(output / bundle_rel, verify=False), batching,
                      f"optimize's batch sweep of {batching['sweep'].get('step') or final.chosen} and its "
                      f"dynamic-batching simulation (card.json); the bundle is the pick, {final.chosen}")
    steps_out = [dataclasses.replace(s, bundle=("bundle" if s.name == final.chosen else
                                                s.bundle if keep_steps else None)) for s in final.steps]
    card = Card(
        model=model.name, model_fingerprint=model.fingerprint, target=target.id, profile=profile.name,
        constraints=constraints, reference="baseline", steps=tuple(steps_out), chosen=final.chosen,
        failure=final.failure, validation=data.source + (f" ({len(data)} samples"
                                                         + (", labelled)" if data.labels is not None else ")")),
        batching=batching, bundle=bundle_rel,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=f"{platform.node()} {platform.machine()}", onnxsmith_version=onnxsmith.__version__,
        notes=tuple([*model.notes, *notes]),
    )
    say("writing the evidence card")
    write_card(card, output)
    return card


def _publish(output: Path, steps: Sequence[Step], chosen: str | None, keep_steps: bool) -> str | None:
    """Move the chosen step's bundle to ``output/bundle``; drop the other step bundles unless asked to keep them."""
    rel = None
    if chosen:
        step = next(s for s in steps if s.name == chosen)
        if step.bundle:
            shutil.rmtree(output / "bundle", ignore_errors=True)
            shutil.move(str(output / step.bundle), str(output / "bundle"))
            rel = "bundle"
    if not keep_steps:
        shutil.rmtree(output / "steps", ignore_errors=True)
    shutil.rmtree(output / ".models", ignore_errors=True)
    return rel
