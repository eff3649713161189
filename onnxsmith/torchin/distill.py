"""Distillation: train a smaller PyTorch student on a teacher's outputs, then export it with the checks of
:mod:`onnxsmith.torchin`.

The teacher (an ONNX model run by ONNX Runtime, or a PyTorch model run eagerly) scores the training data once; the
student learns from those scores by temperature-scaled KL divergence (Hinton et al.), mixed with cross-entropy on
the hard labels when labels are given. Adam with a cosine learning rate over the run (the epochs, or the time budget
when it ends first); validation accuracy (or top-1 agreement with the teacher, without labels) after every epoch;
the best epoch is kept, and in the second half of the schedule training stops early after ``patience`` epochs
without improvement. A checkpoint is
written after every epoch, so an interrupted run resumes where it stopped.

Output directory: ``student.onnx`` (the export, checked), ``distill.json`` (settings, per-epoch history, teacher
against student on parameters, accuracy and latency, the export record), ``checkpoint.pt`` and its record
``checkpoint.json``. A run trains in ``.<name>.distilling`` beside ``-o`` (checkpointed there, so a rerun resumes
it) and renames it to ``-o`` only when finished: an interrupted run, ``--restart`` included, leaves a previous
result whole. A checkpoint is loaded only after its record names this run and its sha256, and then only as tensors
and plain values (``torch.load(weights_only=True)``): never unpickled as code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError, UserInputError

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel

RECORD = "distill.json"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_RECORD = "checkpoint.json"
"""Beside the checkpoint: the run it belongs to (``identity``), its epoch and its sha256, checked before loading."""
STUDENT = "student.onnx"
SMALL_STUDENT = 1_000_000
"""Students with fewer parameters train on one CPU thread."""
MAX_EPOCHS = 500
"""The epoch cap when only a time budget is given."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to train; everything here joins the checkpoint's identity (a resume must train the same way)."""

    temperature: float = 4.0
    alpha: float = 0.7
    """Weight of the soft (KL) loss; ``1 - alpha`` goes to the hard labels when there are labels."""
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int | None = None
    minutes: float | None = None
    patience: int = 15
    seed: int = 0


@dataclasses.dataclass
class EpochLine:
    epoch: int
    loss: float
    val: float | None
    seconds: float
    lr: float


def teacher_logits(teacher_spec: str, teacher: LoadedModel, data: Dataset, progress: Callable[[str], None]) -> Any:
    """The teacher's first output on every sample of ``data``: ONNX Runtime on the ONNX, or eager PyTorch."""
    import numpy as np

    from onnxsmith.check.numerics import collect
    from onnxsmith.torchin.source import build_torch_model, torch_kind

    progress(f"scoring {len(data)} training samples with the teacher")
    names = [o.name for o in teacher.outputs]
    kind = torch_kind(teacher_spec)
    if kind is not None:
        import torch

        from onnxsmith.torchin.inputs import InputArg, _to_torch, flatten_outputs

        model = build_torch_model(teacher_spec, kind)
        specs = [InputArg(s.name, tuple(int(d) for d in s.shape), s.dtype) for s in teacher.inputs]
        parts = []
        with torch.no_grad():
            for feed in data.batches():
                parts.append(flatten_outputs(model.eager(*_to_torch(torch, feed, specs)))[0])
        return np.concatenate(parts).astype(np.float32)
    from onnxsmith.check.reference import reference_runner

    with reference_runner(teacher.path) as runner:
        return collect(runner, data.batches(), names)[names[0]].astype(np.float32)


def count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def onnx_parameters(model: LoadedModel) -> int:
    from onnxsmith.analysis import summarize

    return int(summarize(model)["parameters"])


def _fingerprint(teacher: LoadedModel, student_spec: str, train: Dataset, settings: Settings,
                 input_names: Sequence[str]) -> str:
    from onnxsmith.build.cache import cache_key

    return cache_key({"teacher": teacher.fingerprint, "student": student_spec, "train": train.fingerprint(),
                      "settings": dataclasses.asdict(settings), "inputs": list(input_names)})[:16]


