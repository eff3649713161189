"""The steps the ladder adds, each one change from its parent: the recipes (baseline engine, simplify, pruning),
then the builders of the precision steps (per backend, ONNX passes or native), the mixed-precision step (int8 with
a keep-list when int8 misses the budget), the pruning steps and the runtime-knob steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UnsupportedError
from onnxsmith.optimize.record import Constraints, Step
from onnxsmith.optimize.selection import select
from onnxsmith.optimize.steps import Recipe, StepRunner, pass_spec

if TYPE_CHECKING:
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target


SIMPLIFY = pass_spec("simplify")
BASELINE_BACKEND = "onnxruntime"
"""The reference engine of the core (ONNX Runtime fp32 on the original model): the ladder's first step."""
PRUNE = (("prune-magnitude", pass_spec("prune", method="magnitude", sparsity=0.5), "magnitude pruning to 50 % "
          "sparsity (unstructured)"),
         ("prune-2:4", pass_spec("prune", method="2:4"), "2:4 structured pruning (50 % sparsity)"))
NO_VNNI_INT8 = (("reduce-range", pass_spec("int8_qdq", reduce_range=True),
                 "int8 weights in 7 bits (reduce_range: VPMADDUBSW cannot saturate on a CPU without VNNI)"),
                ("u8u8", pass_spec("int8_qdq", weight_type="uint8"),
                 "uint8 weights (U8U8: the format ONNX Runtime suggests where U8S8's VPMADDUBSW saturates)"))
"""The int8 QDQ variants ONNX Runtime's quantization guide recommends on x86 CPUs with AVX2 but without VNNI, each
a measured step beside the default U8S8 one (on VNNI and AMX CPUs the default has no saturation to avoid)."""
SENSITIVITY_SECONDS = 900.0
"""Time cap of the per-layer sensitivity search behind the mixed-precision step (large models, slow backends)."""


def keep_change(keep: Sequence[str], precision: str = "fp32") -> str:
    """The one change a mixed step makes, in words. ``precision``: what the kept layers compute in, or ``""``
    when the backend picks (OpenVINO runs unquantized ops at its inference precision, bf16 by default on CPUs
    that have it)."""
    layers = f"layer{'s' if len(keep) != 1 else ''} {', '.join(keep)}"
    if precision:
        return f"{layers} kept in {precision} (not quantized)"
    return f"{layers} kept out of int8 (not quantized; they run at the backend's float precision)"


def mixed_recipe(backend: Any, target: Target, name: str, parent: str, keep: Sequence[str], chain: tuple,
                 parent_options: tuple = ()) -> tuple[Any, str] | None:
    """The ladder recipe of ``backend``'s int8 with ``keep`` left unquantized, or ``None`` when the backend has no
    way to keep layers out of int8."""
    passes = backend.onnx_pass_precisions(target)
    words = keep_change(keep)
    if passes.get("int8") == "int8_qdq":  # the QDQ graph's unquantized nodes are plain fp32 ONNX
        how = "int8_qdq ONNX pass, nodes_to_exclude"
        return Recipe(name, parent, f"{words}: {how}, same calibration set", backend.name, "int8", "fp32",
                      (*chain, pass_spec("int8_qdq", nodes_to_exclude=tuple(keep))), options=parent_options), how
    option = backend.keep_fp32_option(target)
    if option and "int8" in backend.precisions(target):
        options = tuple(sorted({**dict(parent_options), option: ",".join(keep)}.items()))
        how = f"{backend.name} option {option}"
        return Recipe(name, parent, f"{keep_change(keep, '')}: {how}, same calibration set", backend.name, "int8", "int8", chain,
                      options=options), how
    return None


def usable_backends(target: Target, wanted: Sequence[str] | None, notes: list[str]) -> list[str]:
    """The backends a ladder (or ``debug precision``) uses on ``target``: ``wanted`` or the target's, each
    installed, supporting it and running here; the others are named in ``notes``."""
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


def avx2_without_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or ``flags``) is x86 with AVX2 and no VNNI or AMX int8 (int8 dot products through
    VPMADDUBSW)."""
    from onnxsmith.targets.host import cpu_flags

    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


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
                if spec[0] == "int8_qdq" and name == "onnxruntime" and target.detected and avx2_without_vnni():
                    if not any(n.startswith("this CPU has AVX2 without VNNI") for n in notes):
                        notes.append("this CPU has AVX2 without VNNI: ONNX Runtime's int8 is also measured with "
                                     "7-bit weights (reduce_range) and with uint8 weights (U8U8), each a step")
                    for suffix, variant, change in NO_VNNI_INT8:
                        steps.append(runner.measure(Recipe(f"{name}-{precision}-{suffix}", f"{name}-{precision}",
                                                           change, name, precision, "fp32", (*chain, variant))))
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
