"""Building and measuring one ladder step: ONNX passes -> compile -> profile -> compare with fp32.

A :class:`Recipe` says how to build a step from the original model; :class:`StepRunner` builds it (caching pass
outputs, so a chain shared by several steps runs once), compiles the bundle, profiles it in a fresh process and
evaluates it on the validation data against the fp32 reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import OnnxsmithError, UserInputError, first_line
from onnxsmith.optimize.record import Step

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel
    from onnxsmith.optimize.evaluate import Reference
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target

PassSpec = tuple[str, tuple[tuple[str, Any], ...]]
"""A pass by name with its config as sorted (key, value) pairs (hashable, so chains can be cached)."""


def pass_spec(name: str, **config: Any) -> PassSpec:
    return (name, tuple(sorted(config.items())))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to build one step from the original model."""

    name: str
    parent: str | None
    change: str
    backend: str
    precision: str
    """What the step computes in, as the card shows it (an int8 QDQ model on ONNX Runtime is ``int8``)."""
    compile_precision: str
    """What the backend is asked for (ONNX Runtime always compiles ``fp32``: the precision is in the ONNX)."""
    passes: tuple[PassSpec, ...] = ()
    batch: int = 1
    candidate: bool = True
    options: tuple[tuple[str, str], ...] = ()
    """Backend options (``--option KEY=VALUE``) for the compile."""
    batch_range: tuple[int, int, int] | None = None
    """Compile one artifact whose batch dim is dynamic between (min, opt, max) (the batch sweep, where the backend
    compiles shape ranges); ``batch`` is then the max."""
    source: str | None = None
    """Build from this ONNX instead of the original model (the distilled student); it is its own reference."""


SCREEN_FACTOR = 5.0
"""A step whose probe p50 is more than this many times the fastest step's so far is cut after the probe."""
PROBE_RUNS = 3


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


