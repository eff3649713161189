"""``onnxsmith optimize``: the measured optimization ladder (see :mod:`onnxsmith.optimize.ladder`)."""

from __future__ import annotations

import click

from onnxsmith.cli.common import json_option, profile_option, shape_option, target_option


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
@click.option("--max-accuracy-drop", default=None, help="Largest accepted accuracy drop, e.g. 1% or 0.01 "
              "(default: the profile's).")
@click.option("--latency-budget", type=float, default=None, metavar="MS", help="Reject steps whose p50 exceeds this.")
@click.option("--data", "data_spec", default=None, help="Validation data (.npz, folder of .npy, image folder, or "
              "module:function).")
@click.option("--labels", default=None, help="Key of the labels in --data.")
@click.option("--calibration", "calibration_spec", default=None, help="Calibration data (same forms as --data).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Output directory.")
@json_option
def optimize_command(model: str, target_spec: str, profile_spec: str, shapes: tuple[str, ...],
                     max_accuracy_drop: str | None, latency_budget: float | None, data_spec: str | None,
                     labels: str | None, calibration_spec: str | None, output: str, as_json: bool) -> None:
    """Walk the optimization ladder and keep the best measured artifact."""
    from pathlib import Path

    from onnxsmith.console import print_json, progress
    from onnxsmith.errors import CheckFailedError
    from onnxsmith.model import load_model, parse_shape_overrides
    from onnxsmith.optimize.datasets import open_dataset
    from onnxsmith.optimize.ladder import run_ladder
    from onnxsmith.profiles import load_profile
    from onnxsmith.targets import load_target

    target = load_target(target_spec)
    profile = load_profile(profile_spec)
    loaded = load_model(model, parse_shape_overrides(shapes))
    data = open_dataset(data_spec, loaded.inputs, labels=labels) if data_spec else None
    calibration = open_dataset(calibration_spec, loaded.inputs) if calibration_spec else None
    drop = _fraction(max_accuracy_drop) if max_accuracy_drop is not None else profile.max_accuracy_drop
    with progress(f"optimizing {loaded.name} for {target.id}", not as_json):
        card = run_ladder(loaded, target, profile, data=data, calibration=calibration, max_accuracy_drop=drop,
                          latency_budget_ms=latency_budget, output=Path(output))
    record = card.to_json()
    if as_json:
        print_json(record)
    else:
        chosen = record.get("chosen")
        click.echo(f"chosen: {chosen or 'none'}")
        click.echo(f"evidence card: {Path(output) / 'card.html'} (also card.md, card.json)")
    if not record.get("chosen"):
        raise CheckFailedError("no step met the constraints", record.get("failure", "see the evidence card"),
                               "relax --max-accuracy-drop or --latency-budget")
