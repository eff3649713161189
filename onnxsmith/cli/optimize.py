"""``onnxsmith optimize``: placeholder until the ladder lands (issue 5)."""

from __future__ import annotations

import click


@click.command("optimize")
@click.argument("model", type=click.Path(dir_okay=False))
def optimize_command(model: str) -> None:
    """Walk the optimization ladder and keep the best measured artifact."""
    from onnxsmith.errors import UnsupportedError

    raise UnsupportedError("optimize is not available in this build", "the optimization ladder is not finished",
                           "use compile/profile/validate step by step")
