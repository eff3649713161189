"""The optimization ladder: measure one change at a time, keep the best artifact that meets the constraints.

Order: ``baseline`` (ONNX Runtime fp32, the original model) -> ``simplify`` (onnxslim) -> every precision of the
profile's ladder that the target lists, on every backend of the target that runs here (ONNX Runtime gets fp16 and
int8 through the ONNX passes; other backends compile the precision natively, int8 from the same calibration set)
-> pruning (magnitude and 2:4, on the fastest fp32 backend) where the profile enables it -> runtime knobs of the best
step's backend (one declared option each) where the profile enables them -> a head-to-head of the leaders and their
ancestors in interleaved runs -> the chosen step at the profile's other batch sizes, and a dynamic-batching plan
from those latencies. Each step names its parent and the one thing it changed; a step that does not beat its parent
significantly (the confidence interval of the ratio of medians, :mod:`onnxsmith.stats`) is "no significant change"
and the parent is kept. All figures come from the measured :class:`~onnxsmith.optimize.record.Card`.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxsmith
from onnxsmith.errors import UnsupportedError, UserInputError
from onnxsmith.optimize.record import Card, Constraints, Step, Verdict, compare
from onnxsmith.optimize.selection import select
from onnxsmith.optimize.steps import Recipe, StepRunner, pass_spec

if TYPE_CHECKING:
    from onnxsmith.data import Dataset
    from onnxsmith.model import LoadedModel
    from onnxsmith.optimize.student import StudentSource
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target

SIMPLIFY = pass_spec("simplify")
BASELINE_BACKEND = "onnxruntime"
"""The reference engine of the core (ONNX Runtime fp32 on the original model): the ladder's first step."""
PRUNE = (("prune-magnitude", pass_spec("prune", method="magnitude", sparsity=0.5), "magnitude pruning to 50 % "
          "sparsity (unstructured)"),
         ("prune-2:4", pass_spec("prune", method="2:4"), "2:4 structured pruning (50 % sparsity)"))
SENSITIVITY_SECONDS = 900.0
"""Time cap of the per-layer sensitivity search behind the mixed-precision step (large models, slow backends)."""
_OWN_FILES = ("card.json", "card.md", "card.html")
_OWN_DIRS = ("card_files", "steps", "examples", "bundle", ".models")


def _prepare_output(output: Path, protected: Sequence[Path], force: bool) -> None:
    """``output`` must be new, empty, or a previous optimize output (whose parts are replaced); see
    :func:`onnxsmith.outdir.check_output_dir` for what is refused."""
    from onnxsmith.outdir import check_output_dir

    check_output_dir(output, "optimize", protected, force=force)
    if (output / "card.json").is_file():
        for name in _OWN_DIRS:
            shutil.rmtree(output / name, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)


def _usable_backends(target: Target, wanted: Sequence[str] | None, notes: list[str]) -> list[str]:
    from onnxsmith.registry import backend_status, get_backend

    for name in wanted or ():
        get_backend(name)  # the one "unknown backend" error, as from every verb
    usable = []
    for name in wanted or target.backends:
        status = backend_status(name, probe_devices=False)
        if not status.available:
            notes.append(f"backend {name} skipped: {status.reason}")
            continue
        backend = get_backend(name)
        support = backend.supports(target)
        runs = backend.runs_here(target) if support else support
        if not support or not runs:
            notes.append(f"backend {name} skipped: {(runs or support).reason}")
            continue
        usable.append(name)
    if wanted and not usable:
        raise UnsupportedError(f"none of the requested backends ({', '.join(wanted)}) can run {target.id} here",
                               "; ".join(n.removeprefix("backend ") for n in notes[-len(wanted):]),
                               "see 'onnxsmith doctor'")
    return usable


