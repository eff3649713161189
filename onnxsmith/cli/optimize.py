"""``onnxsmith optimize``: the measured optimization ladder (see :mod:`onnxsmith.optimize.ladder`)."""

from __future__ import annotations

import click

from onnxsmith.cli.common import (batch_option, data_option, echo, json_option, profile_option, shape_option,
                                  target_option)


def _fraction(value: str) -> float:
    from onnxsmith.errors import UserInputError

    text = value.strip()
    try:
        number = float(text.rstrip("%"))
    except ValueError:
        raise UserInputError(f"invalid accuracy drop '{value}'", "expected a fraction (0.01) or a percentage (1%)") from None
    return number / 100 if text.endswith("%") or number > 1 else number


@click.command("optimize")
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@profile_option
@shape_option
@batch_option
@click.option("--max-accuracy-drop", default=None, help="Largest accepted accuracy drop, e.g. 1% or 0.01 "
              "(default: the profile's).")
@click.option("--latency-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS", help="Reject steps whose p50 exceeds this.")
@data_option("--data", "data_spec", "Validation data")
@click.option("--labels", default=None, help="Key of the labels in --data (<labels>.npy in a folder); an image "
              "folder's class subfolders are its labels.")
@data_option("--calibration", "calibration_spec", "Calibration data (default: the first validation samples)")
@click.option("--backend", "-b", "backends", multiple=True, help="Only try these backends (repeatable; default: every "
              "available backend the target lists).")
@click.option("--prune/--no-prune", default=None, help="Add the pruning steps (default: the profile's setting).")
@click.option("--arrival-rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PER_S",
              help="Request rate for the dynamic-batching simulation (default: derived from the measured throughput).")
@click.option("--serve-check", "serve_check_seconds", type=click.FloatRange(min=0.5, max=600), default=None,
              metavar="SECONDS", is_flag=False, flag_value=10.0,
              help="Then serve the chosen bundle with a real Triton server on 127.0.0.1 for SECONDS (default 10) of "
                   "Poisson load and compare with the simulation (see 'onnxsmith serve-check').")
@click.option("--student", "student_spec", default=None, metavar="MODULE:FACTORY|DIR",
              help="Add a distilled student as a step: package.module:factory (distilled here on --train-data) or "
                   "an 'onnxsmith distill' output folder.")
