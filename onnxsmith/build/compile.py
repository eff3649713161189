"""Stage 3, compile: pick a backend for the target, compile through the cache, write the bundle."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxsmith
from onnxsmith.bundle import FORMAT_VERSION, MANIFEST, Bundle, write_json
from onnxsmith.build.cache import CompileCache, cache_key, private_dir, replace_dir, sha256_file
from onnxsmith.errors import DataError, MissingDependencyError, OnnxsmithError, UnsupportedError
from onnxsmith.model.shapes import require_static
from onnxsmith.dirs import check_output_dir
from onnxsmith.options import parse_backend_options
from onnxsmith.plugin import Artifact, CompileRequest, Compiler, Support
from onnxsmith.precisions import choose_precision
from onnxsmith.registry import backend_status, get_backend
from onnxsmith.signing import seal

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel, TensorSpec
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target


def choose_backend(target: Target, backend: str | None = None, model: LoadedModel | None = None) -> Compiler:
    """The explicit ``backend`` (installed), or the first of the target's preferences that is installed and
    supports it (and takes ``model``'s strings, sequences or optionals, when it has any)."""
    if backend:
        chosen = get_backend(backend)
        chosen.check_environment()
        return chosen  # whether it supports the target: checked_request, with every other precondition
    skipped = []
    for name in target.backends:
        status = backend_status(name, probe_devices=False)
        if not status.available:
            skipped.append(f"{name} ({status.reason})")
            continue
        candidate = get_backend(name)
        support = candidate.supports(target)
        lacking = missing_value_types(candidate, model) if model is not None else []
        if support and lacking:
            kind, spec, _ = lacking[0]
            skipped.append(f"{name} (cannot take {kind} '{spec.name}', {spec.type_text()})")
            continue
        if support:
            return candidate
        skipped.append(f"{name} ({support.reason})")
    first = target.backends[0]
    try:
        hint = get_backend(first).install_command()
    except OnnxsmithError:
        hint = ""
    raise MissingDependencyError(" / ".join(target.backends), first,
                                 f"no backend for {target.id} is usable here: {'; '.join(skipped)}", hint=hint)


def _check_precision(backend: Compiler, target: Target, precision: str) -> None:
    if precision not in target.precisions:
        raise UnsupportedError(f"{target.id} does not support {precision}",
                               f"its precisions are {', '.join(target.precisions)}",
                               f"choose --precision {target.precisions[0]}")
    offered = backend.precisions(target)
    if precision not in offered:
        raise UnsupportedError(f"backend '{backend.name}' cannot compile {precision} for {target.id}",
                               f"it offers {', '.join(offered)}", "choose another --precision or --backend")


def missing_value_types(backend: Compiler, model: LoadedModel) -> list[tuple[str, TensorSpec, set[str]]]:
    """(input/output, spec, kinds the backend lacks) for each value that is not a numeric tensor and needs kinds
    (``string``, ``sequence``, ``optional``) outside ``backend.value_types``."""
    lacking = []
    for kind, specs in (("input", model.inputs), ("output", model.outputs)):
        for spec in specs:
            need = set(spec.wrap) | ({"string"} if spec.dtype == "string" else set())
            if need - backend.value_types:
                lacking.append((kind, spec, need - backend.value_types))
    return lacking


def check_value_types(backend: Compiler, model: LoadedModel) -> None:
    """Refuse, before compiling, a model whose inputs or outputs the backend cannot take (strings, sequences,
    optionals), naming the first such value and its type."""
    lacking = missing_value_types(backend, model)
    if lacking:
        kind, spec, missing = lacking[0]
        from onnxsmith.registry import backend_names

        able = [n for n in backend_names() if not missing - _value_types_of(n)]
        raise UnsupportedError(f"backend '{backend.name}' cannot take {kind} '{spec.name}' ({spec.type_text()})",
                               f"it compiles numeric tensors" + (f" and {', '.join(sorted(backend.value_types))}"
                               if backend.value_types else " only") + (f"; {len(lacking) - 1} other input(s)/"
                               "output(s) too" if len(lacking) > 1 else ""),
                               f"use --backend {able[0]}" if able else "no installed backend takes it")


def _value_types_of(name: str) -> frozenset[str]:
    try:
        return get_backend(name).value_types
    except OnnxsmithError:
        return frozenset()


def protected_inputs(*items: LoadedModel | Dataset | None) -> list[Path]:
    """The files an output directory must never contain: models with their external data, data files."""
    paths: list[Path] = []
    for item in items:
        if item is None:
            continue
        paths += [item.source, *item.data_files] if hasattr(item, "proto") else list(item.files)  # type: ignore[union-attr]
    return paths


def checked_request(backend: Compiler, request: CompileRequest) -> CompileRequest:
    """Everything the core checks before it calls ``backend.compile`` (the plugin contract lists it): static
    inputs (or shape ranges the backend's ``dynamic_shapes`` accepts), the backend supports the target, the
    precision is the target's and the backend's, calibration data where
    the backend needs it, no unsupported op; returns the request with its options parsed against the backend's
    declaration."""
    model, target, precision = request.model, request.target, request.precision
    require_static(model)
    support = backend.supports(target)
    if not support:
        raise UnsupportedError(f"backend '{backend.name}' cannot compile for {target.id}", support.reason,
                               support.hint or f"the target's backends are: {', '.join(target.backends)}")
    if model.shape_ranges:
        dynamic = backend.dynamic_shapes(model, target)
        if not dynamic:
            name, bounds = next(iter(model.shape_ranges.items()))
            raise UnsupportedError(f"backend '{backend.name}' cannot compile the shape range {name}="
                                   f"{bounds.bounds_text()} for {target.id}", dynamic.reason, dynamic.hint)
    _check_precision(backend, target, precision)
    check_value_types(backend, model)
    options = parse_backend_options(backend, request.options)
    if backend.needs_calibration(precision, model) and request.calibration is None:
        raise DataError(f"{precision} needs calibration data", "post-training quantization measures activation "
                        "ranges on real inputs", "pass --calibration calib.npz (one array per model input)")
    unsupported = backend.unsupported_ops(model, target)
    if unsupported:
        first = next(iter(unsupported.items()))
        raise UnsupportedError(f"backend '{backend.name}' cannot convert op {first[0]}",
                               f"node(s) {', '.join(first[1][:3])}" + (f" and {len(unsupported) - 1} other op "
                               "type(s)" if len(unsupported) > 1 else ""),
                               "run 'onnxsmith inspect' for the full list; try another --backend")
    return dataclasses.replace(request, options=options)


def compile_key(model: LoadedModel, target: Target, backend: Compiler, precision: str, profile: Profile,
                calibration: Dataset | None, options: Mapping[str, Any]) -> str:
    ranges = {"shape_ranges": {k: v.to_json() for k, v in sorted(model.shape_ranges.items())}} \
        if model.shape_ranges else {}
    return cache_key({
        "model": model.fingerprint,
        "shapes": [s.to_json() for s in model.inputs],
        **ranges,
        "target": target.fingerprint(),
        "backend": backend.name,
        "backend_version": backend.version(),
        "precision": precision,
        "runtime": [profile.performance_hint, profile.streams, profile.threads],
        "calibration": calibration.fingerprint() if calibration is not None else None,
        "options": dict(sorted(options.items())),
        "backend_state": backend.cache_token(target, options),
        "onnxsmith": onnxsmith.__version__,
    })


def compile_model(model: LoadedModel, target: Target, *, profile: Profile, output: str | os.PathLike[str],
                  backend: str | None = None, precision: str | None = None, calibration: Dataset | None = None,
                  options: Mapping[str, Any] | None = None, use_cache: bool = True,
                  notes: tuple[str, ...] = (), reference: LoadedModel | None = None,
                  progress: Callable[[str], None] | None = None, force: bool = False) -> Bundle:
    """Compile ``model`` for ``target`` and write a bundle at ``output`` (replacing it atomically).

    ``output`` may be new, empty or a previous bundle; anything else is refused unless ``force`` (see
    :func:`onnxsmith.dirs.check_output_dir`), and a directory holding the model, its data, the calibration data
    or the cache is always refused.

    ``reference``: the model validation compares against (default ``model``). When ``model`` was transformed by an
    ONNX pass (fp16, int8 QDQ, pruning), pass the original so the bundle keeps the fp32 model as its reference.
    """
    output = check_output_dir(output, "bundle", protected_inputs(model, reference, calibration), force=force)
    from onnxsmith.build.isolate import start_worker

    # the compiling child starts now and imports the likely backend's library while the checks below run
    worker = start_worker(backend or (target.backends[0] if target.backends else None))
    try:
        chosen = choose_backend(target, backend, model)
        precision, why = choose_precision(chosen, target, profile, precision)
        notes = (*notes, *([why] if why else []))
        request = checked_request(chosen, CompileRequest(
            model=model, target=target, precision=precision, profile=profile,
            calibration=calibration, options=dict(options or {}), progress=progress))
        precision, options = request.precision, request.options
        key = compile_key(model, target, chosen, precision, profile, calibration, options)

        def build(workdir: Path) -> Artifact:
            from onnxsmith.build.isolate import compile_isolated

            start = time.perf_counter()
            artifact = compile_isolated(chosen, request, workdir, worker)
            seconds = round(time.perf_counter() - start, 3)
            return dataclasses.replace(artifact, metadata={**artifact.metadata, "compile_seconds": seconds})

        if use_cache:
            artifact, entry, hit = CompileCache().get_or_build(key, build)
            bundle = _write_bundle(model, target, chosen, artifact, entry, output, key, hit, profile, calibration,
                                   notes, reference)
        else:
            with private_dir(Path(output).resolve().parent, "build") as workdir:
                artifact = build(workdir)
                bundle = _write_bundle(model, target, chosen, artifact, workdir, output, key, False, profile,
                                       calibration, notes, reference)
        return bundle
    finally:
        if worker is not None:
            worker.close()


def _copy_tree_files(src: Path, names: list[str], dest: Path) -> None:
    """Copy (never hard-link) the cache entry's files: a bundle is the user's to edit, move or damage, and a
    link would carry an edit into the cache entry and every sibling bundle compiled from it."""
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, target)


