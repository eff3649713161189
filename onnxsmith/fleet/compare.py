"""``onnxsmith compare``: build the cell matrix, run it on an executor, rank what was measured, write the record."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxsmith.fleet.cells import CellSpec
from onnxsmith.fleet.plan import CellOutcome, Plan, Progress

RECORD = "compare.json"
__all__ = ["CellOutcome", "Plan", "Progress", "cell_options", "compare", "rank"]


def cell_options(specs: Sequence[CellSpec], options: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each cell's options from ``--option``: ``BACKEND.KEY=VALUE`` applies to the cells of that backend only, a
    plain ``KEY=VALUE`` to every cell. Every option must be declared by each backend it applies to, and a scoped one
    must name a backend some cell uses: anything else is refused here, before any cell runs (exit 2, naming the
    cell). A cell without a backend gets the one its target would choose here."""
    from onnxsmith.build.compile import choose_backend
    from onnxsmith.errors import OnnxsmithError, UserInputError
    from onnxsmith.options import parse_backend_options
    from onnxsmith.registry import backend_names, get_backend
    from onnxsmith.targets import load_target

    if not options:
        return {}
    names = set(backend_names())
    scoped: dict[str, dict[str, str]] = {}
    plain: dict[str, str] = {}
    for key, value in options.items():
        scope, dot, name = key.partition(".")
        if dot and scope in names:
            scoped.setdefault(scope, {})[name] = value
        else:
            plain[key] = value
    out: dict[str, dict[str, str]] = {}
    used: set[str] = set()
    for spec in specs:
        backend = spec.backend
        if backend is None:
            try:
                backend = choose_backend(load_target(spec.target)).name
            except OnnxsmithError as exc:
                raise UserInputError(f"cannot tell which backend cell {spec.label} uses, to apply --option to it",
                                     exc.one_line(), "name the backend in the cell (TARGET:BACKEND) or scope the "
                                     "option (--option BACKEND.KEY=VALUE)") from exc
        used.add(backend)
        mine = {**plain, **scoped.get(backend, {})}
        try:
            parse_backend_options(get_backend(backend), mine)
        except UserInputError as exc:
            raise UserInputError(f"cell {spec.label}: {exc.what}", exc.why,
                                 exc.hint or "scope the option to one backend: --option BACKEND.KEY=VALUE") from exc
        out[spec.label] = mine
    unused = sorted(set(scoped) - used)
    if unused:
        raise UserInputError(f"--option {unused[0]}.{next(iter(scoped[unused[0]]))} names backend {unused[0]}",
                             "no cell uses it", "name it in a cell (TARGET:BACKEND) or drop the option")
    return out


def rank(cells: Sequence[CellOutcome]) -> None:
    """Rank measured cells by p50 latency; emulated cells and cells that failed validation are never ranked."""
    ranked = [c for c in cells if c.status == "measured" and not c.emulated and c.summary()["p50_ms"]]
    for i, cell in enumerate(sorted(ranked, key=lambda c: c.summary()["p50_ms"]), 1):
        cell.rank = i


def compare(model: str | os.PathLike[str], targets: Sequence[str], *, output: str | os.PathLike[str],
            data: str | os.PathLike[str] | None = None, labels: str | None = None,
            calibration: str | os.PathLike[str] | None = None, cluster: str | None = None, profile: str = "quick",
            shapes: Sequence[str] = (), samples: int = 64, options: dict[str, str] | None = None,
            force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Compile, profile and validate ``model`` for every cell of ``targets`` (``TARGET[:BACKEND[:PRECISION]]``)
    and write ``compare.json``, ``compare.md``, ``compare.html`` and one bundle per cell under ``output``;
    returns the record. ``cluster``: None runs on this machine; ``auto`` or ``HOST:PORT`` runs on a Ray cluster."""
    from onnxsmith.build.cache import private_dir, replace_dir
    from onnxsmith.errors import UserInputError
    from onnxsmith.model import load_model
    from onnxsmith.model.shapes import parse_shape_overrides
    from onnxsmith.dirs import check_output_dir
    from onnxsmith.profiles import load_profile
    from onnxsmith.targets import load_target

    if not targets:
        raise UserInputError("compare needs at least one cell", "no -t was given", "for example -t host -t arm/raspberry-pi-5")
    specs = tuple(dict.fromkeys(CellSpec.parse(t) for t in targets))
    for spec in specs:
        load_target(spec.target)  # an unknown target is bad input before anything starts
    load_profile(profile)
    if labels and not data:
        raise UserInputError("--labels needs --data", "labels name an array inside the data file")
    overrides = parse_shape_overrides(tuple(shapes))
    loaded = load_model(model, overrides)
    for path, what in ((data, "validation data"), (calibration, "calibration data")):
        if path is not None:
            from onnxsmith.data.sources import open_dataset

            open_dataset(str(path), loaded.inputs, labels=labels if what == "validation data" else None, what=what,
                         limit=1, known_batch=loaded.batch_inputs)  # bad data is refused before any cell runs
    per_cell = cell_options(specs, dict(options or {}))  # before anything is written or run
    out = check_output_dir(output, "compare", [loaded.source, *loaded.data_files,
                                               *(p for p in (data, calibration) if p)], force=force)
    plan = Plan(model=loaded.source.resolve(), shapes={k: list(v) for k, v in overrides.items()}, cells=specs,
                profile=profile, data=None if data is None else Path(data).resolve(), labels=labels,
                calibration=None if calibration is None else Path(calibration).resolve(), samples=samples,
                options=dict(options or {}), cell_options=per_cell)
    if cluster:
        from onnxsmith.fleet.ray_executor import RayExecutor

        executor: Any = RayExecutor(cluster)
    else:
        from onnxsmith.fleet.local import LocalExecutor

        executor = LocalExecutor()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    with private_dir(out.parent, out.name) as work:
        cells = executor.run(plan, work, progress or (lambda cell, message: None))
        rank(cells)
        from onnxsmith.analysis import count_flops

        record = {
            "model": {"name": loaded.name, "source": str(loaded.source), "fingerprint": loaded.fingerprint,
                      "flops": count_flops(loaded.proto)[0]},
            "profile": profile, "executor": executor.name, "cluster": executor.address,
            "workers": executor.workers(), "driver": f"{platform.node()} {platform.machine()}",
            "started": started, "wall_seconds": round(time.perf_counter() - start, 3),
            "data": None if data is None else str(data), "labels": labels,
            "cells": [c.to_json() for c in cells],
        }
        from onnxsmith.fleet.render import write_record

        write_record(record, work)
        replace_dir(work, out)
    record["output"] = str(out)
    return record
