"""The export plans: ``torch.onnx.export`` with the dynamo exporter (dynamic batch, then static), then the
TorchScript exporter; the opset; why an exporter failed, in one line."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, UserInputError, first_line
from onnxsmith.torchin.inputs import InputArg, _batched, _to_torch, flatten_outputs, random_feeds
from onnxsmith.torchin.source import import_torch

if TYPE_CHECKING:
    from onnxsmith.targets import Target
    from onnxsmith.torchin.source import TorchModel


DEFAULT_OPSET = 18
"""The opset exports use unless a backend of the target reads only older ones (the dynamo exporter's own opset)."""


class ExportError(BackendError):
    """``torch.onnx.export`` could not handle the model (exit 4)."""


def choose_opset(target: Target | None, wanted: int | None = None) -> tuple[int, str]:
    """The export opset and why: ``wanted``, else :data:`DEFAULT_OPSET` lowered to the oldest ``max_opset`` that
    an installed backend of the target declares."""
    if wanted:
        return wanted, "asked for"
    opset, why = DEFAULT_OPSET, "the dynamo exporter's opset"
    if target is None:
        return opset, why
    from onnxsmith.registry import backend_status, get_backend

    for name in target.backends:
        if not backend_status(name, probe_devices=False).available:
            continue
        limit = get_backend(name).max_opset(target)
        if limit is not None and limit < opset:
            opset, why = limit, f"the newest opset {name} reads"
    if why.startswith("the dynamo"):
        why += f", which every backend of {target.id} reads"
    return opset, why


@contextlib.contextmanager
def quiet_torch() -> Iterator[tuple[io.StringIO, list[warnings.WarningMessage]]]:
    """The exporters print progress, graphs and warnings: keep them (for errors and notes), show none."""
    import logging

    import os
    import tempfile

    buffer = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 1)  # the TorchScript exporter's C++ side writes graphs straight to the descriptors
    os.dup2(sink.fileno(), 2)
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield buffer, caught
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        sink.seek(0)
        buffer.write(sink.read().decode(errors="replace"))
        sink.close()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def explain_failure(exc: BaseException) -> tuple[str, str, str]:
    """``(construct, reason, hint)`` from an exporter exception: the op or the source line that did not export,
    the exporter's own reason, what to do."""
    text = _ANSI.sub("", str(exc))
    chain = [text] + [_ANSI.sub("", str(c)) for c in _causes(exc)]
    whole = "\n".join(chain)
    construct = ""
    call = re.search(r"The following call raised this error:\s*\n\s*File \"([^\"]+)\", line (\d+), in (\w+)\n\s*(.+)",
                     whole)
    op = re.search(r"op='([\w.:]+)'", whole) or re.search(r"operator '([\w:.]+)'", whole)
    if op:
        construct = f"op {op.group(1).replace('aten.', 'aten::', 1) if op.group(1).startswith('aten.') else op.group(1)}"
    if call:
        line = f"`{call.group(4).strip()}` ({Path(call.group(1)).name}:{call.group(2)}, in {call.group(3)})"
        construct = f"{construct} at {line}" if construct else line
    reason = ""
    summary = re.search(r"## Exception summary\s*\n\s*(.+)", whole)
    if summary:
        reason = summary.group(1).strip()
        reason = re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>:\s*", r"\1: ", reason)
    if not reason:
        reason = first_line(exc) if type(exc) is RuntimeError else f"{type(exc).__name__}: {first_line(exc)}"
    reason = re.sub(r"<OpOverload\(op='([\w.]+)', overload='(\w+)'\)>", r"\1", reason)
    reason = reason.split(" (unhinted")[0]
    if len(reason) > 240:
        reason = reason[:237] + "..."
    low = whole.lower()
    if "data-dependent" in low or "guardondatadependent" in low:
        hint = ("replace Python control flow on tensor values (if/while on a tensor, .item()) with torch.where or "
                "torch.cond")
    elif "no onnx function found" in low or "is not supported" in low or "unsupportedoperator" in low:
        hint = ("replace the op with ones ONNX has, or pass a translation with "
                "torch.onnx.export(custom_translation_table=...) and export the .onnx yourself")
    else:
        hint = "export it yourself with torch.onnx.export(..., report=True) to see the exporter's full report"
    return construct, reason, hint


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 5:
        yield cause
        cause = cause.__cause__ or cause.__context__
        seen += 1


_TRACE_BRANCH = ("Converting a tensor to a Python boolean", "Converting a tensor to a Python number",
                 "Converting a tensor to a Python index", "Iterating over a tensor")


def _dynamic_shapes(torch: Any, inputs: Sequence[InputArg], batch: bool) -> tuple[Any, ...] | None:
    specs = []
    dynamic = False
    batch_dim = torch.export.Dim("batch", min=1, max=4096) if batch else None
    for arg in inputs:
        dims: dict[int, Any] = {}
        for i, bounds in enumerate(arg.ranges):
            if bounds is not None:
                dims[i] = torch.export.Dim(f"{arg.name}_{i}", min=bounds[0], max=bounds[1])
        if batch_dim is not None and arg.dims and 0 not in dims:
            dims[0] = batch_dim
        dynamic |= bool(dims)
        specs.append(dims or None)
    return tuple(specs) if dynamic else None


