"""Options and helpers shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
target_option = click.option("--target", "-t", "target_spec", default="host", show_default=True,
                             help="Target id from 'onnxsmith targets', 'host', or a path to a target .toml.")
profile_option = click.option("--profile", "-p", "profile_spec", default="balanced", show_default=True,
                              help="Optimization preset name or path to a profile .toml.")
backend_option = click.option("--backend", "-b", default=None,
                              help="Override the target's backend preference (a backend id from 'onnxsmith "
                                   "doctor').")
shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS",
                            help="Fix an input's dims, e.g. --shape input=1x3x224x224 (repeatable).")


def parse_options(values: tuple[str, ...]) -> dict[str, str]:
    """``--option KEY=VALUE`` strings as a dict; the core checks them against the backend's declared options."""
    from onnxsmith.options import split_option_args

    return split_option_args(values)


def existing_file(path: str, what: str) -> Path:
    from onnxsmith.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"cannot read {what} '{path}'", "file not found" if not p.exists() else "not a file",
                        "check the path")
    return p


def echo_err(message: str) -> None:
    click.echo(message, err=True)