def _write_bundle(model: LoadedModel, target: Target, backend: Compiler, artifact: Artifact, source: Path,
                  output: str | os.PathLike[str], key: str, hit: bool, profile: Profile,
                  calibration: Dataset | None, notes: tuple[str, ...],
                  reference: LoadedModel | None = None) -> Bundle:
    output = Path(output).resolve()
    reference = reference or model
    artifact_files = sorted(str(p.relative_to(source)) for p in source.rglob("*")
                            if p.is_file() and p.name != "entry.json")
    runs: Support = backend.runs_here(target)
    with private_dir(output.parent, output.name) as tmp:
        _copy_tree_files(source, artifact_files, tmp / "artifact")
        ref_dir = tmp / "reference"
        ref_dir.mkdir()
        src_model = reference.path
        shutil.copyfile(src_model, ref_dir / "model.onnx")
        if (src_model.parent / (src_model.name + ".data")).exists():
            shutil.copyfile(src_model.parent / (src_model.name + ".data"), ref_dir / "model.onnx.data")
        from onnxsmith.deploy import write_deploy
        from onnxsmith.plugin import backend_call

        with backend_call(backend.name, "write its deployment programs"):
            deploy = write_deploy(tmp, backend, artifact, target, model.inputs, model.outputs, model.name,
                                  example_inputs=model.inputs_at("opt") if model.shape_ranges else None)
        # every file compile writes, deploy/ included: `onnxsmith verify` accounts for each
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "onnxsmith_version": onnxsmith.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "name": model.name,
                "source": str(model.source),
                "fingerprint": model.fingerprint,
                "opset": model.opset,
                "signature": model.signature(),
                "shape_overrides": {k: list(v) for k, v in model.shape_overrides.items()},
                "batch_inputs": None if model.batch_inputs is None else list(model.batch_inputs),
                "notes": list(model.notes),
                "export": model.export if model.export is not None else reference.export,
            },
            "shape_ranges": {k: v.to_json() for k, v in model.shape_ranges.items()},
            "target": target.to_json(),
            "backend": backend.name,
            "backend_version": artifact.backend_version,
            "artifact_kind": backend.artifact_kind,
            "artifact": artifact.to_json(),
            "precision": artifact.precision,
            "precision_used": artifact.precision_used,
            "profile": profile.name,
            "calibration": None if calibration is None else {
                "source": calibration.source, "samples": len(calibration), "fingerprint": calibration.fingerprint()},
            "runs_here": {"ok": runs.ok, "reason": runs.reason, "hint": runs.hint},
            "cache": {"key": key, "hit": hit},
            "compile_seconds": artifact.metadata.get("compile_seconds"),
            "reference": "reference/model.onnx",
            "reference_fingerprint": reference.fingerprint,
            "deploy": [{"language": d["language"], "folder": f"deploy/{d['folder']}"} for d in deploy],
            "notes": [*model.notes, *artifact.notes, *notes],
            "files": files,
        }
        write_json(tmp / MANIFEST, manifest)
        seal(tmp, (tmp / MANIFEST).read_bytes())
        replace_dir(tmp, output)
    bundle = Bundle.open(output, verify=False)
    from onnxsmith.report import write_report

    write_report(bundle)
    return bundle
