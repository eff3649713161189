"""Which backend compiles for the host when the user names none: measured on this machine, not taken from a vendor
name. The same model runs 1.9x faster on ONNX Runtime than on OpenVINO on one CPU and the other way round on
another, so the host target's list of backends is only the order in which to try them.

When ``compile --target host`` has no ``--backend`` and two or more of the host's backends can compile the model at
the precision here, each compiles it (through the compile cache, so the winner's final compile is a cache hit) and
the artifacts are timed in interleaved runs on generated inputs (:func:`onnxsmith.profiling.worker.interleave`);
the fastest p50 wins, unless its lead over the first listed backend is within noise (the ratio's 95 % interval
includes 1), when the listed order stands. The outcome is cached per model fingerprint, precision, profile, CPU
(model and ISA flags) and backend versions in ``<cache>/host-picks.json``, and said in one line; ``--backend``
overrides it. ``ONNXSMITH_HOST_PICK=listed`` turns the measurement off (the listed order, as for other targets).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxsmith
from onnxsmith.build.cache import cache_key, cache_root
from onnxsmith.bundle import write_json
from onnxsmith.errors import OnnxsmithError
from onnxsmith.registry import backend_status, get_backend

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target

PICKS_FILE = "host-picks.json"
ROUNDS, ROUND_SECONDS = 3, 0.3


def candidates(model: LoadedModel, target: Target, precision: str) -> list[str]:
    """The target's backends, in its order, that are installed, support it, run here and offer ``precision``."""
    from onnxsmith.build.compile import missing_value_types
    from onnxsmith.optimize.ladder_steps import usable_backends

    out = []
    for name in usable_backends(target, None, []):  # installed, supporting the target, running here
        backend = get_backend(name)
        if not missing_value_types(backend, model) and precision in backend.precisions(target):
            out.append(name)
    return out


def _key(model: LoadedModel, target: Target, precision: str, profile: Profile, names: list[str]) -> str:
    from onnxsmith.profiling.environment import environment
    from onnxsmith.targets.host import cpu_flags

    versions = {n: backend_status(n, probe_devices=False).version for n in names}
    return cache_key({"model": model.fingerprint, "target": target.id, "precision": precision,
                      "profile": profile.name, "cpu": environment()["cpu_model"], "flags": sorted(cpu_flags()),
                      "backends": versions, "onnxsmith": onnxsmith.__version__})


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def host_default(model: LoadedModel, target: Target, profile: Profile, precision: str,
                 calibration: Dataset | None = None, options: Mapping[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[str, str] | None:
    """The measured pick (:func:`pick_host_backend`) where it applies: the detected host, no backend options
    (they are backend-specific), and ``ONNXSMITH_HOST_PICK`` not ``listed``. ``compile`` and ``compare`` both ask
    here for a host cell without a backend."""
    if target.id != "host" or options or os.environ.get("ONNXSMITH_HOST_PICK") == "listed":
        return None
    return pick_host_backend(model, target, profile, precision, calibration, progress)


def pick_host_backend(model: LoadedModel, target: Target, profile: Profile, precision: str,
                      calibration: Dataset | None = None, progress: Callable[[str], None] | None = None
                      ) -> tuple[str, str] | None:
    """(backend, one line saying why) for ``model`` on the host, or None when there is nothing to choose between
    (fewer than two candidates) or none of them could be measured."""
    names = candidates(model, target, precision)
    if len(names) < 2:
        return None
    path = cache_root() / PICKS_FILE
    key = _key(model, target, precision, profile, names)
    cached = _load(path).get(key)
    if isinstance(cached, dict) and cached.get("backend") in names:
        return cached["backend"], f"{cached['why']} (measured earlier on this machine; --backend overrides)"
    picked = _measure(model, target, profile, precision, calibration, names, progress)
    if picked is None:
        return None
    backend, why = picked
    picks = _load(path)
    picks[key] = {"backend": backend, "why": why, "model": model.name, "precision": precision}
    write_json(path, picks)
    return backend, f"{why} (--backend overrides)"


def _measure(model: LoadedModel, target: Target, profile: Profile, precision: str, calibration: Dataset | None,
             names: list[str], progress: Callable[[str], None] | None) -> tuple[str, str] | None:
    from onnxsmith.build.compile import compile_model
    from onnxsmith.data.dataset import feed_batch, save_npz
    from onnxsmith.profiling.environment import environment
    from onnxsmith.profiling.run import profile_feeds
    from onnxsmith.profiling.stats import compare_runs
    from onnxsmith.profiling.worker import MeasureWorker, interleave

    say = progress or (lambda message: None)
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="onnxsmith-pick-") as tmp:
        workers: dict[str, MeasureWorker] = {}
        try:
            for name in names:
                say(f"choosing the host backend: compiling with {name}")
                try:
                    bundle = compile_model(model, target, profile=profile, output=Path(tmp) / name, backend=name,
                                           precision=precision, calibration=calibration)
                    feeds, _ = profile_feeds(bundle)
                    feeds_path = Path(tmp) / f"{name}-feeds" / "feeds.npz"
                    save_npz(feeds_path, feeds)
                    workers[name] = MeasureWorker("artifact", bundle, feeds_path,
                                                  feed_batch(bundle.inputs, bundle.batch_inputs), label=name)
                except OnnxsmithError as exc:
                    skipped.append(f"{name} failed: {exc.what}")
            if len(workers) < 2:
                return None
            say(f"choosing the host backend: timing {', '.join(workers)}")
            runs = interleave(workers, ROUNDS, ROUND_SECONDS)
        finally:
            for worker in workers.values():
                worker.close()
    medians = {n: sorted(r)[len(r) // 2] for n, r in runs.items()}
    fastest = min(medians, key=medians.__getitem__)
    listed = next(n for n in names if n in medians)
    figures = ", ".join(f"{n} {medians[n]:.3f} ms" for n in sorted(medians, key=medians.__getitem__))
    where = f"on this machine ({environment()['cpu_model']})"
    extra = f"; {'; '.join(skipped)}" if skipped else ""
    if fastest != listed:
        ci = compare_runs(runs[fastest], runs[listed], paired=True)
        if not ci.significant:
            return listed, (f"backend {listed}: the host's first listed; {fastest} was not significantly faster "
                            f"{where}: p50 {figures}, ratio {ci.text('x')}{extra}")
        return fastest, f"backend {fastest}: the fastest {where}: p50 {figures}; ratio to {listed} {ci.text('x')}{extra}"
    return listed, f"backend {listed}: the fastest {where}: p50 {figures} in {ROUNDS} interleaved runs{extra}"
