"""A Linux-side numerical check of a converted ML Program, without Core ML's runtime.

coremltools ships a numpy ``value_inference`` for many MIL ops (matmul, linear, softmax, layer_norm, gelu, reshape,
concat, reductions, elementwise... but not conv, pooling, batch_norm or resize). For a program made only of those
ops, :func:`evaluate_program` replays the saved ``.mlpackage`` op by op on numpy arrays: each op is rebuilt with the
MIL builder on constant inputs, which makes coremltools compute its value. Constants, casts and compressed weights
(``constexpr_*``) are evaluated as stored, so fp16 rounding and int8 weight quantization show in the result.

It checks what the converter emitted, not Core ML's kernels: numpy's fp16 arithmetic is not the GPU's or Neural
Engine's, and timings from it mean nothing. Core ML itself predicts only on macOS.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.coreml.backend import coremltools, quiet
from onnxsmith.errors import BackendError, DataError, UnsupportedError, first_line
from onnxsmith.plugin import Support

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.plugin import Artifact


def _load_program(package: Path) -> Any:
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    ct = coremltools()
    try:
        with quiet():
            model = ct.models.MLModel(str(package), skip_model_load=True)
            spec = model.get_spec()
            if spec.WhichOneof("Type") != "mlProgram":
                raise UnsupportedError("cannot evaluate this Core ML model on Linux", "it is not an ML Program")
            return milproto_load(spec, spec.specificationVersion, model.weights_dir)
    except UnsupportedError:
        raise
    except Exception as exc:
        raise BackendError(f"coremltools could not read '{package.name}'", first_line(exc)) from exc


def _evaluable(op: Any) -> bool:
    from coremltools.converters.mil.mil.operation import Operation

    if op.op_type == "const" or op.op_type.startswith("constexpr_"):
        return True
    return type(op).value_inference is not Operation.value_inference and not op.blocks


def missing_value_inference(package: Path) -> list[str]:
    """MIL op types in the program that coremltools cannot evaluate with numpy (empty: the check can run)."""
    function = _load_program(package).functions["main"]
    return sorted({op.op_type for op in function.operations if not _evaluable(op)})


def can_evaluate(artifact: Artifact, directory: Path) -> Support:
    """Whether :func:`evaluate_program` can run this artifact's program here."""
    if artifact.backend != "coreml":
        return Support(False, f"not a Core ML artifact ({artifact.backend})")
    missing = missing_value_inference(directory / artifact.files[0])
    if missing:
        return Support(False, f"coremltools has no numpy evaluation for MIL op(s) {', '.join(missing)}",
                       "validate on a Mac (Core ML predicts only on macOS)")
    return Support(True)


def evaluate_program(artifact: Artifact, directory: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the artifact's ML Program for ``feeds`` (ONNX names in and out), computed with numpy."""
    import numpy as np
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import Function

    function = _load_program(directory / artifact.files[0]).functions["main"]
    missing = sorted({op.op_type for op in function.operations if not _evaluable(op)})
    if missing:
        raise UnsupportedError("cannot evaluate this Core ML program on Linux",
                               f"coremltools has no numpy evaluation for MIL op(s) {', '.join(missing)}",
                               "validate on a Mac (Core ML predicts only on macOS)")
    io = artifact.metadata.get("io", {})
    in_map = dict(io.get("inputs", {})) or {name: name for name in function.inputs}
    out_map = dict(io.get("outputs", {})) or {var.name: var.name for var in function.outputs}
    values: dict[str, Any] = {}
    for onnx_name, coreml_name in in_map.items():
        if onnx_name not in feeds:
            raise DataError("input missing for the Core ML program", f"no array for input '{onnx_name}'")
        placeholder = function.inputs[coreml_name]
        dtype = placeholder.dtype
        from coremltools.converters.mil.mil import types

        values[placeholder.name] = np.asarray(feeds[onnx_name], dtype=types.nptype_from_builtin(dtype))
    with quiet(), Function({}, opset_version=function.opset_version):
        for op in function.operations:
            if op.op_type == "const":
                results = [out.val for out in op.outputs]
            elif op.op_type.startswith("constexpr_"):
                results = op.materialized_val_inference()
            else:
                kwargs = {}
                for param, var in op.inputs.items():
                    if isinstance(var, (list, tuple)):
                        kwargs[param] = [values.get(v.name, v.val) for v in var]
                    else:
                        kwargs[param] = values[var.name] if var.name in values else var.val
                try:
                    built = getattr(mb, op.op_type)(**kwargs)
                except Exception as exc:
                    raise BackendError(f"numpy evaluation of MIL op '{op.name}' ({op.op_type}) failed",
                                       first_line(exc)) from exc
                results = [v.val for v in (built if isinstance(built, (list, tuple)) else [built])]
            if not isinstance(results, (list, tuple)):
                results = [results]
            for out, value in zip(op.outputs, results, strict=True):
                if value is None:
                    raise UnsupportedError("cannot evaluate this Core ML program on Linux",
                                           f"MIL op '{op.name}' ({op.op_type}) gave no value for these inputs")
                values[out.name] = value
    outputs = {var.name: var for var in function.outputs}
    return {onnx_name: np.asarray(values[outputs[coreml_name].name]) for onnx_name, coreml_name in out_map.items()}
