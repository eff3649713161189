"""What MODEL is (a factory, a ``torch.export`` program, a TorchScript file) and building the torch model."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxsmith.errors import MissingDependencyError, ModelError, UserInputError, first_line


_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|[^:]+\.py):(?P<attr>[A-Za-z_]\w*)$")


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


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError("torch", "torch", "PyTorch models need it (export, distillation)") from exc
    return torch


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
