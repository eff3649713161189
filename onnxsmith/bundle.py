"""The bundle: the deployable product of ``compile``.

Layout::

    BUNDLE/
      manifest.json        what it is and where it runs; sha256 of every file below
      artifact/            the backend's files (engine, IR + blob, .so, .mlpackage...)
      reference/model.onnx the fp32 ONNX it was compiled from (reference for validation and the baseline)
      profile.json         written by `onnxsmith profile`
      validation.json      written by `onnxsmith validate`
      examples/            the worst validation examples (inputs + both outputs)
      report.md            the evidence report, rebuilt from the three JSON files
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BundleError, DataError
from onnxsmith.model import TensorSpec
from onnxsmith.plugin import Artifact, Runner

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.targets import Target

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
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

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> Bundle:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"'{path}' is not an onnxsmith bundle", "it has no manifest.json",
                              "give the directory written by 'onnxsmith compile -o DIR'")
        try:
            manifest = json.loads(manifest_path.read_text())
            manifest["files"], manifest["backend"]  # noqa: B018 - required keys
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"bundle '{path}' has a damaged manifest.json", str(exc),
                              "compile the bundle again") from exc
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise BundleError(f"bundle '{path}' was written by a newer onnxsmith",
                              f"format {manifest['format_version']} > {FORMAT_VERSION}", "upgrade onnxsmith")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every file against its sha256 in the manifest."""
        from onnxsmith.cache import sha256_file

        for name, digest in self.manifest["files"].items():
            file = self.path / name
            if not file.is_file():
                raise BundleError(f"bundle '{self.path}' is incomplete", f"'{name}' is missing",
                                  "copy the whole bundle directory, or compile again")
            if sha256_file(file) != digest:
                raise BundleError(f"bundle '{self.path}' was modified", f"'{name}' does not match its sha256 in "
                                  "manifest.json", "compile the bundle again; never edit artifact files by hand")

    # --- what it is --------------------------------------------------------------------------------------------
    @property
    def artifact(self) -> Artifact:
        return Artifact.from_json(self.manifest["artifact"])

    @property
    def artifact_dir(self) -> Path:
        return self.path / "artifact"

    @property
    def reference_model(self) -> Path:
        return self.path / self.manifest["reference"]

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(s) for s in self.manifest["model"]["signature"]["inputs"])

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_json(s) for s in self.manifest["model"]["signature"]["outputs"])

    def target(self) -> Target:
        return target_from_json(self.manifest["target"])

    def artifact_size(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.manifest["files"] if name.startswith("artifact/"))

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, data: Any) -> Path:
        write_json(self.path / name, data)
        return self.path / name

    # --- running it --------------------------------------------------------------------------------------------
    def load_runner(self) -> Runner:
        """Load the artifact with its backend, after checking the backend's version matches the manifest."""
        from onnxsmith.registry import get_backend

        backend = get_backend(self.backend)
        backend.check_environment()
        have, built = backend.version(), self.manifest["backend_version"]
        if have != built and not self.manifest["artifact"].get("metadata", {}).get("portable_across_versions"):
            raise BundleError(f"bundle '{self.path}' was built with {self.backend} {built}",
                              f"{have} is installed, and compiled artifacts are version-specific",
                              f"install {self.backend}=={built}, or compile the bundle again")
        runs = backend.runs_here(self.target())
        if not runs:
            from onnxsmith.errors import UnsupportedError

            raise UnsupportedError(f"bundle for {self.manifest['target']['id']} cannot run here", runs.reason,
                                   runs.hint)
        return backend.load(self.artifact, self.artifact_dir, self.target())

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """One-line errors for missing, misnamed, mis-shaped or mis-typed inputs."""
        import numpy as np

        specs = self.inputs
        names = [s.name for s in specs]
        unknown = [k for k in feeds if k not in names]
        if unknown:
            raise DataError(f"unknown input '{unknown[0]}'", f"the model's inputs are {', '.join(names)}")
        for spec in specs:
            if spec.name not in feeds:
                raise DataError(f"missing input '{spec.name}'", f"the model takes {spec.shape_text()} {spec.dtype}")
            arr = np.asarray(feeds[spec.name])
            if tuple(arr.shape) != tuple(spec.shape):
                raise DataError(f"input '{spec.name}' has the wrong shape",
                                f"got {'x'.join(map(str, arr.shape)) or 'scalar'}, the compiled model takes "
                                f"{spec.shape_text()}", "reshape it, or compile again with --shape")
            if arr.dtype.name != spec.dtype:
                raise DataError(f"input '{spec.name}' has the wrong dtype", f"got {arr.dtype}, expected {spec.dtype}",
                                f"convert it with .astype('{spec.dtype}')")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference (inputs checked against the compiled signature)."""
        self.check_inputs(inputs)
        if self._runner is None:
            self._runner = self.load_runner()
            self._runner.__enter__()
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
