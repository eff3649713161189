"""The entry points: :func:`open_model` (what every verb calls), the cached export of a PyTorch model, the export
of a module in hand, and the export record in one line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, UserInputError
from onnxsmith.torchin.check import _check_data, check_export
from onnxsmith.torchin.export import choose_opset, export_onnx
from onnxsmith.torchin.inputs import InputArg, _resolve_inputs, split_shapes
from onnxsmith.torchin.source import TorchModel, build_torch_model, import_torch, torch_kind

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel
    from onnxsmith.targets import Target


EXPORT_RECORD = "export.json"


_RECORD_VERSION = 1


def open_model(spec: str, shapes: Sequence[str] = (), *, target: Target | None = None, data: str | None = None,
               default_batch: int | None = 1, progress: Callable[[str], None] | None = None,
               opset: int | None = None, batch: tuple[int, int, int] | None = None) -> LoadedModel:
    """Load MODEL as every command does: an ONNX file as it is, a PyTorch model through a checked export.

    ``data`` (any form :func:`onnxsmith.data.sources.open_dataset` reads) feeds the export's numerics check. A range
    (``--shape NAME=MIN:OPT:MAX``) is exported at its OPT dims with the varying dims dynamic, and kept as the
    loaded model's :attr:`~onnxsmith.model.LoadedModel.shape_ranges`; ``batch`` is ``--batch`` as
    :func:`onnxsmith.model.shapes.parse_batch` returns it."""
    from onnxsmith.model import load_model
    from onnxsmith.model.shapes import parse_shape_overrides

    kind = torch_kind(spec)
    if kind is not None and batch is not None:  # a PyTorch model's --batch sets its --shape dims' first dim
        from onnxsmith.torchin.batch import batch_into_shapes

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


def _model_digest(model: TorchModel) -> dict[str, Any]:
    """What determines an export of ``model``: its file, or its code, structure and weights."""
    from onnxsmith.build.cache import sha256_file

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
    from onnxsmith.build.cache import cache_key, cache_root, private_dir, publish_dir

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

    from onnxsmith.build.cache import private_dir

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