class StepRunner:
    """Builds and measures recipes for one ladder run; every output lands under ``work``."""

    def __init__(self, model: LoadedModel, target: Target, profile: Profile, data: Dataset,
                 calibration: Dataset, reference: Reference, output: Path, keep_worst: int = 5,
                 progress: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.target = target
        self.profile = profile
        self.data = data
        self.calibration = calibration
        self.reference = reference
        self.output = Path(output).resolve()  # bundles are opened by their resolved path
        self.work = output / "steps"
        self.keep_worst = keep_worst
        self.progress = progress or (lambda message: None)
        self._models: dict[tuple[Any, ...], tuple[LoadedModel, dict[str, Any] | None]] = {}
        self.recipes: dict[str, Recipe] = {}
        """Every recipe measured so far, by step name."""
        self.fastest: dict[int, tuple[str, float]] = {}
        """Per batch size, the fastest fully measured step so far (name, p50 ms): the bar for the probe."""

    # --- the ONNX a recipe compiles -----------------------------------------------------------------------------
    def preload(self, source: str, model: LoadedModel) -> None:
        """Use ``model`` (already loaded, at batch 1) for recipes built from ``source``."""
        self._models[((), 1, source)] = (model, None)

    def base_model(self, batch: int, batch_range: tuple[int, int, int] | None = None,
                   source: str | None = None) -> LoadedModel:
        """The original model (or ``source``, a student) with batch ``batch`` (re-loaded with the batch dim set; it
        must be dynamic), or with its batch dim kept dynamic within ``batch_range`` (min, opt, max)."""
        if batch_range is not None:
            from onnxsmith.model import load_model

            static = {} if source is not None else {
                n: v for n, v in self.model.shape_overrides.items()
                if self.model.batch_inputs is None or n not in self.model.batch_inputs}
            ranged = load_model(source or self.model.source, static, batch=batch_range)
            if not ranged.shape_ranges:
                raise UserInputError(f"cannot sweep batches {batch_range[0]}..{batch_range[2]} in one artifact",
                                     "the model has no dynamic batch dim", "export the model with a dynamic batch dim")
            return ranged
        if source is not None and batch == 1:
            key = ((), 1, source)
            if key not in self._models:
                from onnxsmith.model import load_model

                self._models[key] = (load_model(source), None)
            return self._models[key][0]
        if source is None and (batch == 1 or (self.model.inputs and self.model.inputs[0].shape[:1] == (batch,))):
            return self.model
        from onnxsmith.model import load_model

        raw = load_model(source or self.model.source, default_batch=None, check=False)
        shapes = {}
        for spec in self.model.inputs:
            first = raw.input_spec(spec.name).shape[:1]
            if first and isinstance(first[0], int):
                raise UserInputError(f"cannot sweep batch {batch}", f"input '{spec.name}' has its batch dim fixed "
                                     f"to {first[0]} in the model", "export the model with a dynamic batch dim")
            shapes[spec.name] = (batch, *(int(d) for d in spec.shape[1:]))  # type: ignore[arg-type]
        return load_model(source or self.model.source, shapes)

    def build(self, passes: tuple[PassSpec, ...], batch: int = 1, batch_range: tuple[int, int, int] | None = None,
              source: str | None = None) -> tuple[LoadedModel, dict[str, Any] | None]:
        """The model (or ``source``) after ``passes`` (cached by prefix), and the record of the last pass."""
        key: tuple[Any, ...] = (passes, batch, source) if batch_range is None else (passes, batch, source,
                                                                                   batch_range)
        if key in self._models:
            return self._models[key]
        if not passes:
            result: tuple[LoadedModel, dict[str, Any] | None] = (self.base_model(batch, batch_range, source), None)
        else:
            parent, _ = self.build(passes[:-1], batch, batch_range, source)
            name, config = passes[-1]
            from onnxsmith.model import load_model
            from onnxsmith.model.saving import save_model
            from onnxsmith.optimize.passes import get_pass

            self.progress(f"pass {name}" + (f" (batch {batch})" if batch > 1 else ""))
            done = get_pass(name, **dict(config)).run(parent, calibration=self.calibration)
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
            path = save_model(done.model, self.output / ".models" / digest / f"{self.model.name}.onnx")
            loaded = load_model(path, {n: r for n, r in parent.shape_ranges.items()})
            if parent.batch_inputs and {s.name for s in loaded.inputs} >= set(parent.batch_inputs):
                loaded.batch_inputs = parent.batch_inputs  # the batch dims the original model left dynamic
            result = (loaded, done.record.to_json())
        self._models[key] = result
        return result

    # --- one step -----------------------------------------------------------------------------------------------
    def measure(self, recipe: Recipe) -> Step:
        """Build, compile, profile and evaluate ``recipe``; a failure becomes a ``failed`` step with the reason."""
        self.recipes[recipe.name] = recipe
        stage = "building the ONNX"
        record = None
        try:
            model, record = self.build(recipe.passes, recipe.batch, recipe.batch_range, recipe.source)
            stage = "compiling"
            bundle = self._compile(recipe, model)
            stage = "profiling"
            from onnxsmith.profiling.run import profile_bundle

            screened = self._screen(recipe, bundle)
            if screened is not None:
                prof = screened[0]
            else:
                self.progress(f"profiling {recipe.name}")
                prof = profile_bundle(bundle, self.profile, baseline=False, data=self.data).to_json()
            from onnxsmith.report import save_record

            save_record(bundle, "profile.json", prof)
            stage = "validating"
            self.progress(f"validating {recipe.name}")
            from onnxsmith.optimize.evaluate import evaluate

            ev = evaluate(bundle, self.data, self.reference, self.output / "examples" / slug(recipe.name),
                          self.output, self.keep_worst, max_seconds=30.0 if screened else 180.0)
        except OnnxsmithError as exc:
            return self._failed(recipe, record, f"{stage} failed: {exc.one_line()}")
        except Exception as exc:  # a vendor library raising something unwrapped must not end the whole ladder
            return self._failed(recipe, record, f"{stage} failed: {type(exc).__name__}: {first_line(exc)}")
        if ev.mismatched:  # exact comparisons (strings, sequence structure) have no tolerance to trade
            return self._failed(recipe, record, f"validating failed: {ev.mismatched} sample(s) differ exactly from "
                                "fp32 (string outputs, or a sequence's or optional's structure)")
        latency = prof["latency_ms"]
        throughput = max(prof.get("throughput_per_s") or 0.0, prof.get("parallel_throughput_per_s") or 0.0)
        notes = []
        from onnxsmith.profiling.environment import busy_warning

        busy = busy_warning(prof.get("environment") or {})
        if busy:
            notes.append(f"profile: {busy}")
        if (prof.get("parallel_throughput_per_s") or 0.0) > (prof.get("throughput_per_s") or 0.0):
            notes.append(f"throughput with {prof.get('parallel_requests')} parallel requests "
                         f"({prof['throughput_per_s']:,.1f}/s one at a time)")
        step = Step(
            name=recipe.name, parent=recipe.parent, change=recipe.change, backend=recipe.backend,
            precision=bundle.manifest["precision_used"],
            batch=recipe.batch, latency_p50_ms=latency["p50"], latency_p90_ms=latency["p90"],
            latency_p99_ms=latency["p99"], throughput_per_s=round(throughput, 3),
            peak_memory_mb=prof.get("peak_rss_mb"), size_bytes=prof.get("artifact_size_bytes"),
            accuracy=ev.accuracy, agreement=ev.agreement, cosine_min=round(ev.cosine_min, 8),
            samples_checked=ev.samples, checked=ev.checked, worst=ev.worst, pass_record=record,
            partial_check=ev.partial, runs=tuple(prof.get("block_p50_ms") or ()),
            runs_metric="latency_p50_ms" if prof.get("block_p50_ms") else "", runs_kind="blocks",
            candidate=recipe.candidate, bundle=str(bundle.path.relative_to(self.output)), notes=tuple(notes),
        )
        if screened is not None:
            return dataclasses.replace(step, status="rejected", reason=screened[1], screened=True)
        best = self.fastest.get(recipe.batch)
        if best is None or latency["p50"] < best[1]:
            self.fastest[recipe.batch] = (recipe.name, float(latency["p50"]))
        return step

    def _screen(self, recipe: Recipe, bundle: Any) -> tuple[dict[str, Any], str] | None:
        """Time a few runs first; a step far slower than the fastest one so far is not profiled in full, and is
        validated on what 30 s allow: ``(probe profile, why)``, or ``None`` to measure it fully.

        Untuned TVM CPU code, for instance, runs ResNet-50 in seconds where ONNX Runtime takes tens of
        milliseconds: a full profile and validation of it would cost many minutes to learn nothing.
        """
        from onnxsmith.optimize.record import fmt_ms
        from onnxsmith.profiles import Measure
        from onnxsmith.profiling.run import profile_bundle

        bar = self.fastest.get(recipe.batch)
        if bar is None:
            return None
        self.progress(f"probing {recipe.name}")
        probe = dataclasses.replace(self.profile, measure=Measure(warmup_iterations=1, min_iterations=PROBE_RUNS,
                                                                   min_seconds=0.0, max_seconds=60.0,
                                                                   throughput_seconds=0.0))
        prof = profile_bundle(bundle, probe, baseline=False, data=self.data).to_json()
        p50 = float(prof["latency_ms"]["p50"])
        if p50 <= SCREEN_FACTOR * bar[1]:
            return None
        why = (f"{p50 / bar[1]:.0f}x slower than {bar[0]} in a {PROBE_RUNS}-run probe (p50 {fmt_ms(p50)} ms vs "
               f"{fmt_ms(bar[1])} ms): not profiled further")
        from onnxsmith.registry import get_backend

        advice = get_backend(recipe.backend).slow_artifact_advice(bundle.artifact)
        if advice:
            why += f"; {advice}"
        self.progress(f"{recipe.name}: {why}")
        return prof, why

    def interleave(self, steps: list[Step], rounds: int, seconds: float, mode: str = "latency"
                   ) -> tuple[dict[str, list[float]], list[str]]:
        """Time the bundles of ``steps`` head to head: each loaded once in its own process, then ``rounds`` runs
        of ``seconds`` each in alternating order (A B C, C B A, ...). Per step name, one figure per run (median
        latency in ms, or throughput with ``mode='throughput'``), and notes on steps that could not take part."""
        import tempfile

        from onnxsmith.bundle import Bundle
        from onnxsmith.build.cache import owner_tag
        from onnxsmith.data.dataset import feed_batch, save_npz
        from onnxsmith.profiling.environment import LoadWatch
        from onnxsmith.profiling.run import profile_feeds
        from onnxsmith.profiling.worker import MeasureWorker, interleave

        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix=f"onnxsmith-contest-{owner_tag()}-") as tmp:
            workers: dict[str, MeasureWorker] = {}
            try:
                for step in steps:
                    bundle = Bundle.open(self.output / str(step.bundle), verify=False)
                    feeds, _ = profile_feeds(bundle, self.data)
                    label = slug(step.name)
                    path = Path(tmp) / f"{label}.npz"
                    save_npz(path, feeds)
                    try:
                        workers[step.name] = MeasureWorker("artifact", bundle, path,
                                                           feed_batch(bundle.inputs, bundle.batch_inputs), label=label)
                    except OnnxsmithError as exc:
                        notes.append(f"{step.name} left out of the head-to-head: {exc.one_line()}")
                if len(workers) < 2:
                    return {}, notes
                self.progress(f"head to head: {', '.join(workers)} ({rounds} interleaved runs each)")
                watch = LoadWatch()
                for worker in workers.values():
                    watch.track(worker.proc.pid)
                runs = interleave(workers, rounds, seconds, mode=mode, progress=self.progress)
                for worker in workers.values():
                    watch.untrack(worker.proc.pid)
                env = watch.finish()
                other = env["other_processes_cpu_share"]
                machine = (f"during the head-to-head: load average {env['load_average_before']} -> "
                           f"{env['load_average_after']} on {watch.cores} cores"
                           + ("" if other is None else f", other processes used {other * 100:.0f} % of the CPU")
                           + ("; the machine was busy, so the intervals are wide" if env["busy"] else ""))
                return runs, notes + [f"{name} {machine}" for name in runs]
            finally:
                for worker in workers.values():
                    worker.close()

    def _compile(self, recipe: Recipe, model: LoadedModel) -> Any:
        from onnxsmith.build.compile import compile_model

        self.progress(f"compiling {recipe.name} ({recipe.backend} {recipe.compile_precision})")
        target_dir = self.work / slug(recipe.name)
        return compile_model(model, self.target, profile=self.profile, output=target_dir, backend=recipe.backend,
                             precision=recipe.compile_precision,
                             calibration=self.calibration if recipe.compile_precision == "int8" else None,
                             notes=(f"optimize step '{recipe.name}': {recipe.change}",),
                             reference=self.base_model(recipe.batch, recipe.batch_range, recipe.source),
                             progress=self.progress,
                             options=dict(recipe.options))

    def _failed(self, recipe: Recipe, record: dict[str, Any] | None, reason: str) -> Step:
        self.progress(f"{recipe.name}: {reason}")
        shutil.rmtree(self.work / slug(recipe.name), ignore_errors=True)
        return Step(name=recipe.name, parent=recipe.parent, change=recipe.change, backend=recipe.backend,
                    precision=recipe.precision, batch=recipe.batch, status="failed", reason=reason,
                    pass_record=record, candidate=recipe.candidate)