def _save_atomic(write: Callable[[Path], None], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_record(output: Path, record: Mapping[str, Any]) -> None:
    _save_atomic(lambda p: p.write_text(json.dumps(record, indent=2, default=str)), output / RECORD)


def _done(settings: Settings, epoch: int, elapsed: float) -> float:
    """How far the run is, 0..1: by epochs (``--epochs``, else the :data:`MAX_EPOCHS` cap) or by the time budget,
    whichever is further."""
    done = epoch / (settings.epochs or MAX_EPOCHS)
    if settings.minutes:
        done = max(done, elapsed / (settings.minutes * 60))
    return min(done, 1.0)


def _lr(settings: Settings, done: float) -> float:
    """Cosine from the base rate to 5 % of it over the run."""
    return settings.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))


def distill(teacher_spec: str, student_spec: str, *, train_spec: str, output: Path, val_spec: str | None = None,
            labels: str | None = None, shapes: Sequence[str] = (), settings: Settings = Settings(),
            restart: bool = False, force: bool = False, target: Any = None,
            progress: Callable[[str], None] | None = None,
            on_epoch: Callable[[EpochLine, int | None], None] | None = None) -> dict[str, Any]:
    """Train ``student_spec`` (``module:factory``) on ``teacher_spec``'s outputs; write ``output``; the record."""
    from onnxsmith.torchin import open_model
    from onnxsmith.torchin.source import import_torch, torch_kind

    torch = import_torch()
    say = progress or (lambda message: None)
    if torch_kind(student_spec) != "factory":
        raise UserInputError(f"invalid --student '{student_spec}'", "the student is trained, so it must be built "
                             "by a function", "give package.module:factory (or path/to/file.py:factory)")
    if settings.epochs is None and settings.minutes is None:
        raise UserInputError("distill needs a budget", "neither --epochs nor --minutes was given",
                             "for example --minutes 3")
    output = Path(output).resolve()
    teacher = open_model(teacher_spec, shapes, target=target, progress=say)
    train, val = _open_data(teacher, train_spec, val_spec, labels)
    _prepare_output(output, teacher, train, val, force)
    names = [s.name for s in teacher.inputs]
    identity = _fingerprint(teacher, student_spec, train, settings, names)
    finished = _finished(output, identity)
    if finished is not None and not restart:
        say(f"already distilled in '{output}' (same teacher, student, data and settings)")
        return finished
    previous = _read_json(output / RECORD)
    work = work_dir(output)
    own = (_read_json(work / CHECKPOINT_RECORD) or {}).get("identity") == identity  # an interrupted run to resume
    if previous is not None and previous.get("status") == "done" and not restart and not own:
        raise UserInputError(f"'{output}' holds another distillation", "it was made with another teacher, student, "
                             "data or settings", "pass --restart to replace it (it stays until the new run "
                             "finishes), or another -o")
    with _claim(work, output):
        if restart:
            _clear(work)
        return _train(torch, teacher_spec, student_spec, teacher, train, val, labels, settings, identity, names,
                      output, work, target, say, on_epoch)


def work_dir(output: Path) -> Path:
    """Where a distillation into ``output`` trains and checkpoints until it is finished and renamed to ``output``."""
    return output.parent / f".{output.name}.distilling"


