"""PyTorch in: a MODEL argument that names a PyTorch model becomes a checked ONNX export.

Every command that takes MODEL calls :func:`open_model`. An ONNX file goes straight to
:func:`onnxsmith.model.load_model` (torch is never imported); the PyTorch forms are

* ``package.module:factory`` or ``path/to/file.py:factory``: a function returning an ``nn.Module``;
* a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``);
* a TorchScript file saved with ``torch.jit.save``.

Their inputs come from ``--shape NAME=DIMS[:dtype]`` (dtype default float32; a ``.pt2`` program knows its own). The
export runs ``torch.onnx.export`` with the dynamo exporter first and the TorchScript exporter as a fallback (said
so in the record), at :func:`choose_opset` (the newest opset every backend of the target reads, at most
:data:`DEFAULT_OPSET`), with a dynamic batch dim where the inputs have one. Then it checks: the ONNX checker, ONNX
shape inference, and the numerics of ONNX Runtime against eager PyTorch on sample inputs (the real data when given):
cosine, max abs error and top-1 agreement. The record (torch version, exporter, opset, the figures) lands in the
bundle manifest (``model.export``) and its report. Exports are cached by what determines them (the model's
code, structure and weights, the inputs, the opset, the torch version, the check data).

Exit codes: the model cannot be imported or built, or ``--shape`` is missing or wrong: 2; torch (or onnxscript)
not installed: 3; the exporter cannot handle the model: 4 (:class:`ExportError`, one line naming the op or the
construct, the exporter's reason and a hint); the export computes something else than eager PyTorch: 6.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import io
import json
import re
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import (BackendError, CheckFailedError, MissingDependencyError, ModelError, UserInputError,
                              first_line)

if TYPE_CHECKING:
    from onnxsmith.data import Dataset
    from onnxsmith.model import LoadedModel, TensorSpec
    from onnxsmith.targets import Target

DEFAULT_OPSET = 18
"""The opset exports use unless a backend of the target reads only older ones (the dynamo exporter's own opset)."""
MIN_COSINE = 0.999
"""An export whose outputs fall below this cosine to eager PyTorch on any checked sample is refused (exit 6)."""
CHECK_SAMPLES = 64
"""Samples of real data the numerics check runs (random inputs: :data:`RANDOM_SAMPLES`)."""
RANDOM_SAMPLES = 8
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
EXPORT_RECORD = "export.json"
_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|[^:]+\.py):(?P<attr>[A-Za-z_]\w*)$")
_RECORD_VERSION = 1


class ExportError(BackendError):
    """``torch.onnx.export`` could not handle the model (exit 4)."""


# --- what MODEL is --------------------------------------------------------------------------------------------------

def torch_kind(spec: str) -> str | None:
    """``"factory"``, ``"exported"`` (torch.export ``.pt2``), ``"torchscript"``, or ``None`` for anything else
    (an ONNX file, or something :func:`onnxsmith.model.load_model` will refuse with its own message)."""
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".onnx":
            return None
        if path.suffix == ".pt2":
            return "exported"
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    names = archive.namelist()
            except (zipfile.BadZipFile, OSError):
                return None
            if any(n.endswith(("serialized_exported_program.json", "/archive_format")) or "/models/" in n
                   for n in names):
                return "exported"
            if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
                return "torchscript"
            if any(n.endswith("/data.pkl") for n in names):
                raise ModelError(f"cannot load model '{spec}'", "it is a torch.save pickle (a state dict or a whole "
                                 "module), which holds no architecture onnxsmith can rebuild safely",
                                 "give module:factory (a function that builds the module and loads these "
                                 "weights), a torch.export .pt2 or a TorchScript file")
        return None
    if not path.exists() and _FACTORY.match(spec):
        return "factory"
    return None


