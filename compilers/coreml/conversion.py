"""ONNX -> ML Program: onnx2coreml's conversion with its errors mapped, onnxsmith's provenance stamped in the
package, and what the converted program computes in, read from its spec."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.coreml.common import quiet
from onnxsmith.errors import BackendError, UnsupportedError, first_line

if TYPE_CHECKING:
    from onnxsmith.compilers.coreml.options import CoreMLOptions
    from onnxsmith.model import LoadedModel
    from onnxsmith.plugin import CompileRequest

PROVENANCE_URL = "https://github.com/onnxsmith/onnxsmith"


def convert(converter: Any, request: CompileRequest, opts: CoreMLOptions) -> tuple[Any, float]:
    """The model converted by onnx2coreml (an ``MLModel`` held in memory) and the seconds it took."""
    precision = request.precision
    start = time.perf_counter()
    try:
        with quiet():
            mlmodel = converter.convert(
                str(request.model.path), format="mlpackage",
                minimum_deployment_target=opts.minimum_deployment_target,
                compute_precision="fp32" if precision == "fp32" else "fp16", compute_units=opts.compute_units,
                fp32_op_types=set(opts.fp32_ops) or None)
    except converter.UnsupportedOpError as exc:
        first = sorted(exc.missing.items())[0]
        raise UnsupportedError(f"Core ML cannot convert op {first[0]}", f"node(s) {', '.join(first[1][:3])}",
                               "onnx2coreml has no lowering for it; register one, or use another backend") from exc
    except Exception as exc:
        raise BackendError("onnx2coreml could not convert the model", first_line(exc)) from exc
    convert_seconds = time.perf_counter() - start
    return mlmodel, convert_seconds


def stamp_provenance(mlmodel: Any, request: CompileRequest) -> None:
    """onnxsmith's provenance in the package's metadata, replacing what onnx2coreml stamps (its own author,
    URL and licence) on every model it converts."""
    from onnxsmith import __version__

    model = request.model
    mlmodel.author = "onnxsmith"
    mlmodel.license = ""
    mlmodel.short_description = (f"{Path(model.path).name} compiled by onnxsmith {__version__} for "
                                 f"{request.target.id} ({request.precision})")
    mlmodel.version = ""
    meta = mlmodel.user_defined_metadata
    for key, value in {"onnxsmith.version": __version__, "onnxsmith.url": PROVENANCE_URL,
                       "onnxsmith.target": request.target.id, "onnxsmith.precision": request.precision,
                       "onnxsmith.source_model": Path(model.path).name,
                       "onnxsmith.source_sha256": str(getattr(model, "fingerprint", "") or "")}.items():
        meta[key] = value


def save(mlmodel: Any, package: Path) -> None:
    try:
        with quiet():
            mlmodel.save(str(package))
    except Exception as exc:
        raise BackendError("coremltools could not write the .mlpackage", first_line(exc)) from exc


def io_names(model: LoadedModel, spec: Any) -> dict[str, dict[str, str]]:
    """ONNX name -> Core ML feature name, per direction (Core ML may rename features; order is kept)."""
    return {
        "inputs": {s.name: f.name for s, f in zip(model.inputs, spec.description.input, strict=True)},
        "outputs": {s.name: f.name for s, f in zip(model.outputs, spec.description.output, strict=True)},
    }


def program_summary(spec: Any) -> dict[str, Any]:
    """What an ML Program computes in, read from its spec: op output types and compressed weights."""
    from coremltools.proto import MIL_pb2

    if spec.WhichOneof("Type") != "mlProgram":
        return {"ops": {}, "compute": {}, "compressed_weights": 0, "weight_dtypes": []}
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    ops: Counter[str] = Counter()
    compute: Counter[str] = Counter()
    weight_dtypes: set[str] = set()
    compressed = 0
    for op in block.operations:
        ops[op.type] += 1
        if op.type.startswith("constexpr_"):
            compressed += 1
            named = {**dict(op.attributes), **{key: arg.value for key, binding in op.inputs.items()
                                               for arg in binding.arguments if arg.HasField("value")}}
            if op.type == "constexpr_lut_to_dense" and "lut" in named:
                # palettized: the look-up table's entries give the index width (2**bits of them)
                dims = [int(d.constant.size) for d in named["lut"].type.tensorType.dimensions]
                entries = dims[-1] if op.attributes.get("lut") is not None or len(dims) < 2 else dims[-2]
                weight_dtypes.add(f"lut{max(1, int(entries).bit_length() - 1)}")
                continue
            for key, value in named.items():
                if key != "shape" and value.type.HasField("tensorType"):
                    name = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
                    if name.startswith(("INT", "UINT")) and name not in ("INT32", "UINT32"):
                        weight_dtypes.add(name.lower())
        elif op.type not in ("const", "cast"):  # casts convert fp32 inputs/outputs at the program's edges
            for out in op.outputs:
                if out.type.HasField("tensorType"):
                    compute[MIL_pb2.DataType.Name(out.type.tensorType.dataType).lower()] += 1
    return {"ops": dict(ops), "compute": dict(compute), "compressed_weights": compressed,
            "weight_dtypes": sorted(weight_dtypes)}


def precision_from_summary(summary: Mapping[str, Any]) -> str:
    """``fp16``, ``fp32``, ``fp16+fp32`` (mixed), with ``+int8-weights`` (or ``+lut4-weights``: palettized with a
    16-entry table) when weights are stored compressed, and a leading ``int8`` when activations are quantized."""
    compute = summary.get("compute", {})
    parts = [name for key, name in (("float16", "fp16"), ("float32", "fp32")) if compute.get(key)]
    if summary.get("ops", {}).get("quantize"):
        parts.insert(0, "int8")  # W8A8: activations quantized to int8 between ops
    if summary.get("compressed_weights"):
        dtypes = summary.get("weight_dtypes") or ["int8"]
        parts.append("+".join(f"{d}-weights" for d in dtypes))
    return "+".join(parts) or "unknown"