def _train(torch: Any, teacher_spec: str, student_spec: str, teacher: LoadedModel, train: Dataset,
           val: Dataset | None, labels: str | None, settings: Settings, identity: str, names: list[str],
           output: Path, work: Path, target: Any, say: Callable[[str], None],
           on_epoch: Callable[[EpochLine, int | None], None] | None) -> dict[str, Any]:
    say("building the student")
    from onnxsmith.torchin.source import load_factory

    torch.manual_seed(settings.seed)
    student = load_factory(student_spec).train()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student.to(device)
    threads = torch.get_num_threads()
    if device == "cpu" and count_parameters(student) < SMALL_STUDENT:
        torch.set_num_threads(1)  # tiny ops: thread hand-offs cost more than they save, worse on a loaded machine

    soft = teacher_logits(teacher_spec, teacher, train, say)
    if soft.ndim != 2 or soft.shape[1] < 2:
        raise DataError("cannot distill this teacher", f"its first output has shape {soft.shape[1:]} per sample; "
                        "distillation needs class scores (N x C)", "give a classifier teacher")
    val_soft = teacher_logits(teacher_spec, teacher, val, say) if val is not None else None
    arrays = {n: torch.from_numpy(_samples(train, n)) for n in names}
    hard = torch.from_numpy(train.labels.astype("int64").reshape(-1)) if train.labels is not None else None
    targets = torch.from_numpy(soft)
    count = len(targets)

    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    state = {"epoch": 0, "elapsed": 0.0, "best": None, "best_epoch": None, "best_state": None, "history": [],
             "stale": 0}
    checkpoint = work / CHECKPOINT
    resumed = False
    saved = _load_checkpoint(torch, work, output, identity, device)
    if saved is not None:
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
        resumed = True
        say(f"resuming after epoch {state['epoch']}")
    record: dict[str, Any] = {
        "status": "training", "teacher": teacher_spec, "student": student_spec, "train": train.source,
        "validation": val.source if val is not None else None, "labels": labels,
        "settings": dataclasses.asdict(settings), "device": device, "torch_version": torch.__version__,
        "identity": identity, "resumed": resumed, "teacher_fingerprint": teacher.fingerprint}
    _write_record(work, record)
    generator = torch.Generator().manual_seed(settings.seed + state["epoch"])
    max_epochs = settings.epochs or MAX_EPOCHS
    budget = settings.minutes * 60 if settings.minutes else None
    stop_reason = ""
    temperature = settings.temperature
    while state["epoch"] < max_epochs:
        if budget is not None and state["history"]:
            last = state["history"][-1]["seconds"]
            if state["elapsed"] + last > budget:
                stop_reason = f"time budget of {settings.minutes:g} min reached"
                break
        start = time.perf_counter()
        done = _done(settings, state["epoch"], state["elapsed"])
        lr = _lr(settings, done)
        for group in optimizer.param_groups:
            group["lr"] = lr
        student.train()
        order = torch.randperm(count, generator=generator)
        total, seen = 0.0, 0
        for begin in range(0, count, settings.batch_size):
            idx = order[begin:begin + settings.batch_size]
            feed = [arrays[n][idx].to(device) for n in names]
            logits = student(*feed)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            teacher_p = torch.softmax(targets[idx].to(device) / temperature, dim=1)
            kl = torch.nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), teacher_p,
                                            reduction="batchmean") * temperature ** 2
            loss = kl
            if hard is not None:
                loss = settings.alpha * kl + (1 - settings.alpha) * torch.nn.functional.cross_entropy(
                    logits, hard[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        metric = _evaluate(torch, student, val, val_soft, names, device) if val is not None else None
        seconds = time.perf_counter() - start
        state["elapsed"] += seconds
        state["epoch"] += 1
        line = EpochLine(state["epoch"], total / max(seen, 1), metric, round(seconds, 3), lr)
        state["history"].append(dataclasses.asdict(line))
        score = metric if metric is not None else -line.loss
        if state["best"] is None or score > state["best"]:
            state["best"], state["best_epoch"], state["stale"] = score, state["epoch"], 0
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        elif done >= 0.5:  # early stopping once the learning rate has come down: before, plateaus are normal
            state["stale"] += 1
        _save_checkpoint(torch, work, identity, state["epoch"], {
            "identity": identity, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "state": state, "rng": torch.get_rng_state()})
        if on_epoch is not None:
            on_epoch(line, None if settings.epochs is None else max_epochs)
        if state["stale"] >= settings.patience:
            stop_reason = f"early stop: no improvement for {settings.patience} epochs"
            break
    else:
        stop_reason = f"{max_epochs} epochs done"
    if not stop_reason:
        stop_reason = f"{state['epoch']} epochs done"
    torch.set_num_threads(threads)
    student.load_state_dict(state["best_state"])
    student.eval().to("cpu")
    result = _finish(teacher_spec, student_spec, teacher, student, val, labels, work, target, say)
    record.update(status="done", stopped=stop_reason, epochs=state["epoch"], best_epoch=state["best_epoch"],
                  train_seconds=round(state["elapsed"], 2), history=state["history"], **result)
    _write_record(work, record)
    from onnxsmith.build.cache import replace_dir

    replace_dir(work, output)  # one step: the previous result until here, the new one from here
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save_checkpoint(torch: Any, work: Path, identity: str, epoch: int, payload: Mapping[str, Any]) -> None:
    """``checkpoint.pt`` (tensors and plain values only, so it loads with ``weights_only=True``), then its record."""
    from onnxsmith.build.cache import sha256_file

    _save_atomic(lambda p: torch.save(dict(payload), p), work / CHECKPOINT)
    meta = {"identity": identity, "epoch": epoch, "sha256": sha256_file(work / CHECKPOINT)}
    _save_atomic(lambda p: p.write_text(json.dumps(meta, indent=2)), work / CHECKPOINT_RECORD)


def _load_checkpoint(torch: Any, work: Path, output: Path, identity: str, device: str) -> dict[str, Any] | None:
    """The checkpoint of this run in ``work``, or None when there is none. Its record is checked first (this run's
    identity, the file's sha256); only then is it loaded, as tensors and plain values."""
    from onnxsmith.build.cache import sha256_file

    path = work / CHECKPOINT
    if not path.is_file():
        return None
    what = f"cannot resume the distillation into '{output}'"
    hint = f"pass --restart to start over (the checkpoint is in '{work}'), or another -o"
    meta = _read_json(work / CHECKPOINT_RECORD)
    if meta is None:
        raise UserInputError(what, f"its checkpoint has no readable record ({CHECKPOINT_RECORD}) saying which run "
                             "it belongs to, so it is not loaded", hint)
    if meta.get("identity") != identity:
        raise UserInputError(what, "its checkpoint was made with another teacher, student, data or settings", hint)
    if meta.get("sha256") != sha256_file(path):
        raise UserInputError(what, f"{CHECKPOINT} does not match the sha256 its record holds (it was changed, or "
                             "written by a run killed at that very moment), so it is not loaded", hint)
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's unpickler refusing a global, a damaged file
        raise UserInputError(what, f"its checkpoint does not load as tensors and plain values "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                             hint) from exc
    if not isinstance(saved, dict) or saved.get("identity") != identity:
        raise UserInputError(what, "its checkpoint holds another run", hint)
    return saved


@contextlib.contextmanager
def _claim(work: Path, output: Path) -> Iterator[None]:
    """Hold ``work`` for this run (an exclusive lock on the folder): a second distillation into the same ``-o``
    is refused instead of mixing its epochs into this one's checkpoint."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(f"cannot distill into '{output}'", "another distillation into it is running",
                                 "wait for it, or choose another -o") from None
        yield
    finally:
        os.close(fd)


def _clear(work: Path) -> None:
    """Empty ``work`` (``--restart``): a previous unfinished run's checkpoint and files."""
    import shutil

    for item in work.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _finished(output: Path, identity: str) -> dict[str, Any] | None:
    """The record of a finished run of the same distillation in ``output``, if there is one."""
    try:
        record = json.loads((output / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "done" and record.get("identity") == identity and (output / STUDENT).is_file():
        return record
    return None


def _samples(data: Dataset, name: str) -> Any:
    import numpy as np

    arr = np.asarray(data.arrays[name])
    return np.ascontiguousarray(arr.astype(np.float32) if arr.dtype.kind == "f" else arr)


def _open_data(teacher: LoadedModel, train_spec: str, val_spec: str | None,
               labels: str | None) -> tuple[Dataset, Dataset | None]:
    from onnxsmith.data.sources import open_dataset

    known = teacher.batch_inputs or tuple(s.name for s in teacher.inputs)
    train = open_dataset(train_spec, teacher.inputs, labels=labels, what="training data", known_batch=known)
    if train.one_feed or len(train) < 2:
        raise DataError(f"training data '{train_spec}' holds one sample", "distillation needs many",
                        "give N samples along the first axis")
    val = open_dataset(val_spec, teacher.inputs, labels=labels, what="validation data",
                       known_batch=known) if val_spec else None
    return train, val


def _prepare_output(output: Path, teacher: LoadedModel, train: Dataset, val: Dataset | None, force: bool) -> None:
    from onnxsmith.build.compile import protected_inputs
    from onnxsmith.dirs import check_output_dir

    check_output_dir(output, "distill", protected_inputs(teacher, train, val), force=force)
    output.parent.mkdir(parents=True, exist_ok=True)


def _evaluate(torch: Any, student: Any, val: Dataset, val_soft: Any, names: Sequence[str], device: str) -> float:
    """Validation accuracy with labels, else top-1 agreement with the teacher."""
    import numpy as np

    student.eval()
    with torch.no_grad():
        feed = [torch.from_numpy(_samples(val, n)).to(device) for n in names]
        out = student(*feed)
        out = out[0] if isinstance(out, (tuple, list)) else out
        predicted = out.argmax(dim=1).cpu().numpy()
    want = val.labels.reshape(-1) if val.labels is not None else np.asarray(val_soft).argmax(axis=1)
    return float((predicted == want).mean())


def _finish(teacher_spec: str, student_spec: str, teacher: LoadedModel, student: Any, val: Dataset | None,
            labels: str | None, output: Path, target: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Export the student (with the checks of :mod:`onnxsmith.torchin`), then teacher against student: parameters,
    validation accuracy (both through ONNX Runtime), latency at batch 1 (ONNX Runtime, alternating)."""
    from onnxsmith.model import load_model
    from onnxsmith.torchin.api import export_module
    from onnxsmith.torchin.inputs import InputArg

    inputs = [InputArg(s.name, tuple(int(d) for d in s.shape), s.dtype) for s in teacher.inputs]
    say("exporting the student")
    check_data = val.subset(min(len(val), 64)) if val is not None else None
    export = export_module(student, f"{student_spec} (distilled)", inputs, output / STUDENT, target=target,
                           data=check_data, output_names=[o.name for o in teacher.outputs], progress=say)
    student_model = load_model(output / STUDENT)
    figures: dict[str, Any] = {
        "export": export,
        "parameters": {"teacher": onnx_parameters(teacher), "student": onnx_parameters(student_model)},
    }
    figures["parameters"]["ratio"] = round(figures["parameters"]["student"] / max(figures["parameters"]["teacher"], 1), 4)
    if val is not None:
        say("scoring teacher and student on the validation data")
        figures["validation"] = _accuracy_both(teacher, student_model, val)
    say("timing teacher and student (ONNX Runtime, batch 1)")
    figures["latency_ms"] = _latency_both(teacher, student_model)
    return figures


def _accuracy_both(teacher: LoadedModel, student: LoadedModel, val: Dataset) -> dict[str, Any]:
    from onnxsmith.check.numerics import collect, compare
    from onnxsmith.check.reference import reference_runner

    names_t = [o.name for o in teacher.outputs]
    names_s = [o.name for o in student.outputs]
    with reference_runner(teacher.path) as runner:
        t = collect(runner, val.batches(), names_t)[names_t[0]]
    with reference_runner(student.path) as runner:
        s = collect(runner, val.batches(), names_s)[names_s[0]]
    result = compare({"scores": s}, {"scores": t}, val.labels, ["scores"])
    out = {"samples": result.samples, "agreement": result.top1_agreement}
    if val.labels is not None:
        out.update(teacher_accuracy=result.reference_accuracy, student_accuracy=result.accuracy,
                   accuracy_drop=round((result.reference_accuracy or 0) - (result.accuracy or 0), 6))
    return out


def _latency_both(teacher: LoadedModel, student: LoadedModel, rounds: int = 5, runs: int = 200) -> dict[str, Any]:
    """Median per-inference latency of each, measured in alternating rounds in this process (same load)."""
    import statistics

    from onnxsmith.data.dataset import synthetic
    from onnxsmith.check.reference import reference_runner

    times: dict[str, list[float]] = {"teacher": [], "student": []}
    models = {"teacher": teacher, "student": student}
    feeds = {k: next(synthetic(m, 1).batches()) for k, m in models.items()}
    runners = {k: reference_runner(m.path, threads=1) for k, m in models.items()}
    try:
        for runner_key in runners:
            for _ in range(20):
                runners[runner_key].run(feeds[runner_key])
        for round_ in range(rounds):
            for key in (("teacher", "student") if round_ % 2 == 0 else ("student", "teacher")):
                call = runners[key].bind(feeds[key])
                start = time.perf_counter()
                for _ in range(runs):
                    call()
                times[key].append((time.perf_counter() - start) / runs * 1000)
    finally:
        for runner in runners.values():
            runner.__exit__(None, None, None)
    teacher_ms, student_ms = statistics.median(times["teacher"]), statistics.median(times["student"])
    return {"teacher": round(teacher_ms, 5), "student": round(student_ms, 5),
            "ratio": round(student_ms / teacher_ms, 4), "how": f"ONNX Runtime CPU, 1 thread, batch 1, median of "
            f"{rounds} alternating rounds of {runs} runs", "load_average": _loadavg()}


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return None
