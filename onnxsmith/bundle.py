"""The bundle: the deployable product of ``compile``.

Layout::

    BUNDLE/
      manifest.json        what it is and where it runs; sha256 of every file compile wrote (the next three)
      artifact/            the backend's files (engine, IR + blob, .so, .mlpackage...)
      reference/model.onnx the fp32 ONNX it was compiled from (reference for validation and the baseline)
      deploy/              programs that run the artifact without onnxsmith, with example inputs
      records.json         sha256 of every file written later (the rest below), rewritten by each writer
      profile.json         written by `onnxsmith profile`
      validation.json      written by `onnxsmith validate`
      examples/            the worst validation examples (inputs + both outputs)
      serving/             written by `onnxsmith serving` (and serve-check's result)
      report.md            the evidence report, rebuilt from the three JSON files

``Bundle.open`` checks ``artifact/`` and ``reference/`` (what it loads); ``onnxsmith verify`` checks every file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BundleError, DataError, first_line
from onnxsmith.model import TensorSpec
from onnxsmith.model.shapes import ShapeRange, specs_at
from onnxsmith.plugin import Artifact, Runner, backend_call

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.targets import Target

MANIFEST = "manifest.json"
FORMAT_VERSION = 3
"""2: ``manifest.sha256`` (and ``manifest.sig`` with a key) cover the manifest itself. 3: ``files`` lists
``deploy/`` too, and ``records.json`` seals the records written after compile."""
CHECKED_DIRS = ("artifact", "reference")
"""Every file under these is listed in ``manifest.json`` with its sha256; nothing else may sit there. These are
what :meth:`Bundle.open` checks: the files a backend loads."""


def confined(root: Path, name: object, where: str) -> Path:
    """``root / name`` for a manifest path: a relative POSIX path without '..', and no symbolic link on the way."""
    if not isinstance(name, str) or not name or "\0" in name or name.startswith(("/", "\\")) or "\\" in name or ":" in name \
            or os.path.isabs(name) or any(part in ("..", ".", "") for part in name.split("/")):
        raise BundleError(f"{where} is unsafe", f"manifest.json names the path {name!r}, which leaves the bundle "
                          "or is not a plain relative path", "compile the bundle again; never edit manifest.json")
    path = root
    for part in name.split("/"):
        path = path / part
        if path.is_symlink():
            raise BundleError(f"{where} is unsafe", f"'{name}' goes through the symbolic link '{path.name}'",
                              "copy the bundle with its files, not links (cp -r, not cp -s)")
    return path


def _check_manifest(manifest: Any, where: Path) -> None:
    """The manifest's structure: required keys of the right types; artifact files and reference checksummed."""

    def bad(why: str) -> BundleError:
        return BundleError(f"bundle '{where}' has a damaged manifest.json", why, "compile the bundle again")

    if not isinstance(manifest, dict):
        raise bad("it is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"'format_version' is {version!r}, not an integer")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle '{where}' was written by a newer onnxsmith",
                          f"format {version} > {FORMAT_VERSION}", "upgrade onnxsmith")
    for key, kind in (("files", dict), ("backend", str), ("backend_version", str), ("artifact", dict),
                      ("model", dict), ("target", dict), ("reference", str), ("precision_used", str)):
        if not isinstance(manifest.get(key), kind):
            raise bad(f"'{key}' is missing or not a{'n object' if kind is dict else ' string'}")
    files = manifest["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise bad("'files' must map paths to sha256 strings")
    artifact_files = manifest["artifact"].get("files")
    if not isinstance(artifact_files, list) or not artifact_files or not all(isinstance(f, str) for f in artifact_files):
        raise bad("'artifact.files' must be a non-empty list of paths")
    for name in artifact_files:
        if f"artifact/{name}" not in files:
            raise BundleError(f"bundle '{where}' is unsafe", f"artifact file {name!r} has no sha256 in 'files'",
                              "compile the bundle again; never edit manifest.json")
    if manifest["reference"] not in files:
        raise BundleError(f"bundle '{where}' is unsafe", f"the reference {manifest['reference']!r} has no sha256 in "
                          "'files'", "compile the bundle again; never edit manifest.json")
    signature = manifest["model"].get("signature")
    if not isinstance(signature, dict) or not all(isinstance(signature.get(k), list) for k in ("inputs", "outputs")):
        raise bad("'model.signature' must hold 'inputs' and 'outputs' lists")
    from onnxsmith.model.specs import ONNX_DTYPES

    for kind in ("inputs", "outputs"):
        for spec in signature[kind]:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                    or not isinstance(spec.get("shape"), list):
                raise bad(f"'model.signature.{kind}' holds {str(spec)[:60]!r}, not a name, dtype and shape")
            wrap = spec.get("wrap", [])
            if not isinstance(wrap, list) or not all(w in ("sequence", "optional") for w in wrap):
                raise bad(f"'model.signature.{kind}' gives '{spec['name']}' the containers {str(wrap)[:60]!r}")
            if spec.get("dtype") not in ONNX_DTYPES.values():
                raise BundleError(f"bundle '{where}' cannot be used", f"{kind[:-1]} '{spec['name']}' has element type "
                                  f"{spec.get('dtype')!r}, which onnxsmith cannot feed or compare",
                                  "compile a model with numeric inputs and outputs")
    if not isinstance(manifest["target"].get("id"), str):
        raise bad("'target.id' is missing")
    ranges = manifest.get("shape_ranges", {})
    names = {spec["name"]: len(spec["shape"]) for spec in signature["inputs"]}
    if not isinstance(ranges, dict):
        raise bad("'shape_ranges' is not an object")
    for name, bounds in ranges.items():
        points = [bounds.get(k) if isinstance(bounds, dict) else None for k in ShapeRange.POINTS]
        if name not in names or not all(isinstance(p, list) and len(p) == names[name] and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in p) for p in points) \
                or not all(a <= b <= c for a, b, c in zip(*points)):  # type: ignore[misc]
            raise bad(f"'shape_ranges.{name}' is not a min <= opt <= max range of an input's dims")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default, allow_nan=False) + "\n")
    os.replace(tmp, path)