# --- --shape NAME=DIMS[:dtype] ----------------------------------------------------------------------------------------

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
    :func:`onnxsmith.model.parse_shape_overrides` and what the export needs per input."""
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


# --- the one entry point --------------------------------------------------------------------------------------------

def open_model(spec: str, shapes: Sequence[str] = (), *, target: Target | None = None, data: str | None = None,
               default_batch: int | None = 1, progress: Callable[[str], None] | None = None,
               opset: int | None = None, batch: tuple[int, int, int] | None = None) -> LoadedModel:
    """Load MODEL as every command does: an ONNX file as it is, a PyTorch model through a checked export.

    ``data`` (any form :func:`onnxsmith.datasets.open_dataset` reads) feeds the export's numerics check. A range
    (``--shape NAME=MIN:OPT:MAX``) is exported at its OPT dims with the varying dims dynamic, and kept as the
    loaded model's :attr:`~onnxsmith.model.LoadedModel.shape_ranges`; ``batch`` is ``--batch`` as
    :func:`onnxsmith.model.parse_batch` returns it."""
    from onnxsmith.model import load_model, parse_shape_overrides

    kind = torch_kind(spec)
    if kind is not None and batch is not None:  # a PyTorch model's --batch sets its --shape dims' first dim
        from onnxsmith.torchbatch import batch_into_shapes
        shapes, batch = batch_into_shapes(spec, shapes, batch)
    passthrough, args = split_shapes(shapes)
    if kind is None:
        if any(a.dtype for a in args.values()):
            raise UserInputError(f"invalid --shape for '{spec}'", "a :dtype suffix applies to PyTorch models only "
                                 "(an ONNX model declares its input types)", "drop the :dtype suffix")
        return load_model(spec, parse_shape_overrides(passthrough), default_batch=default_batch, batch=batch)
    overrides = parse_shape_overrides(passthrough)
    path, record = export_cached(spec, kind, args, target=target, data=data, progress=progress, opset=opset)
    loaded = load_model(path, overrides, default_batch=default_batch, batch=batch)
    loaded.export = record
    loaded.notes.append(f"exported from PyTorch ({spec}) with the {record['exporter']} exporter, opset "
                        f"{record['opset']}; eager vs ONNX Runtime cosine {record['check']['cosine_min']:.6f}")
    return loaded


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "torch", "PyTorch models need it (export, distillation)") from exc
    return torch


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


# --- building the torch model ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class TorchModel:
    """A PyTorch model ready to export and to run eagerly."""

    spec: str
    kind: str
    module: Any
    """What ``torch.onnx.export`` gets (an nn.Module, ExportedProgram or ScriptModule)."""
    eager: Callable[..., Any]
    """Runs the model eagerly (for the check)."""
    input_names: tuple[str, ...]
    known: dict[str, tuple[tuple[int | None, ...], str]]
    """Shapes and dtypes the model itself declares (a ``.pt2`` program); None for a symbolic dim."""
    source_files: tuple[Path, ...] = ()


def load_factory(spec: str) -> Any:
    """Call ``module:factory`` (or ``file.py:factory``) and return the nn.Module it builds."""
    torch = import_torch()
    match = _FACTORY.match(spec)
    assert match is not None
    module_name, attr = match["module"], match["attr"]
    where = f"cannot build the PyTorch model '{spec}'"
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise UserInputError(where, f"no file '{file}'", "give package.module:factory or path/to/file.py:factory")
            unit = importlib.util.spec_from_file_location(f"onnxsmith_user_{file.stem}", file)
            assert unit is not None and unit.loader is not None
            module = importlib.util.module_from_spec(unit)
            sys.modules[unit.name] = module
            unit.loader.exec_module(module)
        else:
            cwd = str(Path.cwd())
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)  # `module:factory` may name a file in the working directory
            try:
                module = importlib.import_module(module_name)
            finally:
                if added:
                    sys.path.remove(cwd)
    except UserInputError:
        raise
    except ModuleNotFoundError as exc:
        raise UserInputError(where, first_line(exc), "check the module name and PYTHONPATH (or give "
                             "path/to/file.py:factory)") from exc
    except Exception as exc:
        raise UserInputError(where, f"importing '{module_name}' raised {type(exc).__name__}: {first_line(exc)}",
                             "fix the module; --debug shows the traceback") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserInputError(where, f"'{module_name}' has no function '{attr}'",
                             "name a function that returns a torch.nn.Module")
    try:
        built = factory()
    except Exception as exc:
        raise UserInputError(where, f"{attr}() raised {type(exc).__name__}: {first_line(exc)}",
                             "the factory is called without arguments; --debug shows the traceback") from exc
    if not isinstance(built, torch.nn.Module):
        raise UserInputError(where, f"{attr}() returned {type(built).__name__}, not a torch.nn.Module",
                             "return the module itself (e.g. the model after load_state_dict)")
    return built.eval()


def _forward_names(module: Any) -> tuple[str, ...]:
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _module_sources(module: Any) -> tuple[Path, ...]:
    import inspect

    files: set[Path] = set()
    for sub in module.modules():
        try:
            file = inspect.getsourcefile(type(sub))
        except (TypeError, OSError):
            continue
        if file and "site-packages" not in file and "/torch/" not in file:
            files.add(Path(file))
    return tuple(sorted(files))


def build_torch_model(spec: str, kind: str) -> TorchModel:
    torch = import_torch()
    where = f"cannot load the PyTorch model '{spec}'"
    if kind == "factory":
        module = load_factory(spec)
        return TorchModel(spec, kind, module, module, _forward_names(module), {}, _module_sources(module))
    if kind == "exported":
        try:
            program = torch.export.load(spec)
        except Exception as exc:
            raise ModelError(where, f"torch.export.load failed: {first_line(exc)}",
                             "save it with torch.export.save(program, 'model.pt2') by this torch version") from exc
        known: dict[str, tuple[tuple[int | None, ...], str]] = {}
        names = []
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        for spec_in in program.graph_signature.input_specs:
            if spec_in.kind.name != "USER_INPUT":
                continue
            name = spec_in.arg.name
            names.append(name)
            val = placeholders[name].meta.get("val")
            if val is not None and hasattr(val, "shape"):
                dims = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else None for d in val.shape)
                known[name] = (dims, str(val.dtype).removeprefix("torch."))
        return TorchModel(spec, kind, program, program.module(), tuple(names), known)
    try:
        script = torch.jit.load(spec, map_location="cpu").eval()
    except Exception as exc:
        raise ModelError(where, f"torch.jit.load failed: {first_line(exc)}",
                         "save it with torch.jit.save(torch.jit.script(model), 'model.pt')") from exc
    try:
        names = tuple(a.name for a in script.forward.schema.arguments[1:])
    except Exception:
        names = ()
    return TorchModel(spec, kind, script, script, names, {})


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


# --- sample inputs ----------------------------------------------------------------------------------------------------

def _torch_dtype(torch: Any, name: str) -> Any:
    return getattr(torch, name if name != "bool" else "bool")


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


# --- export ---------------------------------------------------------------------------------------------------------

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


def _batched(inputs: Sequence[InputArg]) -> bool:
    """Whether the inputs share a first (batch) dim that the export can leave dynamic."""
    firsts = {arg.dims[0] for arg in inputs if arg.dims}
    return len(firsts) == 1 and all(len(arg.dims) >= 2 for arg in inputs) and not any(
        arg.ranges and arg.ranges[0] is not None for arg in inputs)


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


# --- the check -------------------------------------------------------------------------------------------------------

def check_export(model: TorchModel, inputs: Sequence[InputArg], path: Path, record: Mapping[str, Any],
                 data: Dataset | None, progress: Callable[[str], None]) -> dict[str, Any]:
    """ONNX checker, shape inference, and ONNX Runtime vs eager PyTorch on ``data`` (else random inputs)."""
    import numpy as np
    import onnx

    from onnxsmith.numerics import compare
    from onnxsmith.reference import reference_runner

    progress("checking the export (ONNX checker, shape inference, numerics vs eager PyTorch)")
    proto = onnx.load_model(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the ONNX export of {model.spec} is invalid", f"the ONNX checker says: {first_line(exc)}",
                          "report it to PyTorch (torch.onnx); try another torch version") from exc
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        typed = sum(1 for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape"))
        shape_note = f"strict, {typed} intermediate tensors typed"
    except Exception as exc:
        raise ExportError(f"the ONNX export of {model.spec} fails shape inference", first_line(exc),
                          "report it to PyTorch (torch.onnx); try another torch version") from exc
    torch = import_torch()
    names = record["output_names"]
    if data is not None:
        feeds = list(data.batches())
        source = f"{sum(len(next(iter(f.values()))) for f in feeds) if not data.one_feed else 1} samples of {data.source}"
    else:
        feeds = random_feeds(inputs, RANDOM_SAMPLES)
        source = f"{RANDOM_SAMPLES} random inputs (give data for a check on real inputs)"
    got: dict[str, list[Any]] = {n: [] for n in names}
    want: dict[str, list[Any]] = {n: [] for n in names}
    with reference_runner(path) as runner, torch.no_grad():
        for feed in feeds:
            ort = runner.run({a.name: np.asarray(feed[a.name]) for a in inputs})
            eager = flatten_outputs(model.eager(*_to_torch(torch, feed, inputs)))
            for name, value in zip(names, eager):
                want[name].append(value.reshape(-1, *value.shape[1:]) if value.ndim else value.reshape(1))
                out = ort[name]
                got[name].append(out.reshape(-1, *out.shape[1:]) if out.ndim else out.reshape(1))
    stacked_got = {n: np.concatenate(v) for n, v in got.items()}
    stacked_want = {n: np.concatenate(v).astype(stacked_got[n].dtype, copy=False) for n, v in want.items()}
    result = compare(stacked_got, stacked_want, names=names)
    figures = {"samples": result.samples, "data": source, "cosine_min": round(result.cosine_min, 8),
               "cosine_mean": round(result.cosine_mean, 8), "max_abs_error": float(f"{result.max_abs_error:.3g}"),
               "top1_agreement": result.top1_agreement, "onnx_checker": "full check passed",
               "shape_inference": shape_note}
    if record.get("dynamic_batch"):
        figures["dynamic_batch_check"] = _check_other_batch(model, inputs, path, names, torch)
    if result.nonfinite or result.cosine_min < MIN_COSINE:
        raise CheckFailedError(f"the ONNX export of {model.spec} computes something else than PyTorch",
                               f"cosine to eager {result.cosine_min:.6f} (below {MIN_COSINE}), max abs error "
                               f"{result.max_abs_error:.3g} on {source}",
                               "look for ops that behave differently in eval mode or at export (random, in-place "
                               "state); --debug shows the traceback")
    return figures


def _check_other_batch(model: TorchModel, inputs: Sequence[InputArg], path: Path, names: list[str],
                       torch: Any) -> dict[str, Any]:
    """The dynamic batch verified at another batch size (so a batch sweep compiles what PyTorch computes)."""
    from onnxsmith.numerics import compare
    from onnxsmith.reference import reference_runner

    other = inputs[0].dims[0] + 1
    wider = [dataclasses.replace(a, dims=(other, *a.dims[1:])) for a in inputs]
    feed = random_feeds(wider, 1, seed=2)[0]
    try:
        with reference_runner(path) as runner, torch.no_grad():
            got = runner.run(feed)
            want = flatten_outputs(model.eager(*_to_torch(torch, feed, wider)))
        result = compare({n: got[n] for n in names}, {n: w.astype(got[n].dtype) for n, w in zip(names, want)},
                         names=names)
        return {"batch": other, "cosine_min": round(result.cosine_min, 8), "ok": result.cosine_min >= MIN_COSINE}
    except Exception as exc:  # noted; load_model fixes the batch the user asked for, which the main check covers
        return {"batch": other, "ok": False, "reason": first_line(exc)}


# --- cache ----------------------------------------------------------------------------------------------------------

def _model_digest(model: TorchModel) -> dict[str, Any]:
    """What determines an export of ``model``: its file, or its code, structure and weights."""
    from onnxsmith.cache import sha256_file

    torch = import_torch()
    if model.kind != "factory":
        return {"file": sha256_file(Path(model.spec))}
    digest = hashlib.sha256()
    for name, tensor in model.module.state_dict().items():
        digest.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {"structure": hashlib.sha256(repr(model.module).encode()).hexdigest(), "weights": digest.hexdigest(),
            "code": {str(f): sha256_file(f) for f in model.source_files}}


def export_cached(spec: str, kind: str, args: Mapping[str, InputArg], *, target: Target | None = None,
                  data: str | None = None, progress: Callable[[str], None] | None = None,
                  opset: int | None = None) -> tuple[Path, dict[str, Any]]:
    """The checked ONNX export of a PyTorch model and its record, from the cache when the same model, inputs,
    opset, torch version and check data were exported before."""
    import onnxsmith
    from onnxsmith.cache import cache_key, cache_root, private_dir, publish_dir

    say = progress or (lambda message: None)
    torch = import_torch()
    say(f"loading the PyTorch model {spec}")
    model = build_torch_model(spec, kind)
    inputs = _resolve_inputs(model, args)
    chosen, why = choose_opset(target, opset)
    dataset = None
    if data:
        dataset = _check_data(data, inputs)
    key = cache_key({"model": _model_digest(model), "kind": kind, "inputs": [dataclasses.asdict(a) for a in inputs],
                     "opset": chosen, "torch": torch.__version__, "onnxsmith": onnxsmith.__version__,
                     "record": _RECORD_VERSION, "data": dataset.fingerprint() if dataset is not None else None})
    root = cache_root() / "exports"
    stem = _stem(spec, kind)
    final = root / key
    if (final / EXPORT_RECORD).is_file() and (final / f"{stem}.onnx").is_file():
        record = json.loads((final / EXPORT_RECORD).read_text())
        record["cache"] = "hit"
        record["opset_reason"] = why
        return final / f"{stem}.onnx", record
    with private_dir(root, "export") as tmp:
        path = tmp / f"{stem}.onnx"
        start = time.perf_counter()
        record = export_onnx(model, inputs, path, chosen, say)
        seconds = round(time.perf_counter() - start, 3)
        check = check_export(model, inputs, path, record, dataset, say)
        if record["dynamic_batch"] and not check["dynamic_batch_check"].get("ok"):
            record["notes"].append(f"the dynamic batch did not check out at batch "
                                   f"{check['dynamic_batch_check']['batch']} "
                                   f"({check['dynamic_batch_check'].get('reason') or 'outputs differ'}): batch "
                                   "sweeps of this export are not trustworthy")
        full = {"from": spec, "kind": kind, "torch_version": torch.__version__, "exporter": record["exporter"],
                "opset": chosen, "opset_reason": why, "dynamic_batch": record["dynamic_batch"],
                "inputs": [{"name": a.name, "shape": list(a.dims), "dtype": a.dtype} for a in inputs],
                "outputs": record["output_names"], "export_seconds": seconds, "attempts": record["attempts"],
                "check": check, "notes": record["notes"], "cache": "miss"}
        (tmp / EXPORT_RECORD).write_text(json.dumps(full, indent=2))
        if not publish_dir(tmp, final) and not (final / EXPORT_RECORD).is_file():
            raise BackendError("cannot cache the export", f"'{final}' exists and holds no export",
                               f"remove '{final}'")
    return final / f"{stem}.onnx", full


def _stem(spec: str, kind: str) -> str:
    if kind == "factory":
        return re.sub(r"[^\w.-]", "_", spec.rpartition(":")[2])
    return Path(spec).stem


def _check_data(data: str, inputs: Sequence[InputArg]) -> Dataset:
    """``data`` read for the check: at most :data:`CHECK_SAMPLES` samples, as feeds of the export's dims."""
    from onnxsmith.datasets import open_dataset
    from onnxsmith.model import TensorSpec

    specs = tuple(TensorSpec(a.name, a.dtype or "float32", a.dims) for a in inputs)
    dataset = open_dataset(data, specs, what="data for the export check", limit=CHECK_SAMPLES,
                           known_batch=tuple(a.name for a in inputs) if _batched(inputs) else None)
    return dataset.subset(min(len(dataset), CHECK_SAMPLES))


