"""``onnxsmith validate``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, json_option


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
@json_option
def validate_command(bundle_path: str, data_file: str | None, labels: str | None, samples: int, seed: int,
                     keep_worst: int, min_cosine: float | None, as_json: bool) -> None:
    """Compare a bundle's outputs with ONNX Runtime fp32 on real inputs."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json, progress
    from onnxsmith.datasets import open_dataset
    from onnxsmith.errors import CheckFailedError, UserInputError
    from onnxsmith.report import write_report
    from onnxsmith.validation import validate_bundle

    if labels and not data_file:
        raise UserInputError("--labels needs --data", "labels name an array inside the data file")
    bundle = Bundle.open(bundle_path)
    data = open_dataset(data_file, bundle.inputs, labels=labels, what="validation data",
                        limit=None if labels else samples, known_batch=bundle.batch_inputs) if data_file else None
    with progress("validating", not as_json):
        result = validate_bundle(bundle, data, samples=samples, seed=seed, keep_worst=keep_worst,
                                 min_cosine=min_cosine)
    record = result.to_json()
    bundle.write_json("validation.json", record)
    write_report(bundle)
    if as_json:
        print_json(record)
    else:
        click.echo(f"validated {record['samples']} samples from {record['data']}: "
                   f"{'PASSED' if record['passed'] else 'FAILED'}")
        click.echo(f"cosine min {record['cosine_min']:.6f}, max abs error {record['max_abs_error']:.3g}")
        if record.get("mismatched_samples"):
            click.echo(f"{record['mismatched_samples']} sample(s) differ exactly (string outputs, or a sequence's "
                       "structure)")
        if record["top1_agreement"] is not None:
            click.echo(f"top-1 agreement {record['top1_agreement'] * 100:.2f} %")
        if record["accuracy"] is not None:
            click.echo(f"accuracy {record['accuracy'] * 100:.2f} % (reference {record['reference_accuracy'] * 100:.2f} %)")
        click.echo(f"validation: {bundle.path / 'validation.json'}")
        click.echo(f"report: {bundle.path / 'report.md'}")
    if not result.passed:
        raise CheckFailedError("validation failed", "; ".join(result.failures),
                               "inspect the worst examples in the bundle's examples/ folder")
