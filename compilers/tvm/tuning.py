"""MetaSchedule tuning with a trial and time budget, a progress callback and a database shared per target.

Options (``--option KEY=VALUE``): ``tune=1`` turns tuning on; ``tune_trials=N`` (default 64 per task),
``tune_minutes=M`` (default 30) and ``tune_trials_per_task=K`` bound it. With ``tune_minutes`` alone the time is the
budget (up to :data:`TIME_BOUND_TRIALS_PER_TASK` trials per kernel), so MetaSchedule's task scheduler spends the
minutes where its cost model expects the largest gains. The database lives under
``cache_root()/tvm-tuning/<key>``, one directory per TVM version and target (its canonical JSON, CPU features
included); inside it MetaSchedule keys records by workload (each fused kernel's structure), so a second compile of
the same model, or of another model sharing kernels, reuses them and tunes only the kernels that have none;
``tune_more=1`` searches every kernel again within the budget, its evolutionary search seeded with the best records.

Why builds are done by :func:`build_candidate` (measured here): MetaSchedule's default builder imports
``tvm.s_tir.tensor_intrin`` in every worker, which takes 33 s on the 2-core development machine (22 s of it CUDA
intrinsics), and its builder pool restarts for every batch with a 30 s timeout, so every candidate timed out.
For the same reason CPU tuning registers only the CPU tensor intrinsics (see :func:`_cpu_intrinsics_only`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from onnxsmith.errors import BackendError, UnsupportedError, UserInputError

from onnxsmith.compilers.tvm.common import FFI_PIN, ffi_version, tvm, tvm_version, vendor_why
from onnxsmith.compilers.tvm.targets import TVMTarget

DEFAULT_MINUTES = 30.0
DEFAULT_TRIALS_PER_TASK = 64
TIME_BOUND_TRIALS_PER_TASK = 1000


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    """The tuning budget asked for with ``--option``."""

    enabled: bool = False
    trials: int | None = None
    """Total trials across all kernels; default :data:`DEFAULT_TRIALS_PER_TASK` per kernel to tune."""
    minutes: float = DEFAULT_MINUTES
    trials_per_task: int | None = None
    more: bool = False
    """Search every kernel again, starting from its best records, instead of reusing the kernels that have one."""

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> TuneOptions:
        def number(key: str, kind: type) -> Any:
            if key not in options:
                return None
            try:
                value = kind(options[key])
            except ValueError:
                value = None
            if value is None or value < 0 or (kind is float and not math.isfinite(value)):
                raise UserInputError(f"invalid --option {key}={options[key]}", f"expected a non-negative {kind.__name__}",
                                     f"for example --option {key}=" + ("64" if kind is int else "10"))
            return value

        def flag(key: str) -> bool:
            text = str(options.get(key, "0")).strip().lower()
            if text not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise UserInputError(f"invalid --option {key}={options[key]}", "expected 1 or 0")
            return text in ("1", "true", "yes", "on")

        enabled, more = flag("tune"), flag("tune_more")
        trials, minutes, per_task = number("tune_trials", int), number("tune_minutes", float), \
            number("tune_trials_per_task", int)
        if not enabled and (more or any(v is not None for v in (trials, minutes, per_task))):
            raise UserInputError("tuning options given without --option tune=1",
                                 "tune_trials/tune_minutes/tune_trials_per_task/tune_more only apply when tuning",
                                 "add --option tune=1")
        if minutes is not None and trials is None and per_task is None:
            per_task = TIME_BOUND_TRIALS_PER_TASK  # only a time budget: let the time bound the search
        return cls(enabled, trials, DEFAULT_MINUTES if minutes is None else minutes, per_task, more)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TuningProgress:
    """One progress report: sent after each measured batch."""

    trials: int
    """Candidates measured so far in this run."""
    budget: int
    tasks_total: int
    tasks_done: int
    build_errors: int
    run_errors: int
    elapsed_s: float
    deadline_s: float

    def text(self) -> str:
        errors = f", {self.build_errors} build / {self.run_errors} run errors" if self.build_errors or self.run_errors \
            else ""
        return (f"tuning: {self.trials}/{self.budget} trials, {self.tasks_done}/{self.tasks_total} kernels done"
                f"{errors}, {self.elapsed_s / 60:.1f}/{self.deadline_s / 60:.0f} min")


@dataclasses.dataclass(frozen=True)
class TuningResult:
    mod: Any
    """The Relax module with the database's best schedules applied."""
    state: str
    """``tuned`` (every kernel has a record), ``partially tuned`` or ``untuned``."""
    tasks: int
    tasks_with_records: int
    trials: int
    build_errors: int
    run_errors: int
    seconds: float
    database: str
    records: tuple[str, ...]
    """The applied records, one JSON text each (workload hash, trace, run times)."""
    fingerprint: str
    notes: tuple[str, ...] = ()


