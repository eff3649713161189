"""``onnxsmith compile``."""

from __future__ import annotations

from pathlib import Path

import click

from onnxsmith.cli.common import (backend_option, batch_option, data_option, echo, echo_err, json_option, parse_options,
                                  profile_option, shape_option, target_option)
from onnxsmith.precisions import PRECISIONS


def default_output(model: str, target: str, precision: str) -> Path:
    return Path("out") / f"{Path(model).stem}-{Path(target).stem if target.endswith('.toml') else target.replace('/', '-')}-{precision}"


class _CompileCommand(click.Command):
    """``compile --help`` ends with every installed backend's declared options (read when help is shown)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from onnxsmith.cli.targets import backend_options
        from onnxsmith.registry import backend_names

        with formatter.section("Backend options (--option KEY=VALUE)"):
            for name, options in backend_options(backend_names()).items():
                if options:
                    formatter.write_dl([(name, "; ".join(o.describe() for o in options))])


@click.command("compile", cls=_CompileCommand)
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@backend_option
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Arithmetic precision (default: the profile's).")
@data_option("--calibration", "calibration", "Calibration data, needed for int8")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Bundle directory (default: out/<model>-<target>-<precision>).")
@profile_option
@shape_option
@batch_option
@click.option("--option", "raw_options", multiple=True, metavar="KEY=VALUE",
              help="Backend option, checked against the backend's declaration (listed below; repeatable).")
@click.option("--tune", is_flag=True, help="Shorthand for --option tune=1 (backends that declare 'tune', e.g. TVM's "
              "MetaSchedule).")
@click.option("--tune-trials", type=click.IntRange(min=0), default=None, help="Shorthand for --option tune_trials=N (implies --tune).")
@click.option("--tune-minutes", type=click.FloatRange(min=0, min_open=True), default=None, help="Shorthand for --option tune_minutes=M (implies --tune).")
@click.option("--tune-more", is_flag=True, help="Shorthand for --option tune_more=1 (implies --tune).")
@click.option("--validate", "validate_after", is_flag=True, help="Validate the bundle against ONNX Runtime fp32 "
              "right after compiling (on --calibration data when given, else on generated inputs).")
@click.option("--no-cache", is_flag=True, help="Compile even when the cache has this artifact.")
@click.option("--cluster", default=None, metavar="auto|HOST:PORT", help="Compile on a Ray fleet worker that has the "
              "backend (or the device, when the artifact must be built there); see 'onnxsmith worker'.")
@click.option("--force", is_flag=True, help="Replace a non-empty -o that is not an onnxsmith bundle (never one "
              "holding the model, data or cache).")
@json_option
def compile_command(model: str, target_spec: str, backend: str | None, precision: str | None,
                    calibration: str | None, output: str | None, profile_spec: str, shapes: tuple[str, ...], batch: str | None,
                    raw_options: tuple[str, ...], tune: bool, tune_trials: int | None, tune_minutes: float | None,
                    tune_more: bool, validate_after: bool, no_cache: bool,
                    cluster: str | None, force: bool, as_json: bool) -> None:
    """Compile an ONNX model for a target into a bundle.

    MODEL is an ONNX file, or a PyTorch model (package.module:factory, a torch.export .pt2, a TorchScript file)
    exported to ONNX and checked against eager PyTorch first; give its inputs with --shape NAME=DIMS[:dtype]."""
    from onnxsmith.console import print_json, progress
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.model.shapes import parse_batch
    from onnxsmith.profiles import load_profile
    from onnxsmith.targets import load_target
    from onnxsmith.torchin import open_model
    from onnxsmith.torchin.api import describe

    options = parse_options(raw_options)
    if tune or tune_trials or tune_minutes or tune_more:
        options["tune"] = "1"
        if tune_more:
            options["tune_more"] = "1"
        if tune_trials:
            options["tune_trials"] = str(tune_trials)
        if tune_minutes:
            options["tune_minutes"] = str(tune_minutes)
    target = load_target(target_spec)
    profile = load_profile(profile_spec)
    with progress(f"loading {model}", not as_json) as update:
        loaded = open_model(model, shapes, target=target, data=calibration, progress=update,
                            batch=parse_batch(batch))
    if loaded.export is not None and not as_json:
        echo_err(describe(loaded.export))
    precision = precision or profile.precision
    calib = open_dataset(calibration, loaded.inputs_at("opt"), what="calibration data",
                         known_batch=loaded.batch_inputs) if calibration else None
    out = Path(output) if output else default_output(str(loaded.source), target_spec, precision)
    if cluster:
        from onnxsmith.bundle import Bundle
        from onnxsmith.fleet.ray_executor import fleet_compile

        with progress(f"compiling {loaded.name} for {target.id} on the fleet", not as_json):
            cell = fleet_compile(cluster, model, target_spec, str(out), backend=backend, precision=precision,
                                 profile=profile_spec, shapes={k: list(v) for k, v in loaded.shape_overrides.items()},
                                 calibration=calibration, options=options, force=force)
        bundle = Bundle.open(out)
        if not as_json:
            echo(f"compiled on fleet worker {cell.worker}")
    else:
        from onnxsmith.build.compile import compile_model

        notes: tuple[str, ...] = ()
        if backend is None:
            from onnxsmith.build.pick import host_default

            with progress("choosing the host backend", not as_json) as update:
                picked = host_default(loaded, target, profile, precision, calib, options, update)
            if picked:
                backend, why = picked
                notes = (why,)
        with progress(f"compiling {loaded.name} for {target.id} ({precision})", not as_json) as update:
            bundle = compile_model(loaded, target, profile=profile, output=out, backend=backend, precision=precision,
                                   calibration=calib, options=options, use_cache=not no_cache, progress=update,
                                   force=force, notes=notes)
    m = bundle.manifest
    if as_json:
        validation = _validate(bundle, calib, as_json) if validate_after else None
        print_json({"validation": validation, "bundle": str(bundle.path), **{k: m[k] for k in ("backend", "backend_version", "precision",
                    "precision_used", "compile_seconds", "cache", "runs_here", "notes", "shape_ranges")}, "target": m["target"]["id"],
                    "export": m["model"].get("export"),
                    "artifact": m["artifact"]})
        return
    hit = " (from cache)" if m["cache"]["hit"] else ""
    echo(f"compiled {m['model']['name']} for {m['target']['id']} with {m['backend']} {m['backend_version']}: "
         f"precision {m['precision_used']}, {m['compile_seconds'] or 0:.2f} s{hit}")
    for note in m["notes"]:
        echo_err(f"note: {note}")
    if not m["runs_here"]["ok"]:
        echo_err(f"note: this bundle cannot run on this machine: {m['runs_here']['reason']}. "
                 f"{m['runs_here']['hint']}")
    for name, bounds in m.get("shape_ranges", {}).items():
        echo(f"input {name}: dynamic, min {'x'.join(map(str, bounds['min']))}, opt "
             f"{'x'.join(map(str, bounds['opt']))}, max {'x'.join(map(str, bounds['max']))} (one artifact)")
    echo(f"bundle: {bundle.path}")
    echo(f"report: {bundle.path / 'report.md'}")
    if validate_after:
        _validate(bundle, calib, as_json)


def _validate(bundle, data, as_json: bool) -> dict | None:
    """``--validate``: the bundle checked as ``onnxsmith validate`` checks it; exit 6 when it fails."""
    from onnxsmith.console import progress
    from onnxsmith.errors import CheckFailedError
    from onnxsmith.report import save_record
    from onnxsmith.check.validation import validate_bundle

    if not bundle.manifest["runs_here"]["ok"]:
        echo_err("note: not validated: the bundle cannot run on this machine")
        return None
    with progress("validating", not as_json):
        result = validate_bundle(bundle, data)
    record = result.to_json()
    save_record(bundle, "validation.json", record)
    if not as_json:
        echo(f"validated {record['samples']} samples from {record['data']}: "
             f"{'PASSED' if record['passed'] else 'FAILED'} (cosine min {record['cosine_min']:.6f})")
    if not result.passed:
        raise CheckFailedError("validation failed", "; ".join(result.failures),
                               "inspect the worst examples in the bundle's examples/ folder")
    return record
