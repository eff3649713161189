"""``--batch`` for a PyTorch MODEL: it sets the first dim of the ``--shape`` dims (a module declares no shapes).

An ONNX model's ``--batch`` fills the dynamic first dims that ``--shape`` leaves unnamed; a PyTorch model has every
input named by ``--shape``, so there ``--batch`` rewrites those shapes' shared first dim before the export: ``--shape
image=1x3x8x8 --batch 4`` exports and compiles ``4x3x8x8``, ``--batch 1..8@4`` is ``image=1x3x8x8:4x3x8x8:8x3x8x8``
(exported at OPT with the batch dynamic, as a range given in ``--shape`` is). A ``--shape`` range wins for its input.
Torch is not imported here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from onnxsmith.errors import UserInputError

_FIXED = re.compile(r"(?P<name>[^=]+)=(?P<dims>\d+(?:x\d+)+)(?P<dtype>:[A-Za-z][A-Za-z0-9_]*)?")


def batch_into_shapes(spec: str, shapes: Sequence[str], batch: tuple[int, int, int]
                      ) -> tuple[tuple[str, ...], tuple[int, int, int] | None]:
    """``shapes`` with ``batch`` (min, opt, max) as the first dim of every fixed ``--shape`` of rank >= 2, and the
    ``--batch`` left for :func:`onnxsmith.model.load_model` (``None`` once applied here; unchanged when no
    ``--shape`` took it, so load_model says why)."""
    lo, opt, hi = batch
    matches = [(i, m) for i, value in enumerate(shapes) if (m := _FIXED.fullmatch(value.strip()))]
    if not matches:
        return tuple(shapes), batch
    firsts = {m["name"]: int(m["dims"].split("x")[0]) for _, m in matches}
    if len(set(firsts.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in firsts.items())
        raise UserInputError(f"cannot use --batch with {spec}", f"its --shape inputs do not share a first (batch) "
                             f"dim ({listed})", "give each input's batch in --shape NAME=DIMS or NAME=MIN:OPT:MAX")
    out = list(shapes)
    for i, m in matches:
        rest = m["dims"].split("x", 1)[1]
        dims = (f"{lo}x{rest}" if lo == hi else f"{lo}x{rest}:{opt}x{rest}:{hi}x{rest}")
        out[i] = f"{m['name']}={dims}{m['dtype'] or ''}"
    return tuple(out), None