def _risky(step: Step) -> tuple[str, ...]:
    from onnxsmith.validation import DEFAULT_MIN_COSINE

    if not step.measured:
        return ()
    out = []
    threshold = DEFAULT_MIN_COSINE.get(step.precision.split("+")[0], 0.98)
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
    from onnxsmith.data import check_against_model, synthetic
    from onnxsmith.model.shapes import require_static
    from onnxsmith.optimize.card import write_card
    from onnxsmith.optimize.evaluate import reference_outputs

    output = Path(output)
    require_static(model)
    from onnxsmith.compile import protected_inputs

    notes: list[str] = []
    from onnxsmith.profiling.environment import LoadWatch, environment
    from onnxsmith.stats import is_busy

    env, load = environment(), LoadWatch().load_before
    notes.append(f"machine: {env['cpu_model']}, {env['usable_cores']} usable cores, frequency governor "
                 f"{env['frequency_governor'] or 'not readable'}; load average {load} when the ladder started"
                 + ("; the machine was busy: timings are noisy, and steps within noise keep their parent"
                    if is_busy(load, env["usable_cores"] or 1) else ""))
    usable = _usable_backends(target, backends, notes)  # before anything is written: a typo leaves no folder
    if student is not None:
        student.check()
    _prepare_output(output, protected_inputs(model, data, calibration), force)
    say = progress or (lambda message: None)
    if data is None:
        data = synthetic(model, 64)
        notes.append("no validation data: steps are judged by agreement with fp32 on 64 generated inputs; give "
                     "--data with --labels to measure task accuracy")
    check_against_model(data.arrays, model.inputs, f"validation data '{data.source}'")
    if calibration is None:
        calibration = data.subset(min(len(data), 128))
        notes.append(f"no calibration data: int8 was calibrated on the first {len(calibration)} validation samples "
                     "(give --calibration with separate data so validation is not calibrated on)")
    check_against_model(calibration.arrays, model.inputs, f"calibration data '{calibration.source}'")
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


def _precision_steps(runner: StepRunner, target: Target, usable: list[str], ladder: list[str], chain: tuple,
                     fp32_parent: str, notes: list[str]) -> list[Step]:
    from onnxsmith.registry import get_backend

    steps: list[Step] = []
    measured_fp32: dict[str, str] = {BASELINE_BACKEND: fp32_parent}
    for precision in ladder:
        for name in usable:
            backend = get_backend(name)
            passes = backend.onnx_pass_precisions(target)
            if name == BASELINE_BACKEND and precision == "fp32":
                continue  # the baseline/simplify step is the reference engine at fp32
            if precision in passes:
                spec = pass_spec(passes[precision])
                steps.append(runner.measure(Recipe(
                    f"{name}-{precision}", fp32_parent, f"precision fp32 -> {precision} by the {spec[0]} ONNX pass"
                    + ("" if name == BASELINE_BACKEND else f" ({name})"), name, precision, "fp32", (*chain, spec))))
                continue
            offered = backend.precisions(target)
            if precision not in offered:
                notes.append(f"{name} {precision} skipped: {name} offers {', '.join(offered)} for {target.id}"
                             + (f" and no ONNX pass produces {precision}" if passes else ""))
                continue
            for index, variant in enumerate(backend.ladder_variants(target, precision)):
                parent = measured_fp32.get(name)
                detail = f", {variant.change}" if variant.change else ""
                if parent is not None and precision != "fp32":
                    change = f"precision fp32 -> {precision} ({name}{detail})"
                else:
                    parent = fp32_parent
                    change = f"backend {BASELINE_BACKEND} -> {name}" + (f", precision fp32 -> {precision}"
                                                                          if precision != "fp32" else "") + detail
                step_name = f"{name}-{precision}" + (f"-{index + 1}" if index else "")
                step = runner.measure(Recipe(step_name, parent, change, name, precision, precision, chain,
                                             options=tuple(sorted(variant.options.items()))))
                steps.append(step)
                if precision == "fp32" and step.status != "failed" and name not in measured_fp32:
                    measured_fp32[name] = step.name
    return steps