def describe(record: Mapping[str, Any]) -> str:
    """The export record in one line, for the CLI."""
    check = record["check"]
    top1 = check.get("top1_agreement")
    return (f"exported {record['from']} with torch {record['torch_version']} ({record['exporter']} exporter, opset "
            f"{record['opset']}): cosine to eager {check['cosine_min']:.6f}, max abs error {check['max_abs_error']:.3g}"
            + (f", top-1 agreement {top1:.4f}" if top1 is not None else "") + f" on {check['data']}"
            + (" (cached)" if record.get("cache") == "hit" else ""))


def export_module(module: Any, label: str, inputs: Sequence[InputArg], path: Path, *, target: Target | None = None,
                  data: Dataset | None = None, opset: int | None = None, output_names: Sequence[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export an nn.Module in hand (a freshly trained student) to ``path`` with the same exporters and checks as
    :func:`export_cached`, feeding it by position under ``inputs``' names (and naming its outputs
    ``output_names`` when it has as many); returns the record."""
    import shutil

    from onnxsmith.cache import private_dir

    torch = import_torch()
    say = progress or (lambda message: None)
    model = TorchModel(label, "factory", module.eval(), module.eval(), tuple(a.name for a in inputs), {})
    chosen, why = choose_opset(target, opset)
    path = Path(path)
    with private_dir(path.resolve().parent, "export") as tmp:
        staged = tmp / path.name
        start = time.perf_counter()
        record = export_onnx(model, inputs, staged, chosen, say, output_names)
        seconds = round(time.perf_counter() - start, 3)
        check = check_export(model, inputs, staged, record, data, say)
        shutil.move(str(staged), str(path))
    return {"from": label, "kind": "module", "torch_version": torch.__version__, "exporter": record["exporter"],
            "opset": chosen, "opset_reason": why, "dynamic_batch": record["dynamic_batch"],
            "inputs": [{"name": a.name, "shape": list(a.dims), "dtype": a.dtype} for a in inputs],
            "outputs": record["output_names"], "export_seconds": seconds, "attempts": record["attempts"],
            "check": check, "notes": record["notes"]}
