"""Deployment programs: ``BUNDLE/deploy/``, the smallest complete programs that load the artifact with the backend's
own runtime (no onnxsmith), feed one ``.npy`` per input and write one ``.npy`` per output.

Each backend names its programs (:meth:`onnxsmith.plugin.Compiler.deploy_programs`) and ships their templates as
package data (``compilers/<backend>/deploy/<language>/``); this module renders them. A template that holds
``@@NAME@@`` placeholders is named ``NAME.in`` (``main.cpp.in``, ``run.py.in``: as it stands it is not valid
source, so no compiler, byte-compiler or import check takes it for one); its placeholders take the backend's
variables and the core's (inputs and outputs with their dtypes and shapes, the title) and it is written without
the ``.in``. Other files are copied as they are. C++ programs get the shared ``deploy.hpp`` (the ``.npy`` reader
and writer, the command line, the input checks: valid C++ as it stands). ``deploy/README.md`` lists each
program's exact build and run commands and what onnxsmith's own tests did with it here, ``deploy/programs.json``
holds the same as data, and ``deploy/example/`` one input per model input (a fixed pseudo-random pattern of the
compiled shape) to run them on.

Every file of the folder is listed in the manifest with its sha256 (``onnxsmith verify`` checks them; a program
built in place leaves files the seal does not list: build a copy to keep the bundle verifiable).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxsmith

if TYPE_CHECKING:
    from onnxsmith.model import TensorSpec
    from onnxsmith.plugin import Artifact, Compiler, DeployProgram
    from onnxsmith.targets import Target

COMMON = Path(__file__).parent / "common"
CPP_HEADER = "deploy.hpp"
FOLDER = "deploy"
PLACEHOLDER = re.compile(r"@@([A-Z0-9_]+)@@")
TEMPLATE_SUFFIX = ".in"


def npy_descr(dtype: str) -> str:
    """The ``.npy`` header's descr of an element type, e.g. ``float32`` -> ``<f4``."""
    import numpy as np

    return np.dtype(dtype).str