def _mixed_steps(runner: StepRunner, target: Target, steps: list[Step], chain: tuple, constraints: Constraints,
                 notes: list[str]) -> list[Step]:
    """When an int8 step misses the accuracy budget, one more step per such backend: the same int8 with the
    keep-list of :func:`onnxsmith.optimize.sensitivity.analyze` left in fp32. When int8 meets it, nothing."""
    from onnxsmith.optimize.precision_debug import mixed_recipe
    from onnxsmith.registry import get_backend

    reference = next((s for s in steps if s.name == "baseline"), None)
    ref_quality = None if reference is None else reference.quality(constraints.metric)
    int8 = [s for s in steps if s.measured and runner.recipes[s.name].precision == "int8"]
    missing = [s for s in int8 if ref_quality is not None and s.quality(constraints.metric) is not None
               and float(ref_quality) - float(s.quality(constraints.metric) or 0.0) > constraints.max_accuracy_drop]
    if not missing:
        return []
    from onnxsmith.optimize.sensitivity import analyze

    runner.progress("int8 misses the accuracy budget: measuring per-layer sensitivity")
    model, _ = runner.build(chain)
    try:
        sens = analyze(model, runner.data, runner.calibration, constraints.max_accuracy_drop,
                       metric=constraints.metric, max_seconds=SENSITIVITY_SECONDS, progress=runner.progress)
    except Exception as exc:  # the ladder goes on without the mixed step, and says why
        from onnxsmith.errors import first_line

        notes.append(f"int8 missed the budget; the per-layer sensitivity analysis failed: {first_line(exc)}")
        return []
    notes += [f"per-layer sensitivity: {n}" for n in sens.notes if "time cap" in n]
    if not sens.keep or not sens.met:
        notes.append("int8 missed the budget and no keep-list short of every layer in fp32 meets it"
                     if not sens.met else "int8 missed the budget on some backend but not on ONNX Runtime's QDQ "
                     "form, where the keep-list is measured: no mixed step")
        return []
    notes.append(f"int8 missed the budget: per-layer sensitivity ({sens.evaluations} QDQ variants on ONNX Runtime, "
                 f"one calibration) keeps {', '.join(sens.keep_names)} in fp32 ({constraints.metric} drop "
                 f"{sens.int8_drop:.4f} -> {sens.mixed_drop:.4f})")
    out = []
    for step in missing:
        found = mixed_recipe(get_backend(step.backend), target, f"{step.name}-mixed", step.name, sens.keep_names,
                             chain, runner.recipes[step.name].options)
        if found is None:
            notes.append(f"{step.backend} has no way to keep layers out of int8: no mixed step for {step.name}")
            continue
        out.append(runner.measure(found[0]))
    return out


def _prune_steps(runner: StepRunner, steps: list[Step], chain: tuple, notes: list[str]) -> list[Step]:
    fp32 = [s for s in steps if s.measured and s.precision == "fp32" and s.latency_p50_ms is not None]
    if not fp32:
        notes.append("pruning skipped: no fp32 step was measured")
        return []
    best = min(fp32, key=lambda s: s.latency_p50_ms or 0.0)
    out = []
    for name, spec, words in PRUNE:
        step = runner.measure(Recipe(f"{name}", best.name, f"weights: {words}", best.backend, "fp32", "fp32",
                                     (*chain, spec), options=runner.recipes[best.name].options))
        if step.measured and best.latency_p50_ms:
            from onnxsmith.optimize.record import runs_ratio

            ci = runs_ratio(step, best, "latency_p50_ms")
            gain = (best.latency_p50_ms - (step.latency_p50_ms or 0.0)) / best.latency_p50_ms
            faster = ci.verdict() == "better" if ci is not None else gain > 0.03
            interval = f"; ratio {ci.text()}" if ci is not None else ""
            verdict = (f"{best.backend} got faster with the sparse weights: p50 {best.latency_p50_ms:.3f} -> "
                       f"{step.latency_p50_ms:.3f} ms ({gain * 100:+.1f} %{interval})" if faster else
                       f"{best.backend} did not get faster with the sparse weights (p50 {best.latency_p50_ms:.3f} -> "
                       f"{step.latency_p50_ms:.3f} ms{interval}): it runs them as dense")
            step = dataclasses.replace(step, notes=(*step.notes, verdict))
        out.append(step)
    return out


