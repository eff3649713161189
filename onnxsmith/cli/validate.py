"""``onnxsmith validate``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, echo, json_option


@click.command("validate")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@data_option("--data", "data_file", "Validation data (default: seeded generated inputs)")
@click.option("--labels", default=None, help="Key of the label array in --data (<labels>.npy in a folder), for task "
              "accuracy; an image folder's class subfolders are its labels.")
@click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples to check (all of --data when it has labels); only those are read.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for generated inputs.")
@click.option("--keep-worst", type=click.IntRange(min=0), default=5, show_default=True, help="Worst examples kept in the bundle.")
@click.option("--min-cosine", type=float, default=None, help="Required cosine similarity (default by precision).")
@click.option("--layers", "layers", is_flag=True, help="Also compare every layer output with fp32 (as 'onnxsmith "
              "debug diverge': layers.json, a plot and a report section).")
@click.option("--cluster", default=None, metavar="auto|HOST:PORT", help="Validate on the Ray fleet worker that owns "
              "the bundle's device (see 'onnxsmith worker').")
@json_option
def validate_command(bundle_path: str, data_file: str | None, labels: str | None, samples: int, seed: int,
                     keep_worst: int, min_cosine: float | None, layers: bool, cluster: str | None,
                     as_json: bool) -> None:
    """Compare a bundle's outputs with ONNX Runtime fp32 on real inputs."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json, progress
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.errors import CheckFailedError, UserInputError
    from onnxsmith.report import save_record
    from onnxsmith.check.validation import validate_bundle

    if labels and not data_file:
        raise UserInputError("--labels needs --data", "labels name an array inside the data file")
    bundle = Bundle.open(bundle_path)
    data = open_dataset(data_file, bundle.inputs, labels=labels, what="validation data",
                        limit=None if labels else samples, known_batch=bundle.batch_inputs) if data_file else None
    if cluster:
        if layers:
            raise UserInputError("--cluster does not take --layers", "per-layer comparison runs where the bundle is", "run 'onnxsmith debug diverge' on the worker's machine")
        from onnxsmith.fleet.ray_executor import fleet_measure

        if seed or keep_worst != 5 or min_cosine is not None:
            raise UserInputError("--cluster takes --data, --labels and --samples only", "the other settings are the "
                                 "defaults the fleet worker uses", "drop --seed, --keep-worst and --min-cosine")
        with progress("validating on the fleet", not as_json):
            fleet_measure(cluster, bundle_path, ("validate",), profile="quick", data=data_file, labels=labels,
                          samples=samples)
        record = Bundle.open(bundle_path).read_json("validation.json")
        result = None
    else:
        with progress("validating", not as_json):
            result = validate_bundle(bundle, data, samples=samples, seed=seed, keep_worst=keep_worst,
                                     min_cosine=min_cosine)
        record = result.to_json()
        save_record(bundle, "validation.json", record)
        if layers:
            from onnxsmith.check.layers import diverge, write_divergence

            with progress("comparing every layer output with fp32", not as_json):
                divergence = write_divergence(bundle, diverge(bundle, data, samples=min(samples, 16), seed=seed))
            record["layers"] = divergence
    if as_json:
        print_json(record)
    else:
        echo(f"validated {record['samples']} samples from {record['data']}: "
             f"{'PASSED' if record['passed'] else 'FAILED'}")
        if record["evaluated_by"]:
            emulated = record["evaluated_by"]
            echo(f"checked: {emulated['label']}")
            echo(f"  what this checks: {'; '.join(emulated['checked'])}")
            echo(f"  what it does not: {'; '.join(emulated['not_checked'])}")
        echo(f"cosine min {record['cosine_min']:.6f}, max abs error {record['max_abs_error']:.3g}")
        if record.get("mismatched_samples"):
            echo(f"{record['mismatched_samples']} sample(s) differ exactly (string outputs, or a sequence's "
                 "structure)")
        if record["top1_agreement"] is not None:
            echo(f"top-1 agreement {record['top1_agreement'] * 100:.2f} %")
        for point in record.get("shapes", []):
            shape = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in point["shape"].items())
            if "skipped" in point:
                echo(f"  at {point['point']} ({shape}): skipped, {point['skipped']}")
            else:
                echo(f"  at {point['point']} ({shape}): {point['samples']} samples, cosine min "
                     f"{point['cosine_min']:.6f}, {'passed' if point['passed'] else 'FAILED'}")
        if record["accuracy"] is not None:
            echo(f"accuracy {record['accuracy'] * 100:.2f} % (reference {record['reference_accuracy'] * 100:.2f} %)")
        if layers:
            echo("first layer past the tolerance: " + (f"{record['layers']['first']} "
                 f"({record['layers']['first_tensor']})" if record["layers"]["first"] else "none"))
        echo(f"validation: {bundle.path / 'validation.json'}")
        echo(f"report: {bundle.path / 'report.md'}")
    if not record["passed"]:
        raise CheckFailedError("validation failed", "; ".join(record["failures"]),
                               "inspect the worst examples in the bundle's examples/ folder")