def export_onnx(model: TorchModel, inputs: Sequence[InputArg], path: Path, opset: int,
                progress: Callable[[str], None], output_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Export to ``path``: dynamo first (dynamic batch, then static), then the TorchScript exporter."""
    torch = import_torch()
    sample = _to_torch(torch, random_feeds(inputs, 1, seed=1)[0], inputs)
    names = [arg.name for arg in inputs]
    with torch.no_grad():
        try:
            outputs = flatten_outputs(model.eager(*sample))
        except Exception as exc:
            raise UserInputError(f"cannot run the PyTorch model {model.spec}",
                                 f"forward() on inputs {', '.join(f'{a.name} {_dims(a)}' for a in inputs)} raised "
                                 f"{type(exc).__name__}: {first_line(exc)}", "check --shape and its :dtype") from exc
    if not outputs:
        raise UserInputError(f"cannot export {model.spec}", "forward() returned no tensor",
                             "return a tensor, or a tuple or dict of tensors")
    if output_names is None or len(output_names) != len(outputs):
        output_names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    output_names = list(output_names)
    attempts = []
    batch = _batched(inputs) and model.kind != "exported"
    plans = [("dynamo", batch), ("dynamo", False)] if batch else [("dynamo", False)]
    plans.append(("torchscript", batch))
    failures: list[tuple[str, BaseException]] = []
    for exporter, dynamic in plans:
        if failures and exporter == "dynamo" and failures[-1][0] == "dynamo" and not _dynamic_failure(failures[-1][1]):
            continue  # a static retry helps only when the dynamic batch was the problem
        progress(f"exporting {model.spec} to ONNX ({exporter} exporter{', dynamic batch' if dynamic else ''})")
        path.unlink(missing_ok=True)
        args = sample
        if dynamic and inputs[0].dims[0] == 1:  # a sample of batch 1 lets torch.export specialize the dim to 1
            wide = [dataclasses.replace(a, dims=(2, *a.dims[1:])) for a in inputs]
            args = _to_torch(torch, random_feeds(wide, 1, seed=1)[0], wide)
        start = time.perf_counter()
        try:
            with quiet_torch() as (_, caught):
                if exporter == "dynamo":
                    _require_onnxscript()
                    torch.onnx.export(model.module, args, str(path), dynamo=True, opset_version=opset,
                                      input_names=names, output_names=output_names, verbose=False,
                                      dynamic_shapes=_dynamic_shapes(torch, inputs, dynamic) if dynamic or any(
                                          a.ranges for a in inputs) else None, external_data=False)
                else:
                    axes = ({n: {0: "batch"} for n in (*names, *output_names)} if dynamic else None)
                    torch.onnx.export(model.module, args, str(path), dynamo=False, opset_version=opset,
                                      input_names=names, output_names=output_names, dynamic_axes=axes)
        except MissingDependencyError:
            raise
        except Exception as exc:
            failures.append((exporter, exc))
            attempts.append({"exporter": exporter, "dynamic_batch": dynamic, "ok": False,
                             "reason": " ".join(explain_failure(exc)[:2]).strip()})
            continue
        branch = [str(w.message) for w in caught if any(s in str(w.message) for s in _TRACE_BRANCH)]
        if exporter == "torchscript" and branch:
            said = next(s for s in _TRACE_BRANCH if s in branch[0])
            exc = RuntimeError(f"its tracer would record only the branch the sample input took (TracerWarning: "
                               f"{said})")
            failures.append((exporter, exc))
            attempts.append({"exporter": exporter, "dynamic_batch": dynamic, "ok": False, "reason": str(exc)})
            path.unlink(missing_ok=True)
            continue
        notes = []
        if dynamic and not _first_dims_dynamic(path):
            dynamic = False
            notes.append("the exporter fixed the batch dim (the model specializes it): exported with static shapes")
        attempts.append({"exporter": exporter, "dynamic_batch": dynamic, "ok": True,
                         "seconds": round(time.perf_counter() - start, 3)})
        if failures:
            construct, reason, _ = explain_failure(failures[0][1])
            notes.append(f"the dynamo exporter failed ({(construct + ': ' if construct else '') + reason}); "
                         f"exported with the {exporter} exporter instead")
        tracer = sorted({first_line(RuntimeError(str(w.message)), 160) for w in caught
                         if "TracerWarning" in type(w.message).__name__ or "trace" in str(w.message).lower()})
        notes += [f"exporter warning: {t}" for t in tracer[:3]]
        return {"exporter": exporter, "dynamic_batch": dynamic, "attempts": attempts, "notes": notes,
                "output_names": output_names}
    first_exporter, first = failures[0]
    construct, reason, hint = explain_failure(first)
    others = [f"the {'TorchScript' if e == 'torchscript' else e} exporter: {explain_failure(x)[1]}" for e, x in failures[1:] if e != first_exporter]
    raise ExportError(f"cannot export {model.spec} to ONNX" + (f": {construct}" if construct else ""),
                      f"the {first_exporter} exporter says {reason}" + (f"; {others[-1]}" if others else ""),
                      hint) from first


def _first_dims_dynamic(path: Path) -> bool:
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    dims = [v.type.tensor_type.shape.dim for v in proto.graph.input if v.name not in initializers]
    return all(d and not d[0].HasField("dim_value") for d in dims)


def _dynamic_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("constraint", "dynamic", "specializ", "guard", "symbolic", "dim"))


def _require_onnxscript() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise MissingDependencyError("onnxscript", "torch", "the dynamo ONNX exporter of PyTorch needs it")


def _dims(arg: InputArg) -> str:
    return "x".join(map(str, arg.dims)) + f" {arg.dtype or 'float32'}"