def database_dir(tt: TVMTarget) -> Path:
    """``cache_root()/tvm-tuning/<key>``: one database per TVM version and target."""
    from onnxsmith.build.cache import cache_root

    canonical = tt.canonical()
    key = hashlib.sha256(json.dumps([tvm_version(), canonical]).encode()).hexdigest()[:16]
    directory = cache_root() / "tvm-tuning" / key
    directory.mkdir(parents=True, exist_ok=True)
    info = directory / "target.json"
    if not info.exists():
        info.write_text(json.dumps({"tvm": tvm_version(), "target": json.loads(canonical)}, indent=2) + "\n")
    return directory


def database_state(tt: TVMTarget) -> str:
    """A digest of the database's files (names, sizes, modification times): changes whenever records are added."""
    directory = database_dir(tt)
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(directory.glob("*.json"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One tuning run per database at a time (MetaSchedule appends to its JSON files)."""
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_candidate(mod: Any, target: Any, params: Any) -> Any:
    """MetaSchedule's default build without importing every tensor intrinsic in the worker (see module doc)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _cpu_intrinsics_only() -> None:
    """Register the x86 and Arm tensor intrinsics without the CUDA/ROCm/Hexagon ones (30 s saved per process).

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__`` registers every intrinsic; CPU schedule
    rules only use the x86 (VNNI/AMX) and Arm (dot product, SVE) ones. The package module is created without
    running its ``__init__``; its submodules still import on demand.
    """
    import importlib
    import importlib.util

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    try:
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{name}.{sub}")
    except Exception:  # layout changed: fall back to the full import
        del sys.modules[name]
        importlib.import_module(name)


def tune(mod: Any, tt: TVMTarget, options: TuneOptions, cores: int,
         progress: Callable[[TuningProgress], None] | None = None) -> TuningResult:
    """Tune the kernels of ``mod`` (legalized and fused) lacking records, within budget; apply the database."""
    if ffi_version() and ffi_version() != FFI_PIN:
        raise UnsupportedError("TVM tuning is disabled with this apache-tvm-ffi",
                               f"apache-tvm-ffi {ffi_version()} is installed; MetaSchedule crashes serializing modules "
                               f"with releases after {FFI_PIN}", f"pip install apache-tvm-ffi=={FFI_PIN}")
    if tt.kind == "llvm":
        _cpu_intrinsics_only()
    else:  # tensor-core schedule rules look CUDA intrinsics up by name
        import importlib

        importlib.import_module("tvm.s_tir.tensor_intrin.cuda")
    from tvm.s_tir import meta_schedule as ms

    target = tt.create()
    directory = database_dir(tt)
    start = time.monotonic()
    with _locked(directory):
        database = ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")
        try:
            tasks = ms.relax_integration.extract_tasks(mod, target)
        except Exception as exc:
            raise BackendError("MetaSchedule could not extract tuning tasks", vendor_why(exc)) from exc
        todo = tasks if options.more else [
            t for t in tasks if database.query_tuning_record(t.dispatched[0], target, t.task_name) is None]
        counters = {"trials": 0, "build_errors": 0, "run_errors": 0}
        notes: list[str] = []
        if todo:
            todo = _heaviest_first(todo)
            per_task = options.trials_per_task or DEFAULT_TRIALS_PER_TASK
            budget = options.trials if options.trials is not None else per_task * len(todo)
            if budget > 0 and options.minutes > 0:
                _search(ms, todo, directory, database, target, cores, budget, per_task, options.minutes, counters,
                        progress, start)
        reused = len(tasks) - len(todo)
        if options.more:
            notes.append(f"tuned every kernel further (tune_more), starting from the best records in {directory}")
        elif reused:
            notes.append(f"reused tuning records for {reused} of {len(tasks)} kernels from {directory}")
        with target, database:
            tuned_mod = tvm().relax.transform.MetaScheduleApplyDatabase()(mod)
        records = []
        for task in tasks:
            record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
            if record is not None:
                records.append(json.dumps(_record_json(record, task.task_name), sort_keys=True))
    with_records = len(records)
    state = "tuned" if tasks and with_records == len(tasks) else "partially tuned" if with_records else "untuned"
    if counters["build_errors"] or counters["run_errors"]:
        notes.append(f"tuning: {counters['build_errors']} build and {counters['run_errors']} run errors in "
                     f"{counters['trials']} trials; MetaSchedule's logs are in {directory / 'logs'}")
    return TuningResult(
        mod=tuned_mod, state=state, tasks=len(tasks), tasks_with_records=with_records, trials=counters["trials"],
        build_errors=counters["build_errors"], run_errors=counters["run_errors"],
        seconds=round(time.monotonic() - start, 1), database=str(directory), records=tuple(records),
        fingerprint=hashlib.sha256("\n".join(records).encode()).hexdigest()[:16] if records else "",
        notes=tuple(notes))


def _heaviest_first(tasks: list[Any]) -> list[Any]:
    """Tasks by estimated work (FLOPs times occurrences), heaviest first.

    MetaSchedule's gradient scheduler gives every task one batch, in list order, before it weighs them; on 2 cores a
    batch costs about a minute, so with a time budget the order decides which kernels are tuned at all.
    """
    from tvm.s_tir.analysis import estimate_tir_flops

    def work(task: Any) -> float:
        try:
            return float(estimate_tir_flops(task.dispatched[0])) * task.weight
        except Exception:  # an op the estimator does not know: tune it last
            return 0.0

    return sorted(tasks, key=work, reverse=True)


def _record_json(record: Any, task_name: str) -> dict[str, Any]:
    """A record as JSON: the kernel, its structural hash, the schedule trace and the measured run times."""
    from tvm.s_tir.meta_schedule import _ffi_api

    # The raw FFI JSON, not ``record.as_json()``: that one raises on traces holding an IndexMap (the layout
    # rewrites of CPU weight prepacking); :func:`_plain` writes such objects as their TVMScript text.
    return {"task": task_name, "workload_shash": str(_plain(_ffi_api.WorkloadAsJSON(record.workload))[0]),
            "record": _plain(_ffi_api.TuningRecordAsJSON(record))}


def _plain(value: Any) -> Any:
    """FFI containers -> JSON-able Python values."""
    # A freshly measured trace holds IntImm/FloatImm and booleans where one read back from the database holds
    # plain numbers: both must serialize alike, or the records' fingerprint changes when nothing did.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if isinstance(getattr(value, "value", None), (int, float)):
        return _plain(value.value)
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return str(value)


def _search(ms: Any, tasks: list[Any], directory: Path, database: Any, target: Any, cores: int, budget: int,
            per_task: int, minutes: float, counters: dict[str, int],
            progress: Callable[[TuningProgress], None] | None, start: float) -> None:
    """Run MetaSchedule on ``tasks``; the time budget is enforced by the search strategy and the builder.

    The deadline is enforced where the time goes: the search strategy generates no candidates once it has passed
    (the scheduler then ends that task), and the builder answers a batch generated just before it with "skipped".
    """
    deadline = minutes * 60
    derived_object = tvm().ir.utils.derived_object
    skipped = "skipped: the tuning time budget is spent"

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc, name-defined]
        def apply(self, scheduler: Any, task_id: int, candidates: Any, builds: Any, runs: Any) -> None:
            errors = [b.error_msg for b in builds]
            counters["trials"] += sum(1 for e in errors if e is None or not str(e).startswith(skipped))
            counters["build_errors"] += sum(1 for e in errors if e is not None and not str(e).startswith(skipped))
            counters["run_errors"] += sum(1 for e, r in zip(errors, runs) if e is None and r.error_msg is not None)
            elapsed = time.monotonic() - start
            records = list(scheduler.tasks_)
            if progress is not None:
                progress(TuningProgress(counters["trials"], budget, len(records),
                                        sum(1 for r in records if r.is_terminated), counters["build_errors"],
                                        counters["run_errors"], round(elapsed, 1), deadline))

    @derived_object
    class DeadlineSearch(ms.search_strategy.PySearchStrategy):  # type: ignore[misc, name-defined]
        """The evolutionary search, generating nothing once the budget is spent: the scheduler then ends the task.

        Without it, every task still pending runs its search (10-15 s per kernel on 2 cores) after the deadline:
        a 1-minute budget on ResNet-50 took 594 s.
        """

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def _initialize_with_tune_context(self, context: Any) -> None:
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: Any, database: Any = None,
                       cost_model: Any = None) -> None:
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self) -> Any:
            if time.monotonic() - start >= deadline:
                return None
            return self.inner.generate_measure_candidates()

        def notify_runner_results(self, candidates: Any, results: Any) -> None:
            self.inner.notify_runner_results(candidates, results)

        def clone(self) -> Any:
            return DeadlineSearch(self.inner.clone())

    threads = max(1, cores)
    local = ms.builder.LocalBuilder(f_build=build_candidate, max_workers=threads, timeout_sec=120)

    @derived_object
    class DeadlineBuilder(ms.builder.PyBuilder):  # type: ignore[misc, name-defined]
        def build(self, build_inputs: list[Any]) -> list[Any]:
            if time.monotonic() - start >= deadline:
                return [ms.builder.BuilderResult(None, skipped) for _ in build_inputs]
            return local.build(build_inputs)  # type: ignore[no-any-return]

    import logging

    # MetaSchedule's console handler writes to stdout at the package logger's level (it would corrupt --json
    # output): keep it quiet; the per-task log files under <database>/logs still get everything.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.CRITICAL)
    # A time-bound search measures 32 candidates a batch, not 64: every kernel gets its first batch sooner (on 2
    # cores a 64-batch costs about a minute) and the gradient scheduler has more rounds to spend on the heavy ones.
    per_iter = 32 if per_task >= TIME_BOUND_TRIALS_PER_TASK else min(64, per_task)
    population = max(32, min(512, 16 * per_task))
    strategy = DeadlineSearch(ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population),
        genetic_num_iters=4 if per_task >= 64 else 1))
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        tasks, str(directory), strategy=strategy, num_threads=threads, seed=0)
    try:
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(directory), max_trials_global=budget,
                           max_trials_per_task=per_task, num_trials_per_iter=per_iter,
                           builder=DeadlineBuilder(), runner=ms.runner.LocalRunner(
                               timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(
                                   number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)),
                           database=database, cost_model="xgb",
                           measure_callbacks=ms.MeasureCallback.create("default") + [Progress()])
    except Exception as exc:
        raise BackendError("MetaSchedule tuning failed", vendor_why(exc),
                           f"read the logs in {directory / 'logs'}; compile without --option tune=1 meanwhile") from exc


def progress_printer(update: Callable[[str], None] | None = None,
                     every_s: float = 15.0) -> Callable[[TuningProgress], None]:
    """Tuning progress as text: to ``update`` (e.g. the CLI's spinner), else a line on stderr at most every
    ``every_s`` seconds (stderr keeps ``--json`` output clean; a rich live display shows it above itself)."""
    last = [-every_s]

    def report(state: TuningProgress) -> None:
        if update is not None:
            update(state.text())
        elif state.elapsed_s - last[0] >= every_s or state.tasks_done == state.tasks_total:
            last[0] = state.elapsed_s
            print(state.text(), file=sys.stderr, flush=True)

    return report


@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[TuningProgress], None]]:
    """A rich progress bar of tuning trials on stderr, for library use (``tune(..., progress=bar)``)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("tuning", total=None)

        def update(state: TuningProgress) -> None:
            bar.update(task, description=state.text(), completed=state.trials, total=state.budget)

        yield update