def dim(value: object) -> int:
    """A declared dimension for a template: its size, or -1 when dynamic."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def core_variables(title: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> dict[str, str]:
    """The placeholders every template may use."""

    def cpp(specs: tuple[TensorSpec, ...]) -> str:
        return ", ".join(f'{{"{s.name}", "{npy_descr(s.dtype)}", {{{", ".join(str(dim(d)) for d in s.shape)}}}}}'
                         for s in specs)

    def py(specs: tuple[TensorSpec, ...]) -> str:
        return "[" + ", ".join(repr((s.name, s.dtype, [dim(d) for d in s.shape])) for s in specs) + "]"

    def swift(specs: tuple[TensorSpec, ...]) -> str:
        return ", ".join(f'(name: "{s.name}", descr: "{npy_descr(s.dtype)}", shape: [{", ".join(str(dim(d)) for d in s.shape)}])'
                         for s in specs)

    return {"TITLE": title, "SWIFT_INPUTS": swift(inputs), "SWIFT_OUTPUTS": ", ".join(f'"{s.name}"' for s in outputs), "ONNXSMITH_VERSION": onnxsmith.__version__, "CPP_INPUTS": cpp(inputs),
            "CPP_OUTPUTS": cpp(outputs), "PY_INPUTS": py(inputs), "PY_OUTPUTS": py(outputs),
            "INPUT_USAGE": " ".join(f"{s.name}.npy" for s in inputs),
            "INPUT_FILES": " ".join(f"../example/{s.name}.npy" for s in inputs)}


def render(text: str, variables: Mapping[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise KeyError(f"{where}: the template uses @@{name}@@, which no one defines")
        return variables[name]

    return PLACEHOLDER.sub(value, text)


def write_deploy(root: Path, backend: Compiler, artifact: Artifact, target: Target, inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...], model_name: str,
                 example_inputs: tuple[TensorSpec, ...] | None = None) -> list[dict[str, Any]]:
    """Render ``backend``'s programs into ``root/deploy`` (``root`` is the bundle being written, whose
    ``artifact/`` is complete); returns what ``programs.json`` records. ``example_inputs``: the shapes of
    ``deploy/example/`` when they differ from ``inputs`` (a shape range's OPT point)."""
    if not all(s.numeric for s in (*inputs, *outputs)):
        # The programs read and write one numeric .npy per value: a model with strings, sequences or optionals
        # gets none (a program that could not read its inputs would be a stub).
        return []
    programs: list[DeployProgram] = backend.deploy_programs(artifact, root / "artifact", target)
    if not programs:
        return []
    deploy = root / FOLDER
    deploy.mkdir()
    _write_example(deploy / "example", example_inputs or inputs)
    records = []
    for program in programs:
        specs = program.inputs if program.inputs is not None else inputs
        title = f"{program.language} deployment program for {model_name}: {backend.name} " \
                f"{artifact.backend_version}, {artifact.device}, {artifact.precision_used}, target {target.id}"
        variables = {**core_variables(title, specs, outputs), **program.variables}
        folder = deploy / program.folder
        folder.mkdir()
        for template in sorted(p for p in program.templates.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            rel = template.relative_to(program.templates)
            if rel.name.endswith(TEMPLATE_SUFFIX):
                written = folder / rel.with_name(rel.name[:-len(TEMPLATE_SUFFIX)])
                written.parent.mkdir(parents=True, exist_ok=True)
                written.write_text(render(template.read_text(), variables, f"{program.templates.name}/{rel}"))
            else:
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, folder / rel)
        if program.language == "C++":
            shutil.copyfile(COMMON / CPP_HEADER, folder / CPP_HEADER)
        records.append({"language": program.language, "folder": program.folder, "loads": list(program.loads),
                        "build": list(program.build), "run": [render(c, variables, "run") for c in program.run],
                        "checked": program.checked, "inputs": [s.name for s in specs],
                        "outputs": [s.name for s in outputs],
                        "files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())})
    (deploy / "programs.json").write_text(json.dumps({"backend": backend.name, "target": target.id,
                                                       "programs": records}, indent=2) + "\n")
    (deploy / "README.md").write_text(_readme(backend.name, artifact, target, model_name, records))
    return records


def _write_example(folder: Path, inputs: tuple[TensorSpec, ...]) -> None:
    """One ``.npy`` per input to run the programs on: a fixed pseudo-random pattern of the compiled shape."""
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for spec in inputs:
        shape = tuple(max(dim(d), 1) for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, shape).astype(dtype)
        else:
            value = rng.integers(0, 4, shape).astype(dtype)
        np.save(folder / f"{spec.name}.npy", value)


def _readme(backend: str, artifact: Artifact, target: Target, model_name: str, records: list[dict[str, Any]]) -> str:
    out = [f"# Deploying {model_name} ({backend}, {target.id})", "",
           f"Programs that load `artifact/` with {backend}'s own runtime, without onnxsmith: each reads one `.npy` "
           "per input and writes one `.npy` per output into the output folder, named after the output. "
           "`example/` holds an input for each model input to try them on; compare with "
           "`onnxsmith run BUNDLE --input deploy/example --output out.npz`.", ""]
    for r in records:
        out += [f"## {r['language']} (`deploy/{r['folder']}/`)", "",
                f"Loads: {', '.join(f'`artifact/{f}`' for f in r['loads'])}. Arguments: `ARTIFACT_DIR OUTPUT_DIR` "
                f"then {' '.join(f'`{n}.npy`' for n in r['inputs'])}.", ""]
        if r["build"]:
            out += ["Build (in this folder):", "", "```", *r["build"], "```", ""]
        out += ["Run (in this folder):", "", "```", *r["run"], "```", "", f"Here: {r['checked']}", ""]
    return "\n".join(out)