def json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def target_from_json(data: Mapping[str, Any]) -> Target:
    from onnxsmith.targets import Peak, Requirements, Target

    values = dict(data)
    values["peak"] = Peak(**data["peak"])
    req = dict(data["requires"])
    req["cpu_flags"] = tuple(req.get("cpu_flags", ()))
    values["requires"] = Requirements(**req)
    for key in ("backends", "precisions"):
        values[key] = tuple(values[key])
    return Target(**values)


class Bundle:
    """An opened bundle. ``Bundle.open(path)`` verifies checksums; ``run(inputs)`` runs it."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._runner: Runner | None = None
        self._written: set[str] = set()

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> Bundle:
        given = Path(path)
        path = given.resolve()
        manifest_path = path / MANIFEST
        if manifest_path.is_symlink() or not manifest_path.is_file():
            raise BundleError(f"'{given}' is not an onnxsmith bundle", "it has no manifest.json" if not
                              manifest_path.is_symlink() else "its manifest.json is a symbolic link",
                              "give the directory written by 'onnxsmith compile -o DIR'")
        raw = manifest_path.read_bytes()
        if verify:  # before any path in it is looked at
            from onnxsmith.signing import verify_manifest

            verify_manifest(path, raw)
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise BundleError(f"bundle '{given}' has a damaged manifest.json", first_line(exc),
                              "compile the bundle again") from exc
        _check_manifest(manifest, given)
        bundle = cls(path, manifest)
        if verify:
            bundle.verify_files()
        return bundle

    def resolve(self, name: str) -> Path:
        """The file ``name`` (a manifest path) inside the bundle: relative, no '..', no symbolic link on the way."""
        return confined(self.path, name, f"bundle '{self.path}'")

    def verify(self) -> None:
        """Check the manifest's own checksum (and signature, when a key is configured), then its files."""
        from onnxsmith.signing import verify_manifest

        verify_manifest(self.path, (self.path / MANIFEST).read_bytes())
        self.verify_files()

    def verify_files(self) -> None:
        """Every file under ``artifact/`` and ``reference/`` against its sha256: all listed, none missing, none
        extra, none a symbolic link."""
        from onnxsmith.build.cache import sha256_file

        listed = self.manifest["files"]
        for name, digest in listed.items():
            file = self.resolve(name)
            if name.split("/", 1)[0] not in CHECKED_DIRS:
                continue  # deploy/: nothing open loads comes from there; `onnxsmith verify` hashes it
            if not file.is_file():
                raise BundleError(f"bundle '{self.path}' is incomplete", f"'{name}' is missing",
                                  "copy the whole bundle directory, or compile again")
            if sha256_file(file) != digest:
                raise BundleError(f"bundle '{self.path}' was modified", f"'{name}' does not match its sha256 in "
                                  "manifest.json", "compile the bundle again; never edit artifact files by hand")
        for top in CHECKED_DIRS:
            root = self.path / top
            if root.is_symlink():
                raise BundleError(f"bundle '{self.path}' is unsafe", f"'{top}/' is a symbolic link",
                                  "copy the bundle with its files, not links (cp -r, not cp -s)")
            for file in sorted(root.rglob("*")) if root.is_dir() else ():
                rel = file.relative_to(self.path).as_posix()
                if file.is_symlink():
                    raise BundleError(f"bundle '{self.path}' is unsafe", f"'{rel}' is a symbolic link",
                                      "copy the bundle with its files, not links (cp -r, not cp -s)")
                if file.is_file() and rel not in listed:
                    raise BundleError(f"bundle '{self.path}' was modified", f"'{rel}' is not listed in "
                                      "manifest.json, and a backend could load it unchecked",
                                      "remove it, or compile the bundle again")

    # --- what it is --------------------------------------------------------------------------------------------
    @property
    def artifact(self) -> Artifact:
        return Artifact.from_json(self.manifest["artifact"])

    @property
    def artifact_dir(self) -> Path:
        return self.path / "artifact"

    @property
    def reference_model(self) -> Path:
        return self.resolve(self.manifest["reference"])

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(s) for s in self.manifest["model"]["signature"]["inputs"])

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(s) for s in self.manifest["model"]["signature"]["outputs"])

    @property
    def batch_inputs(self) -> tuple[str, ...] | None:
        """The inputs whose first dim was dynamic in the original model (``None``: none, or not recorded)."""
        names = self.manifest["model"].get("batch_inputs")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        return tuple(names)

    @property
    def shape_ranges(self) -> dict[str, ShapeRange]:
        """Inputs compiled dynamic within bounds (``--shape NAME=MIN:OPT:MAX``); empty for a static bundle."""
        return {k: ShapeRange.from_json(v) for k, v in (self.manifest.get("shape_ranges") or {}).items()}

    def inputs_at(self, point: str = "opt") -> tuple[TensorSpec, ...]:
        """The inputs with every ranged one at its ``min``, ``opt`` or ``max`` shape (all static)."""
        return specs_at(self.inputs, self.shape_ranges, point)

    def target(self) -> Target:
        return target_from_json(self.manifest["target"])

    def artifact_size(self) -> int:
        return sum(self.resolve(name).stat().st_size for name in self.manifest["files"] if name.startswith("artifact/"))

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, data: Any) -> Path:
        write_json(self.path / name, data)
        self.wrote(name)
        return self.path / name

    def wrote(self, *names: str) -> None:
        """Note records (files or folders) written into the bundle; the next :meth:`seal_records` (the report's
        rebuild calls it) lists them."""
        self._written.update(names)

    def seal_records(self, *names: str) -> None:
        """Rewrite ``records.json``: the files under ``names`` and under every record noted by :meth:`wrote`
        hashed afresh (those gone are dropped), the rest of the list kept as it was, so an edit to a record this
        writer did not write still shows. Written atomically (see :func:`onnxsmith.signing.seal_records`)."""
        from onnxsmith.build.cache import sha256_file
        from onnxsmith.signing import read_records, seal_records

        raw = (self.path / MANIFEST).read_bytes()
        fresh = sorted(self._written | set(names))
        try:
            files = read_records(self.path, raw)
        except BundleError:
            files = {}  # a damaged list: rebuilt from what is written now; verify reports the rest as unlisted
        files = {k: v for k, v in files.items() if not any(k == n or k.startswith(n.rstrip("/") + "/") for n in fresh)}
        for name in fresh:
            path = confined(self.path, name, f"bundle '{self.path}'")
            found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() \
                else []
            for file in found:
                if not file.is_symlink():
                    files[file.relative_to(self.path).as_posix()] = sha256_file(file)
        seal_records(self.path, raw, files)
        self._written.clear()

    # --- running it --------------------------------------------------------------------------------------------
    def load_runner(self, emulate: bool = False) -> Runner:
        """Load the artifact with its backend, after checking the backend's version matches the manifest.

        With ``emulate``, a bundle that cannot run here is loaded through the backend's
        :meth:`~onnxsmith.plugin.Compiler.load_emulated` runner when it has one (``validate`` only: such a runner's
        outputs check the compiled program, never the vendor's kernels, and are never timed)."""
        from onnxsmith.registry import get_backend

        backend = get_backend(self.backend)
        backend.check_environment()
        have, built = backend.version(), self.manifest["backend_version"]
        if have != built and not backend.portable_across_versions(self.artifact):
            raise BundleError(f"bundle '{self.path}' was built with {self.backend} {built}",
                              f"{have} is installed, and compiled artifacts are version-specific",
                              f"install {self.backend}=={built}, or compile the bundle again")
        runs = backend.runs_here(self.target())
        if not runs:
            from onnxsmith.errors import UnsupportedError

            if emulate:
                try:
                    with backend_call(self.backend, "evaluate the artifact's program here"):
                        emulated = backend.load_emulated(self.artifact, self.artifact_dir, self.target())
                except UnsupportedError as exc:
                    raise UnsupportedError(f"bundle for {self.manifest['target']['id']} cannot run here",
                                           f"{runs.reason}; nor can its program be evaluated here: {exc.why}",
                                           exc.hint or runs.hint) from exc
                if emulated is not None:
                    return emulated
            raise UnsupportedError(f"bundle for {self.manifest['target']['id']} cannot run here", runs.reason,
                                   runs.hint)
        with backend_call(self.backend, "load the artifact"):
            return backend.load(self.artifact, self.artifact_dir, self.target())

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """One-line errors for missing, misnamed, mis-shaped or mis-typed inputs."""
        import numpy as np

        specs = self.inputs
        ranges = self.shape_ranges
        symbols: dict[str, tuple[str, int]] = {}
        names = [s.name for s in specs]
        unknown = [k for k in feeds if k not in names]
        if unknown:
            raise DataError(f"unknown input '{unknown[0]}'", f"the model's inputs are {', '.join(names)}")
        for spec in specs:
            if spec.name not in feeds:
                raise DataError(f"missing input '{spec.name}'", f"the model takes {spec.shape_text()} {spec.dtype}")
            if not spec.numeric:
                _check_feed(feeds[spec.name], spec)
                continue
            arr = np.asarray(feeds[spec.name])
            if spec.name in ranges:
                outside = ranges[spec.name].outside(tuple(arr.shape))
                if outside:
                    bounds = ranges[spec.name]
                    raise DataError(f"input '{spec.name}' has shape {'x'.join(map(str, arr.shape)) or 'scalar'}, "
                                    f"outside the compiled range {bounds.bounds_text()}", outside,
                                    "split or reshape it to fit, or compile again with a wider --shape "
                                    "NAME=MIN:OPT:MAX")
            elif tuple(arr.shape) != tuple(spec.shape):
                raise DataError(f"input '{spec.name}' has the wrong shape",
                                f"got {'x'.join(map(str, arr.shape)) or 'scalar'}, the compiled model takes "
                                f"{spec.shape_text()}", "reshape it, or compile again with --shape")
            for dim, got in zip(spec.shape, arr.shape) if spec.name in ranges else ():
                if isinstance(dim, str) and dim:  # a symbol shared by several inputs: one size in one request
                    seen = symbols.setdefault(dim, (spec.name, int(got)))
                    if seen[1] != got:
                        raise DataError(f"inputs '{seen[0]}' and '{spec.name}' disagree on dim '{dim}'",
                                        f"{seen[1]} vs {got}; the model takes one size for it per run",
                                        "give every input the same size on that dim")
            if arr.dtype.name != spec.dtype:
                raise DataError(f"input '{spec.name}' has the wrong dtype", f"got {arr.dtype}, expected {spec.dtype}",
                                f"convert it with .astype('{spec.dtype}')")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one inference (inputs checked against the compiled signature). String tensors are numpy text
        arrays, sequences lists, an absent optional ``None`` (:mod:`onnxsmith.data.values`)."""
        self.check_inputs(inputs)
        if self._runner is None:
            self._runner = self.load_runner()
            self._runner.__enter__()
        with backend_call(self.backend, "run"):
            return self._runner.run(inputs)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.__exit__(None, None, None)
            self._runner = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return f"Bundle({str(self.path)!r}, backend={m['backend']!r}, target={m['target']['id']!r}, " \
               f"precision={m['artifact']['precision_used']!r})"


def _check_feed(value: Any, spec: TensorSpec) -> None:
    """A string tensor (a text array of the compiled shape), or a sequence or optional value."""
    import numpy as np

    from onnxsmith.data.values import check_value

    if spec.wrap:
        check_value(value, spec, "input")
        return
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype.kind not in "UO":  # from Python, an object array of str is fine (nothing is unpickled)
        raise DataError(f"input '{spec.name}' has the wrong dtype", f"got {arr.dtype}, the input takes strings",
                        "give a numpy unicode array: np.array([...], dtype=str)")
    if tuple(arr.shape) != tuple(spec.shape):
        raise DataError(f"input '{spec.name}' has the wrong shape", f"got {'x'.join(map(str, arr.shape)) or 'scalar'}"
                        f", the compiled model takes {spec.shape_text()}", "reshape it, or compile again with --shape")


def verify_bundle(path: str | os.PathLike[str]) -> dict[str, int]:
    """Check every file of a bundle: the manifest's checksum (and signature, with ``ONNXSMITH_BUNDLE_KEY``), the
    records' list likewise, each listed file's sha256, and that no file is there that neither list names. Returns
    how many files were checked; raises :class:`~onnxsmith.errors.CheckFailedError` naming the mismatches."""
    from onnxsmith.build.cache import sha256_file
    from onnxsmith.errors import CheckFailedError
    from onnxsmith.signing import SEAL_FILES, read_records, verify_manifest

    given = Path(path)
    bundle = Bundle.open(given, verify=False)  # not a bundle, or an unreadable manifest: bad input (exit 2)
    root = bundle.path
    raw = (root / MANIFEST).read_bytes()

    def failed(why: str) -> CheckFailedError:
        return CheckFailedError(f"bundle '{given}' does not match its seal", why,
                                "compile the bundle again, or get it again from where it was made")

    try:
        verify_manifest(root, raw)
        records = read_records(root, raw)
    except BundleError as exc:
        raise failed(exc.why) from exc
    if bundle.manifest["format_version"] < 3:
        raise failed(f"it is format {bundle.manifest['format_version']}, whose seal covers artifact/ and "
                     "reference/ only")
    listed = {**records, **bundle.manifest["files"]}
    problems: list[str] = []
    for name, digest in sorted(listed.items()):
        try:
            file = bundle.resolve(name)
        except BundleError as exc:
            problems.append(exc.why)
            continue
        if not file.is_file():
            problems.append(f"'{name}' is missing")
        elif sha256_file(file) != digest:
            problems.append(f"'{name}' was edited")
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).as_posix()
        if file.is_symlink():
            problems.append(f"'{rel}' is a symbolic link")
        elif file.is_file() and rel not in listed and rel not in SEAL_FILES:
            problems.append(f"'{rel}' was added")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise failed("; ".join(problems[:3]) + more)
    return {"files": len(listed), "compiled": len(bundle.manifest["files"]), "records": len(records)}
