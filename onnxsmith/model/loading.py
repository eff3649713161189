"""Load a model: read it safely, check it, fix its shapes and fingerprint it (:func:`load_model`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import ModelError, first_line
from onnxsmith.model.checks import _check_external_data, _check_graph, _check_input_sizes
from onnxsmith.model.saving import save_model
from onnxsmith.model.shapes import ShapeRange, ShapeValue, _fix_shapes, specs_at
from onnxsmith.model.specs import TensorSpec, _opset

if TYPE_CHECKING:
    import onnx


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass
class LoadedModel:
    """A checked ONNX model with static input shapes, ready for the optimize and compile stages."""

    source: Path
    """The file the user gave."""
    proto: onnx.ModelProto
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    fingerprint: str
    """sha256 over the model file and its external data, in the order the graph names them."""
    shape_overrides: dict[str, tuple[int, ...]]
    notes: list[str] = dataclasses.field(default_factory=list)
    data_files: tuple[Path, ...] = ()
    """The external-data files the model's tensors were read from (resolved, inside the model's folder)."""
    batch_inputs: tuple[str, ...] | None = None
    """The inputs whose first dim was dynamic in the original model (their batch); ``None`` when none was."""
    shape_ranges: dict[str, ShapeRange] = dataclasses.field(default_factory=dict)
    """Inputs kept dynamic within bounds (``--shape NAME=MIN:OPT:MAX``, ``--batch``); their varying dims are
    symbols in :attr:`inputs` and in the saved model."""
    export: dict[str, Any] | None = None
    """For a model exported from PyTorch (:mod:`onnxsmith.torchin`): the export's record and check figures."""
    _path: Path | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def path(self) -> Path:
        """A file on disk holding exactly this model (with fixed shapes); backends read this."""
        if self._path is None:
            from onnxsmith.build.cache import owner_tag, sweep_once

            sweep_once(Path(tempfile.gettempdir()))
            self._tmp = tempfile.TemporaryDirectory(prefix=f"onnxsmith-model-{owner_tag()}-")
            self._path = save_model(self.proto, Path(self._tmp.name) / f"{self.name}.onnx")
        return self._path

    def __getstate__(self) -> dict[str, Any]:
        """For the compiling child process (:mod:`onnxsmith.build.isolate`): it reads the copy on disk this process
        owns, and never deletes it."""
        state = dict(self.__dict__)
        state["_tmp"] = None
        if state["_path"] is not None:  # the child loads the saved copy only if its backend needs the proto,
            state.pop("proto", None)  # so it need not import onnx (1-2 s) to compile with OpenVINO
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        if name == "proto" and self.__dict__.get("_path") is not None:
            import onnx

            self.proto = onnx.load_model(str(self._path))
            return self.proto
        raise AttributeError(name)

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def inputs_at(self, point: str = "opt") -> tuple[TensorSpec, ...]:
        """The inputs with every ranged one at its ``min``, ``opt`` or ``max`` shape (all static)."""
        return specs_at(self.inputs, self.shape_ranges, point)

    def signature(self) -> dict[str, Any]:
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}


def load_model(path: str | os.PathLike[str], shapes: Mapping[str, ShapeValue] | None = None,
               default_batch: int | None = 1, check: bool = True,
               batch: tuple[int, int, int] | None = None) -> LoadedModel:
    """Load, check and shape-infer ``path``; ``shapes`` fixes dynamic input dimensions or bounds them
    (:class:`ShapeRange`); ``batch`` (min, opt, max) does so for the first dim of every input whose first dim is
    dynamic and that ``shapes`` does not name (``--batch``).

    A dynamic first (batch) dimension left unset becomes ``default_batch`` with a note; any other dynamic
    dimension without an override is an error naming it (pass ``default_batch=None`` to keep shapes dynamic).
    A dim that shares its symbol with a ranged dim of another input gets the same range.
    """
    import onnx
    from google.protobuf.message import DecodeError

    source = Path(path)
    if not source.is_file():
        raise ModelError(f"cannot load model '{source}'", "file not found" if not source.exists() else "not a file")
    with open(source, "rb") as f:
        head = f.read(64)
    if head[:1] in (b"{", b"<") or head.startswith((b"PK", b"\x89HDF", b"\x80\x02", b"GGUF")):
        raise ModelError(f"cannot load model '{source}'", "this is not an ONNX file (it looks like JSON, XML, a zip, "
                         "HDF5, a pickle or GGUF)", "export the model to ONNX first (torch.onnx.export)")
    try:
        proto = onnx.load_model(str(source), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"cannot load model '{source}'", f"not a valid ONNX protobuf ({first_line(exc)})",
                         "is the file truncated? re-export or copy it again") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"cannot load model '{source}'", "it parsed as an empty graph; this is not an ONNX model",
                         "check the file; export the model to ONNX first")
    data_files = _check_external_data(proto, source.parent)
    if data_files:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(source.parent))
        except (onnx.checker.ValidationError, ValueError, OSError) as exc:
            raise ModelError(f"cannot load the external data of '{source}'", first_line(exc),
                             "keep the data files next to the model, as plain files") from exc
    _check_graph(proto, source)
    fingerprint = _sha256_files([source, *data_files])
    if check:
        try:
            if proto.ByteSize() < 2_000_000_000:
                onnx.checker.check_model(proto)
            else:
                onnx.checker.check_model(str(source))
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"invalid ONNX model '{source}'", f"the ONNX checker says: {first_line(exc)}",
                             "fix the exporter or run onnx.checker.check_model for details") from exc
    model = LoadedModel(source=source, proto=proto, inputs=(), outputs=(), opset=_opset(proto),
                        fingerprint=fingerprint, data_files=tuple(data_files),
                        shape_overrides={k: v for k, v in (shapes or {}).items() if not isinstance(v, ShapeRange)})
    _fix_shapes(model, dict(shapes or {}), default_batch, batch)
    _check_input_sizes(model)
    return model