@data_option("--train-data", "train_spec", "Training data for distilling --student (never the validation data)")
@click.option("--distill-minutes", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Time budget for distilling --student.")
@click.option("--keep-steps", is_flag=True, help="Keep every step's bundle, not only the chosen one.")
@click.option("--cluster", default=None, metavar="auto|HOST:PORT", help="Run the ladder on the Ray fleet worker that "
              "owns the target's device (it holds that device for the whole run); the output comes back into -o.")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--force", is_flag=True, help="Write into a non-empty -o that holds no previous optimize result.")
@json_option
def optimize_command(model: str, target_spec: str, profile_spec: str, shapes: tuple[str, ...], batch: str | None,
                     max_accuracy_drop: str | None, latency_budget: float | None, data_spec: str | None,
                     labels: str | None, calibration_spec: str | None, backends: tuple[str, ...],
                     prune: bool | None, arrival_rate: float | None, serve_check_seconds: float | None,
                     student_spec: str | None, train_spec: str | None, distill_minutes: float, keep_steps: bool,
                     cluster: str | None, output: str, force: bool, as_json: bool) -> None:
    """Walk the optimization ladder and keep the best measured artifact."""
    from pathlib import Path

    from onnxsmith.console import progress

    if cluster:
        if student_spec or train_spec:
            from onnxsmith.errors import UserInputError

            raise UserInputError("--cluster does not take --student or --train-data", "a student's factory is code on "
                                 "this machine", "distill with 'onnxsmith distill' and optimize on the device itself")
        from onnxsmith.fleet.optimize import fleet_optimize

        args = [a for s in shapes for a in ("--shape", s)] + [a for b in backends for a in ("--backend", b)]
        for flag, value in (("--batch", batch), ("--max-accuracy-drop", max_accuracy_drop), ("--labels", labels),
                            ("--latency-budget", latency_budget), ("--arrival-rate", arrival_rate),
                            ("--serve-check", serve_check_seconds)):
            args += [flag, str(value)] if value is not None else []
        args += ([] if prune is None else ["--prune" if prune else "--no-prune"]) + (["--keep-steps"] if keep_steps else [])
        with progress(f"optimizing {Path(model).name} on the fleet", not as_json) as update:
            record, worker = fleet_optimize(cluster, model, target_spec, profile_spec, args, output=output,
                                            data=data_spec, calibration=calibration_spec, force=force, progress=update)
        record["fleet_worker"] = worker
        _finish(record, Path(output), as_json, f"ran on fleet worker {worker}")
        return
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.model.shapes import parse_batch
    from onnxsmith.optimize.ladder import run_ladder
    from onnxsmith.optimize.student import StudentSource
    from onnxsmith.profiles import load_profile
    from onnxsmith.targets import load_target
    from onnxsmith.torchin import open_model

    target = load_target(target_spec)
    profile = load_profile(profile_spec)
    loaded = open_model(model, shapes, target=target, data=data_spec, batch=parse_batch(batch))
    if loaded.shape_ranges:
        from onnxsmith.errors import UserInputError

        name, bounds = next(iter(loaded.shape_ranges.items()))
        raise UserInputError(f"optimize takes fixed shapes, not the range {name}={bounds.bounds_text()}",
                             "it sweeps the profile's batch sizes itself, on one dynamic-batch artifact where the "
                             "backend compiles ranges", "give fixed shapes (--shape NAME=DIMS, --batch N), or compile "
                             "the range with 'onnxsmith compile'")
    known = loaded.batch_inputs
    data = open_dataset(data_spec, loaded.inputs, labels=labels, what="validation data",
                        known_batch=known) if data_spec else None
    calibration = open_dataset(calibration_spec, loaded.inputs, what="calibration data",
                               known_batch=known) if calibration_spec else None
    drop = _fraction(max_accuracy_drop) if max_accuracy_drop is not None else profile.max_accuracy_drop
    with progress(f"optimizing {loaded.name} for {target.id}", not as_json) as update:
        card = run_ladder(loaded, target, profile, data=data, calibration=calibration, max_accuracy_drop=drop,
                          latency_budget_ms=latency_budget, output=Path(output), backends=backends or None,
                          prune=prune, arrival_rate=arrival_rate, keep_steps=keep_steps, progress=update,
                          force=force, student=StudentSource(student_spec, model, shapes, train_spec, data_spec,
                                                             labels, distill_minutes) if student_spec else None)
    record = card.to_json()
    if serve_check_seconds is not None:
        record["serve_check"] = None
    if serve_check_seconds is not None and record.get("bundle"):
        from onnxsmith.bundle import Bundle
        from onnxsmith.serving.check import serve_check

        if (Path(output) / record["bundle"] / "serving" / "serving.json").is_file():
            with progress("serve-check", not as_json) as update:
                record["serve_check"] = serve_check(Bundle.open(Path(output) / record["bundle"]), None,
                                                    serve_check_seconds, progress=update)
    _finish(record, Path(output), as_json)


def _finish(record: dict, output, as_json: bool, where: str | None = None) -> None:
    """Print the card (JSON or the summary table, then the serve-check) and exit 6 when no step was chosen."""
    from onnxsmith.console import print_json
    from onnxsmith.errors import CheckFailedError

    if as_json:
        print_json(record)
    else:
        _print_summary(record, output)
        if record.get("serve_check") is not None:
            from onnxsmith.cli.serving import print_result

            print_result(record["serve_check"])
        if where:
            echo(where)
    if not record.get("chosen"):
        raise CheckFailedError("no step met the constraints", record.get("failure", "see the evidence card"),
                               "relax --max-accuracy-drop or --latency-budget")


def _print_summary(record: dict, output) -> None:
    from rich.table import Table

    from onnxsmith.console import shown, stdout_console
    from onnxsmith.units import fmt_bytes

    metric = record["constraints"].get("metric", "accuracy")
    table = Table(title=f"{shown(record['model'])} on {shown(record['target'])} ({shown(metric)})")
    for column in ("step", "backend", "precision", "batch", "p50 ms", "vs parent (95 % CI)", "p99 ms", "size", metric,
                   "status"):
        table.add_column(column, justify="right" if column in ("batch", "p50 ms", "p99 ms", "size") else "left")

    def interval(ci):
        if not ci:
            return "-"
        return (f"{ci['ratio']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] n={ci['runs_a']}"
                + ("" if ci.get("significant") else " ns"))

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for step in record["steps"]:
        table.add_row(shown(step["name"]), shown(step["backend"]), shown(step["precision"]), str(step.get("batch", 1)),
                      fmt(step.get("latency_p50_ms"), ".3f"), interval(step.get("vs_parent")),
                      fmt(step.get("latency_p99_ms"), ".3f"),
                      fmt_bytes(step.get("size_bytes")), fmt(step.get(metric), ".4f"), shown(step["status"]))
    console = stdout_console()
    if not console.is_terminal:
        console.width = 170  # logs and pipes: no wrapped cells
    console.print(table)
    chosen = record.get("chosen")
    console.print("vs parent: the step's objective figure over its parent's, with the 95 % bootstrap interval and "
                  "runs per side; ns = no significant change (the simpler parent is kept)")
    console.print(f"chosen: {chosen or 'none'}" + (f"  bundle: {record['bundle']}" if record.get("bundle") else ""))
    console.print(f"evidence card: {output / 'card.html'} (also card.md, card.json)")
