"""``onnxsmith compare``."""

from __future__ import annotations

from pathlib import Path

import click

from onnxsmith.cli.common import data_option, echo, json_option, parse_options, profile_option, shape_option

cluster_option = click.option("--cluster", default=None, metavar="auto|HOST:PORT",
                              help="Run on a Ray cluster ('auto': the one cluster of yours on this machine) instead "
                                   "of here, with the fleet's token ($ONNXSMITH_RAY_TOKEN_FILE, else "
                                   "~/.ray/auth_token).")


@click.command("compare")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", "cells", multiple=True, required=True, metavar="TARGET[:BACKEND[:PRECISION]]",
              help="A cell of the matrix (repeatable); backend and precision default to the target's first usable "
                   "backend and the profile's precision.")
@data_option("--data", "data_file", "Validation data (default: seeded generated inputs)")
@click.option("--labels", default=None, help="Key of the label array in --data, for task accuracy.")
@data_option("--calibration", "calibration", "Calibration data for int8 cells (default: --data)")
@cluster_option
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Result directory (default: out/compare-<model>).")
@profile_option
@shape_option
@click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Validation samples per cell (all of --data when it has labels).")
@click.option("--option", "raw_options", multiple=True, metavar="KEY=VALUE", help="Backend option: KEY=VALUE for every cell (each cell's backend must declare it), BACKEND.KEY=VALUE "
              "for that backend's cells only; repeatable.")
@click.option("--force", is_flag=True, help="Replace a non-empty -o that is not a compare result.")
@json_option
def compare_command(model: str, cells: tuple[str, ...], data_file: str | None, labels: str | None,
                    calibration: str | None, cluster: str | None, output: str | None, profile_spec: str,
                    shapes: tuple[str, ...], samples: int, raw_options: tuple[str, ...], force: bool,
                    as_json: bool) -> None:
    """Compile, profile and validate a model for many targets, backends and precisions; one comparable table."""
    from onnxsmith.console import print_json, shown, stderr_console
    from onnxsmith.fleet.compare import compare
    from onnxsmith.fleet.render import print_table

    console = stderr_console()
    total = len(dict.fromkeys(cells))
    seen: dict[str, int] = {}

    def progress(cell: object, message: str) -> None:
        label = cell.spec.label  # type: ignore[attr-defined]
        index = seen.setdefault(label, len(seen) + 1)
        worker = cell.worker or "-"  # type: ignore[attr-defined]
        console.print(f"[bold][{index}/{total}][/bold] {shown(label)} [dim]on {shown(worker)}[/dim]: "
                      f"{shown(message)}", highlight=False)

    out = Path(output) if output else Path("out") / f"compare-{Path(model).stem}"
    record = compare(model, cells, output=out, data=data_file, labels=labels, calibration=calibration,
                     cluster=cluster, profile=profile_spec, shapes=shapes, samples=samples,
                     options=parse_options(raw_options), force=force, progress=None if as_json else progress)
    if as_json:
        print_json(record)
        return
    print_table(record)
    echo(f"record: {out / 'compare.json'}")
    echo(f"page: {out / 'compare.html'}")