def _contest(runner: StepRunner, steps: list[Step], constraints: Constraints, rounds: int, seconds: float,
             tag: int, within: float | None = None, most: int = 6, cap: int = 8) -> list[Step]:
    """Time the leading candidates and their ancestors head to head in interleaved runs; every later comparison
    (the selection's "significantly better than its parent", improved/worse) uses those runs.

    Leaders: the best ``most`` steps that meet the constraints (only those within ``within`` of the best, when
    given), plus the ancestors of each that meet them too, so a step and the parent it must beat are always timed
    side by side. No fixed window by default: on a shared machine the load drifts by tens of per cent between one
    step's profile and the next, so single profiles cannot say which steps are close.
    Each is loaded once in its own process; then ``rounds`` runs of ``seconds`` each, in alternating order, so
    drift and load from other processes hit every candidate alike and run i of one pairs with run i of another."""
    from onnxsmith.optimize.selection import figure

    if rounds < 2:
        return steps
    selection = select(steps, constraints, "baseline")
    if not selection.chosen:
        return steps
    by = {s.name: s for s in selection.steps}
    ok = {s.name for s in selection.steps if s.verdict in (Verdict.CHOSEN.value, Verdict.LOST.value,
                                                               Verdict.NOT_SIGNIFICANT.value) and s.bundle}
    objective = constraints.objective
    best = figure(by[selection.chosen], objective) or 0.0

    def close(name: str) -> bool:
        if within is None:
            return True
        value = figure(by[name], objective) or 0.0
        return value <= best * (1 + within) if objective == "latency" else value >= best / (1 + within)

    leaders = sorted((n for n in ok if close(n)), key=lambda n: (figure(by[n], objective) or 0.0)
                     * (1 if objective == "latency" else -1))[:most]
    chosen: list[str] = []
    for name in leaders:
        while name and name in ok and name not in chosen and len(chosen) < cap:
            chosen.append(name)
            name = by[name].parent or ""
    if len(chosen) < 2:
        return steps
    mode = "throughput" if objective == "throughput" else "latency"
    runs, notes = runner.interleave([by[n] for n in chosen], rounds, seconds, mode)
    metric = "throughput_per_s" if mode == "throughput" else "latency_p50_ms"
    out = []
    for step in steps:
        if step.name in runs:
            others = ", ".join(n for n in runs if n != step.name)
            unit = "/s" if mode == "throughput" else " ms"
            step = dataclasses.replace(step, runs=tuple(runs[step.name]), runs_metric=metric,
                                       runs_kind=f"interleaved#{tag}", notes=(*step.notes, (
                                           f"timed head to head with {others} in {rounds} interleaved runs of "
                                           f"{seconds:g} s (alternating order; {mode} per run: "
                                           f"{', '.join(f'{v:.4g}' for v in runs[step.name])}{unit}); "
                                           "comparisons use these runs")))
        out.append(step)
    if notes:
        out = [dataclasses.replace(s, notes=(*s.notes, *[n.removeprefix(s.name + " ") for n in notes
                                                         if n.startswith(s.name + " ")])) for s in out]
    return out


def _knob_steps(runner: StepRunner, steps: list[Step], constraints: Constraints, target: Target,
                profile: Profile) -> list[Step]:
    """One step per runtime knob of the backend of the best step so far (threads, streams, hints, graph
    optimization level...): the same artifact with one declared option changed. A knob is kept only if its step
    beats that parent significantly (the selection's rule)."""
    from onnxsmith.registry import get_backend

    selection = select(steps, constraints, "baseline")
    if not selection.chosen:
        return []
    best = next(s for s in selection.steps if s.name == selection.chosen)
    recipe = runner.recipes[best.name]
    current = dict(recipe.options)
    out = []
    for index, variant in enumerate(get_backend(best.backend).runtime_knobs(target, profile, current)):
        options = {**current, **{k: str(v) for k, v in variant.options.items()}}
        label = "-".join(f"{k}={v}" for k, v in variant.options.items())
        out.append(runner.measure(dataclasses.replace(
            recipe, name=f"{best.name}+{label}" if label else f"{best.name}+knob{index + 1}", parent=best.name,
            change=f"runtime knob: {variant.change}", options=tuple(sorted(options.items())))))
    return out


