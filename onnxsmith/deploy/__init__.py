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

User strings (tensor names, the model's file name, the target's id and options) reach the sources only through
:mod:`onnxsmith.deploy.quoting`: as literals of the template's language, or as one plain line in comments and
titles; file names come from :func:`quoting.file_stems`, rendered into each tensor's spec, so no program derives a
path from a name.

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
from onnxsmith.deploy import quoting

if TYPE_CHECKING:
    from onnxsmith.model import TensorSpec
    from onnxsmith.plugin import Artifact, Compiler, DeployProgram
    from onnxsmith.targets import Target

COMMON = Path(__file__).parent / "common"
CPP_HEADER = "deploy.hpp"
FOLDER = "deploy"
PLACEHOLDER = re.compile(r"@@([A-Z0-9_]+)@@")
TEMPLATE_SUFFIX = ".in"
LITERALS = ("CPP_", "PY_", "SWIFT_")
PLAIN = re.compile(r"[A-Za-z0-9 ._,:/+=@%-]*")
"""What a placeholder outside :data:`LITERALS` may hold: :func:`quoting.text`'s characters."""


def npy_descr(dtype: str) -> str:
    """The ``.npy`` header's descr of an element type, e.g. ``float32`` -> ``<f4``."""
    import numpy as np

    return np.dtype(dtype).str


def dim(value: object) -> int:
    """A declared dimension for a template: its size, or -1 when dynamic."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def core_variables(title: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                   input_files: Mapping[str, str], output_files: Mapping[str, str]) -> dict[str, str]:
    """The placeholders every template may use: ``TITLE`` (plain text, one line), the inputs and outputs as
    literals of each language (name, file stem, dtype, shape) and the usage line and example files, which name the
    inputs' file stems only (``input_files``, ``output_files``: name -> stem, from :func:`quoting.file_stems`)."""

    def cpp(specs: tuple[TensorSpec, ...], files: Mapping[str, str]) -> str:
        return ", ".join(f"{{{quoting.cpp(s.name)}, {quoting.cpp(files[s.name])}, {quoting.cpp(npy_descr(s.dtype))}, "
                         f"{{{', '.join(str(dim(d)) for d in s.shape)}}}}}" for s in specs)

    def py(specs: tuple[TensorSpec, ...], files: Mapping[str, str]) -> str:
        return quoting.python([(s.name, files[s.name], s.dtype, [dim(d) for d in s.shape]) for s in specs])

    def swift(specs: tuple[TensorSpec, ...], files: Mapping[str, str]) -> str:
        return ", ".join(f"(name: {quoting.swift(s.name)}, file: {quoting.swift(files[s.name])}, "
                         f"descr: {quoting.swift(npy_descr(s.dtype))}, shape: [{', '.join(str(dim(d)) for d in s.shape)}])"
                         for s in specs)

    return {"TITLE": quoting.text(title), "ONNXSMITH_VERSION": quoting.text(onnxsmith.__version__),
            "CPP_INPUTS": cpp(inputs, input_files), "CPP_OUTPUTS": cpp(outputs, output_files),
            "PY_INPUTS": py(inputs, input_files), "PY_OUTPUTS": py(outputs, output_files),
            "SWIFT_INPUTS": swift(inputs, input_files),
            "SWIFT_OUTPUTS": ", ".join(f"(name: {quoting.swift(s.name)}, file: {quoting.swift(output_files[s.name])})"
                                       for s in outputs),
            "INPUT_USAGE": " ".join(f"{input_files[s.name]}.npy" for s in inputs),
            "INPUT_FILES": " ".join(quoting.shell(f"../example/{input_files[s.name]}.npy") for s in inputs)}


