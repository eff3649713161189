"""``onnxsmith debug``: find the layer that broke (``diverge``) and what int8 must keep wide (``precision``)."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, echo, json_option, profile_option, shape_option, target_option


@click.group("debug")
def debug_group() -> None:
    """Find the layer that broke: per-layer divergence, int8 sensitivity."""


@debug_group.command("diverge")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@data_option("--data", "data_file", "Inputs to compare on (default: seeded generated inputs)")
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Samples compared (every layer output of each is held one batch at a time).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for generated inputs.")
@click.option("--min-cosine", type=float, default=None,
              help="A layer output past this cosine to fp32 exceeds the tolerance (default: the precision's "
                   "validation threshold).")
@click.option("--max-rel-error", type=float, default=None,
              help="Also exceeds when its relative L2 error to fp32 is above this.")
@json_option
def diverge_command(bundle_path: str, data_file: str | None, samples: int, seed: int, min_cosine: float | None,
                    max_rel_error: float | None, as_json: bool) -> None:
    """Per-layer error of a bundle against fp32; names the first layer past the tolerance."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json, progress
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.check.layers import diverge, write_divergence

    bundle = Bundle.open(bundle_path)
    data = open_dataset(data_file, bundle.inputs, what="data", limit=samples,
                        known_batch=bundle.batch_inputs) if data_file else None
    with progress("comparing every layer output with fp32", not as_json):
        result = diverge(bundle, data, samples=samples, seed=seed, min_cosine=min_cosine, max_rel_l2=max_rel_error)
        record = write_divergence(bundle, result)
    if as_json:
        print_json(record)
        return
    echo(f"{len(record['layers'])} layer outputs of {record['backend']} ({record['precision_used']}) compared "
         f"with fp32 on {record['samples']} samples")
    echo(f"first layer past the tolerance: {record['first']} ({record['first_tensor']})" if record["first"]
         else "no layer exceeds the tolerance")
    echo(record["growth"])
    echo(f"table: {bundle.path / 'layers.json'}  report: {bundle.path / 'report.md'}")


@debug_group.command("precision")
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@profile_option
@shape_option
@click.option("--precision", type=click.Choice(["int8"]), default="int8", show_default=True,
              help="The reduced precision to debug.")
@data_option("--data", "data_spec", "Validation data (with --labels for task accuracy)", required=True)
@click.option("--labels", default=None, help="Key of the labels in --data (<labels>.npy in a folder).")
@data_option("--calibration", "calibration_spec", "Calibration data, one set for every backend (default: the "
             "first validation samples)")
@click.option("--max-accuracy-drop", default="1%", show_default=True, help="Accuracy budget, e.g. 1% or 0.01.")
@click.option("--backend", "-b", "backends", multiple=True, help="Only these backends (repeatable; default: every "
              "available backend the target lists).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True, help="Output directory.")
@click.option("--force", is_flag=True, help="Write into a non-empty -o that holds no previous result.")
@json_option
def precision_command(model: str, target_spec: str, profile_spec: str, shapes: tuple[str, ...], precision: str,
                      data_spec: str, labels: str | None, calibration_spec: str | None, max_accuracy_drop: str,
                      backends: tuple[str, ...], output: str, force: bool, as_json: bool) -> None:
    """Rank layers by int8 sensitivity, find the smallest keep-list meeting the budget, apply it per backend."""
    from pathlib import Path

    from onnxsmith.cli.optimize import _fraction
    from onnxsmith.console import print_json, progress
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.errors import CheckFailedError
    from onnxsmith.model import load_model
    from onnxsmith.model.shapes import parse_shape_overrides
    from onnxsmith.optimize.precision_debug import REPORT, debug_precision
    from onnxsmith.profiles import load_profile
    from onnxsmith.targets import load_target

    if not data_spec:  # click 8.5 lets a missing required option through as None
        from onnxsmith.errors import UserInputError

        raise UserInputError("debug precision needs --data", "the sensitivity of each layer is measured on it",
                             "give --data val.npz (with --labels for task accuracy)")
    target = load_target(target_spec)
    profile = load_profile(profile_spec)
    loaded = load_model(model, parse_shape_overrides(shapes))
    data = open_dataset(data_spec, loaded.inputs, labels=labels, what="validation data",
                        known_batch=loaded.batch_inputs)
    calibration = open_dataset(calibration_spec, loaded.inputs, what="calibration data",
                               known_batch=loaded.batch_inputs) if calibration_spec else None
    with progress(f"int8 sensitivity of {loaded.name} for {target.id}", not as_json) as update:
        record = debug_precision(loaded, target, profile, data=data, calibration=calibration,
                                 max_drop=_fraction(max_accuracy_drop), output=Path(output),
                                 backends=backends or None, force=force, progress=update)
    sens = record["sensitivity"]
    if as_json:
        print_json(record)
    else:
        echo(f"int8 everywhere: {record['metric']} drop {sens['int8_drop'] * 100:.2f} % "
             f"(budget {sens['budget'] * 100:.2f} %)")
        if sens["keep"]:
            echo(f"keep in fp32: {', '.join(sens['keep_names'])} -> drop {sens['mixed_drop'] * 100:.2f} %")
        for entry in record["backends"]:
            parts = []
            for kind in ("fp32", "int8", "mixed"):
                res = entry.get(f"{kind}_result")
                if res and res.get("latency_p50_ms") is not None:
                    parts.append(f"{kind} {res['latency_p50_ms']:.4f} ms drop {res['drop'] * 100:.2f} %"
                                 if res.get("drop") is not None else f"{kind} {res['latency_p50_ms']:.4f} ms")
                elif res:
                    parts.append(f"{kind} {res['status']}")
            echo(f"{entry['backend']}: " + ("; ".join(parts) or entry.get("why", "")))
        echo(f"report: {Path(output) / REPORT}")
    if not sens["met"]:
        raise CheckFailedError("no keep-list meets the accuracy budget", "even with layers kept in fp32 the drop "
                               "stays above it", "relax --max-accuracy-drop, or check the calibration data")
