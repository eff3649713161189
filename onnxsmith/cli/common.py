"""Options and helpers shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from onnxsmith.console import printable
from onnxsmith.data.sources import FORMS

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
target_option = click.option("--target", "-t", "target_spec", default="host", show_default=True,
                             help="Target id from 'onnxsmith targets', 'host', or a path to a target .toml.")
profile_option = click.option("--profile", "-p", "profile_spec", default="balanced", show_default=True,
                              help="Optimization preset name or path to a profile .toml.")
backend_option = click.option("--backend", "-b", default=None,
                              help="Override the target's backend preference (a backend id from 'onnxsmith "
                                   "doctor').")
shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS|NAME=MIN:OPT:MAX",
                            help="Fix an input's dims, e.g. --shape input=1x3x224x224, or keep them dynamic within "
                                 "bounds, tuned for OPT: --shape input=1x3x224x224:8x3x224x224:32x3x224x224 "
                                 "(repeatable); for a PyTorch MODEL add the dtype: input_ids=1x128:int64 "
                                 "(default float32).")
batch_option = click.option("--batch", "batch", default=None, metavar="N|MIN..MAX[@OPT]",
                            help="The first dim of every input whose first dim is dynamic: fixed (--batch 8) or a "
                                 "range (--batch 1..32@8, OPT defaults to MAX). --shape wins for the inputs it names.")
MODEL_FORMS = ("MODEL is an ONNX file, or a PyTorch model: package.module:factory (a function returning an "
               "nn.Module), a torch.export .pt2 or a TorchScript file, exported to ONNX and checked against eager "
               "PyTorch first (needs onnxsmith[torch]).")


def data_option(flag: str, dest: str, role: str, required: bool = False) -> Callable[[Any], Any]:
    """A data option: every verb takes the same forms, read by :func:`onnxsmith.data.sources.open_dataset`."""
    return click.option(flag, dest, default=None, required=required, metavar="DATA",
                        help=f"{role}: {FORMS}. At most $ONNXSMITH_MAX_DATA_BYTES (default 4GiB) is loaded.")


def parse_options(values: tuple[str, ...]) -> dict[str, str]:
    """``--option KEY=VALUE`` strings as a dict; the core checks them against the backend's declared options."""
    from onnxsmith.options import split_option_args

    return split_option_args(values)


def echo(message: object = "", err: bool = False) -> None:
    """One message on stdout (stderr with ``err``); names in it reach the terminal as text
    (:func:`onnxsmith.console.printable`)."""
    click.echo(printable(message), err=err)


def echo_err(message: str) -> None:
    echo(message, err=True)