def _batch_sweep(runner: StepRunner, steps: Sequence[Step], chosen: str, profile: Profile, constraints: Constraints,
                 latency_budget_ms: float | None, arrival_rate: float | None, notes: list[str]
                 ) -> tuple[list[Step], dict | None]:
    from onnxsmith.optimize.batching import BatchPoint, BatchSweep, plan_batching

    best = next(s for s in steps if s.name == chosen)
    recipe = runner.recipes[chosen]
    out: list[Step] = []
    points = [BatchPoint(1, float(best.latency_p50_ms or 0.0), best.latency_p99_ms)]
    sizes = [b for b in profile.batch_sizes if b != 1]
    swept = _dynamic_sweep(runner, recipe, chosen, sizes, constraints, notes) if sizes else None
    if swept is not None:
        step, measured = swept
        out.append(step)
        points += measured
        sizes = []
    for batch in sizes:
        try:
            runner.base_model(batch)
        except UserInputError as exc:
            notes.append(f"batch sweep skipped: {exc.one_line()}")
            break
        step = runner.measure(dataclasses.replace(
            recipe, name=f"{chosen}@b{batch}", parent=chosen, change=f"batch 1 -> {batch}", batch=batch,
            candidate=constraints.objective == "throughput"))
        out.append(step)
        if step.measured:
            points.append(BatchPoint(batch, float(step.latency_p50_ms or 0.0), step.latency_p99_ms))
    if len(profile.batch_sizes) == 1:
        notes.append(f"batch sweep: the {profile.name} profile lists batch size 1 only (the throughput profile "
                     "sweeps up to 32)")
    report = plan_batching(BatchSweep(tuple(points), chosen), arrival_rate, latency_budget_ms)
    return out, report.to_json()


def _dynamic_sweep(runner: StepRunner, recipe: Recipe, chosen: str, sizes: Sequence[int], constraints: Constraints,
                   notes: list[str]) -> tuple[Step, list[Any]] | None:
    """The batch sweep on one artifact whose batch dim is dynamic from 1 to the largest size (tuned for it), where
    the chosen step's backend compiles shape ranges: one compile, profiled at every batch size. ``None`` (and a
    note) when the backend cannot, or the model has no dynamic batch: the sweep then compiles one artifact per
    batch size."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.errors import OnnxsmithError
    from onnxsmith.model.shapes import specs_at
    from onnxsmith.optimize.batching import BatchPoint
    from onnxsmith.profiling.run import profile_bundle
    from onnxsmith.registry import get_backend

    top = max(sizes)
    batch_range = (1, top, top)
    try:
        model = runner.base_model(top, batch_range)
        support = get_backend(recipe.backend).dynamic_shapes(model, runner.target)
    except OnnxsmithError as exc:
        notes.append(f"batch sweep: one artifact per batch size ({exc.one_line()})")
        return None
    if not support:
        notes.append(f"batch sweep: one artifact per batch size, since {recipe.backend} cannot compile a batch range "
                     f"({support.reason})")
        return None
    step = runner.measure(dataclasses.replace(
        recipe, name=f"{chosen}@b1..{top}", parent=chosen, change=f"batch 1 -> dynamic 1..{top} (one artifact)",
        batch=top, batch_range=batch_range, candidate=constraints.objective == "throughput"))
    if not step.measured or not step.bundle:
        notes.append(f"batch sweep: the dynamic-batch artifact failed ({step.reason}); one artifact per batch size")
        return None
    bundle = Bundle.open(runner.output / step.bundle, verify=False)
    ranges = bundle.shape_ranges
    shaped = []
    for batch in sorted(sizes):
        scaled = {n: type(r)((batch, *r.min[1:]), (batch, *r.min[1:]), (batch, *r.min[1:])) for n, r in ranges.items()}
        shaped.append((f"b{batch}", specs_at(bundle.inputs, scaled, "opt")))
    runner.progress(f"profiling {step.name} at batch {', '.join(str(b) for b in sorted(sizes))}")
    try:
        record = profile_bundle(bundle, runner.profile, baseline=False, data=runner.data, points=shaped).to_json()
    except OnnxsmithError as exc:
        notes.append(f"batch sweep: profiling the dynamic-batch artifact failed ({exc.one_line()}); one artifact "
                     "per batch size")
        return None
    measured = [BatchPoint(p["batch"], float(p["latency_ms"]["p50"]), p["latency_ms"]["p99"]) for p in record["shapes"]]
    sweep_text = ", ".join(f"b{p.batch} {p.latency_p50_ms:.4g} ms" for p in measured)
    step = dataclasses.replace(step, notes=(*step.notes, f"one artifact for batch 1..{top}, profiled at each size "
                                            f"(p50 {sweep_text})"))
    return step, measured


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
