"""``onnxsmith debug``: find the layer that broke (``diverge``) and what int8 must keep wide (``precision``)."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, json_option, profile_option, shape_option, target_option


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
    from onnxsmith.datasets import open_dataset
    from onnxsmith.layers import diverge, write_divergence

    bundle = Bundle.open(bundle_path)
    data = open_dataset(data_file, bundle.inputs, what="data", limit=samples,
                        known_batch=bundle.batch_inputs) if data_file else None
    with progress("comparing every layer output with fp32", not as_json):
        result = diverge(bundle, data, samples=samples, seed=seed, min_cosine=min_cosine, max_rel_l2=max_rel_error)
        record = write_divergence(bundle, result)
    if as_json:
        print_json(record)
        return
    click.echo(f"{len(record['layers'])} layer outputs of {record['backend']} ({record['precision_used']}) compared "
               f"with fp32 on {record['samples']} samples")
    click.echo(f"first layer past the tolerance: {record['first']} ({record['first_tensor']})" if record["first"]
               else "no layer exceeds the tolerance")
    click.echo(record["growth"])
    click.echo(f"table: {bundle.path / 'layers.json'}  report: {bundle.path / 'report.md'}")
