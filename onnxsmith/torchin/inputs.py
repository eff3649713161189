"""Inputs of a PyTorch model: ``--shape NAME=DIMS[:dtype]``, the inputs the export runs at, sample feeds and
the eager outputs as numpy arrays."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UserInputError

if TYPE_CHECKING:
    from onnxsmith.torchin.source import TorchModel


DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclasses.dataclass(frozen=True)
class InputArg:
    """One ``--shape`` as the export sees it."""

    name: str
    dims: tuple[int, ...]
    """The dims the export and its check run at (a range's OPT dims)."""
    dtype: str | None
    ranges: tuple[tuple[int, int] | None, ...] = ()
    """Per dim, ``(min, max)`` where a range lets it vary (exported as a dynamic dim)."""


def split_shapes(values: Sequence[str]) -> tuple[tuple[str, ...], dict[str, InputArg]]:
    """Strip an optional trailing ``:dtype`` from every ``--shape``; returns the values for
    :func:`onnxsmith.model.shapes.parse_shape_overrides` and what the export needs per input."""
    passthrough: list[str] = []
    args: dict[str, InputArg] = {}
    for value in values:
        text, dtype = value, None
        head, sep, tail = value.rpartition(":")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", tail):
            if tail not in DTYPES:
                raise UserInputError(f"invalid --shape '{value}'", f"unknown dtype '{tail}'",
                                     f"use one of {', '.join(DTYPES)}, e.g. --shape input_ids=1x128:int64")
            text, dtype = head, tail
        passthrough.append(text)
        name, eq, dims_text = text.rpartition("=")
        parts = dims_text.split(":")
        if not eq or not name or len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+(x\d+)*", p) for p in parts):
            continue  # parse_shape_overrides reports it, with the forms it knows
        dims = [tuple(int(d) for d in p.split("x")) for p in parts]
        if len(parts) == 1:
            args[name] = InputArg(name, dims[0], dtype)
            continue
        low, opt, high = dims
        if not len(low) == len(opt) == len(high):
            continue
        ranges = tuple((lo, hi) if lo != hi else None for lo, hi in zip(low, high))
        args[name] = InputArg(name, opt, dtype, ranges)
    return tuple(passthrough), args


def _resolve_inputs(model: TorchModel, args: Mapping[str, InputArg]) -> list[InputArg]:
    names = model.input_names
    unknown = [n for n in args if n not in names]
    if unknown:
        raise UserInputError(f"invalid --shape for '{unknown[0]}'", f"{model.spec} has no input of that name",
                             f"its inputs are: {', '.join(names) or '(none found)'}")
    out = []
    for name in names:
        if name in args:
            arg = args[name]
            if arg.dtype is None:
                arg = dataclasses.replace(arg, dtype=model.known.get(name, ((), "float32"))[1])
            out.append(arg)
            continue
        known = model.known.get(name)
        if known is None or any(d is None for d in known[0]):
            form = "x".join("N" if d is None else str(d) for d in known[0]) if known else "DIMS"
            raise UserInputError(f"PyTorch model {model.spec} needs the shape of input '{name}'",
                                 "a PyTorch module does not declare its input shapes",
                                 f"give --shape {name}={form}[:dtype] (dtype default float32, e.g. :int64 for ids)")
        out.append(InputArg(name, tuple(int(d) for d in known[0] if d is not None), known[1]))
    return out


def random_feeds(inputs: Sequence[InputArg], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` feeds of numpy arrays at the export dims: floats N(0, 1), integers in [0, 2), booleans."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for arg in inputs:
            dtype = arg.dtype or "float32"
            if dtype == "bool":
                feed[arg.name] = rng.random(arg.dims) < 0.5
            elif dtype.startswith(("int", "uint")):
                feed[arg.name] = rng.integers(0, 2, arg.dims).astype(dtype)
            elif dtype == "bfloat16":
                feed[arg.name] = rng.standard_normal(arg.dims).astype(np.float32)
            else:
                feed[arg.name] = rng.standard_normal(arg.dims).astype(dtype)
        feeds.append(feed)
    return feeds


def _to_torch(torch: Any, feed: Mapping[str, Any], inputs: Sequence[InputArg]) -> tuple[Any, ...]:
    out = []
    for arg in inputs:
        tensor = torch.from_numpy(feed[arg.name].copy())
        if arg.dtype == "bfloat16":
            tensor = tensor.to(torch.bfloat16)
        out.append(tensor)
    return tuple(out)


def flatten_outputs(value: Any) -> list[Any]:
    """An eager result (a tensor, or tuples/lists/dicts of them) as a flat list of numpy arrays."""
    import numpy as np

    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return [np.asarray(tensor.numpy())]
    if isinstance(value, Mapping):
        return [a for v in value.values() for a in flatten_outputs(v)]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in flatten_outputs(v)]
    return []


def _batched(inputs: Sequence[InputArg]) -> bool:
    """Whether the inputs share a first (batch) dim that the export can leave dynamic."""
    firsts = {arg.dims[0] for arg in inputs if arg.dims}
    return len(firsts) == 1 and all(len(arg.dims) >= 2 for arg in inputs) and not any(
        arg.ranges and arg.ranges[0] is not None for arg in inputs)