def render(text: str, variables: Mapping[str, str], where: str) -> str:
    """``text`` with its ``@@NAME@@`` placeholders replaced. A ``CPP_``, ``PY_`` or ``SWIFT_`` placeholder holds a
    literal of that language, made by :mod:`onnxsmith.deploy.quoting`; any other holds plain text (comments,
    messages inside literals, shell words, identifiers), and one that holds more (a quote, a backslash, a
    parenthesis, a newline...) is refused: a user string that reached it unescaped."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise KeyError(f"{where}: the template uses @@{name}@@, which no one defines")
        got = variables[name]
        if not name.startswith(LITERALS) and not PLAIN.fullmatch(got):
            raise ValueError(f"{where}: @@{name}@@ would hold {got!r}, which is not plain text; pass it through "
                             "onnxsmith.deploy.quoting")
        return got

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
    examples = example_inputs or inputs
    input_files = quoting.file_stems(s.name for s in examples)
    output_files = quoting.file_stems(s.name for s in outputs)
    _write_example(deploy / "example", examples, input_files)
    records = []
    for program in programs:
        specs = program.inputs if program.inputs is not None else inputs
        files = input_files if all(s.name in input_files for s in specs) else quoting.file_stems(s.name for s in specs)
        title = f"{program.language} deployment program for {model_name}: {backend.name} " \
                f"{artifact.backend_version}, {artifact.device}, {artifact.precision_used}, target {target.id}"
        variables = {**core_variables(title, specs, outputs, files, output_files), **program.variables}
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
                        "input_files": {s.name: f"{files[s.name]}.npy" for s in specs},
                        "output_files": {s.name: f"{output_files[s.name]}.npy" for s in outputs},
                        "files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())})
    (deploy / "programs.json").write_text(json.dumps({"backend": backend.name, "target": target.id,
                                                       "example": {s.name: f"example/{input_files[s.name]}.npy"
                                                                   for s in examples},
                                                       "programs": records}, indent=2) + "\n")
    (deploy / "README.md").write_text(_readme(backend.name, artifact, target, model_name, records))
    return records


def _write_example(folder: Path, inputs: tuple[TensorSpec, ...], files: Mapping[str, str]) -> None:
    """One ``.npy`` per input to run the programs on (``files[name].npy``): a fixed pseudo-random pattern of the
    compiled shape."""
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
        np.save(folder / f"{files[spec.name]}.npy", value)


def _readme(backend: str, artifact: Artifact, target: Target, model_name: str, records: list[dict[str, Any]]) -> str:
    code = quoting.markdown_code
    out = [f"# Deploying {quoting.text(model_name)} ({backend}, {quoting.text(target.id)})", "",
           f"Programs that load `artifact/` with {backend}'s own runtime, without onnxsmith: each reads one `.npy` "
           "per input and writes one `.npy` per output into the output folder. A file is named after its tensor "
           "where the name is a safe file name (only letters, digits, `.`, `_`, `-`); any other name gets its safe "
           "characters and a short hash of the name, and `programs.json` maps each name to its file "
           "(`input_files`, `output_files`). `example/` holds an input for each model input to try them on; "
           "compare with `onnxsmith run BUNDLE --input deploy/example --output out.npz`.", ""]
    for r in records:
        out += [f"## {r['language']} (`deploy/{r['folder']}/`)", "",
                f"Loads: {', '.join(code(f'artifact/{f}') for f in r['loads'])}. Arguments: `ARTIFACT_DIR "
                f"OUTPUT_DIR` then {' '.join(code(f) for f in r['input_files'].values())}.", ""]
        renamed = {n: f for n, f in {**r["input_files"], **r["output_files"]}.items() if f != f"{n}.npy"}
        if renamed:
            out += ["Files of tensors whose names are not safe file names:", "",
                    *[f"- {code(n)}: {code(f)}" for n, f in renamed.items()], ""]
        if r["build"]:
            out += ["Build (in this folder):", "", "```", *r["build"], "```", ""]
        out += ["Run (in this folder):", "", "```", *r["run"], "```", "", f"Here: {r['checked']}", ""]
    return "\n".join(out)
