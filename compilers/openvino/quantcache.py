"""The NNCF-quantized IR, kept under ``<cache root>/openvino-int8/<key>/`` and reused by later int8 compiles of
the same model, shapes and calibration data that differ only in runtime settings.

``optimize``'s runtime-knob steps (threads, streams, performance hint, pinning) and a ``compile --option
num_threads=1`` of an int8 bundle change only what ``core.compile_model`` gets; the quantization does not depend on
them. The key holds everything NNCF's result does depend on: the ONNX fingerprint, the input shapes and shape
ranges, the calibration data's fingerprint, ``subset_size``, ``model_type``, ``keep_fp32`` and the OpenVINO and
NNCF versions. A hit reads the saved IR back (``core.read_model``) instead of calibrating again, and says so in
the artifact's metadata (``quantization.reused_from``) and notes; a miss quantizes and saves the IR atomically (an
unwritable cache costs a later calibration, not this build). Like TensorRT's calibration cache.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxsmith.compilers.openvino.quantize import QuantizeResult
    from onnxsmith.plugin import CompileRequest

RECORD = "quantization.json"
_VERSION = 1


def quantization_key(request: CompileRequest, subset_size: int, model_type: str, keep_fp32: tuple[str, ...],
                     openvino_version: str, overflow_fix: str = "") -> str | None:
    """The cache key of the int8 IR for ``request``; ``None`` without calibration data (nothing to key on)."""
    from onnxsmith.build.cache import cache_key
    from onnxsmith.compilers.openvino.quantize import nncf_module

    if request.calibration is None:
        return None
    model = request.model
    return cache_key({
        "model": model.fingerprint, "shapes": [s.to_json() for s in model.inputs],
        "shape_ranges": {k: v.to_json() for k, v in sorted(model.shape_ranges.items())},
        "calibration": request.calibration.fingerprint(), "subset_size": subset_size, "model_type": model_type,
        "keep_fp32": list(keep_fp32), "openvino": openvino_version, "nncf": str(nncf_module().__version__),
        "record": _VERSION, **({"overflow_fix": overflow_fix} if overflow_fix else {}),
    })[:32]


def cached_quantize(model: Any, request: CompileRequest, subset_size: int, model_type: str,
                    keep_fp32: tuple[str, ...], openvino_version: str, overflow_fix: str = "") -> QuantizeResult:
    """:func:`~onnxsmith.compilers.openvino.quantize.quantize`, or its earlier result for the same key."""
    import openvino

    from onnxsmith.build.cache import cache_root, private_dir, publish_dir, replace_dir
    from onnxsmith.compilers.openvino.common import core
    from onnxsmith.compilers.openvino.quantize import QuantizeResult, quantize

    key = quantization_key(request, subset_size, model_type, keep_fp32, openvino_version, overflow_fix)
    final = cache_root() / "openvino-int8" / key if key else None
    if final is not None and (final / RECORD).is_file() and (final / "model.xml").is_file():
        try:
            record = json.loads((final / RECORD).read_text())
            quantized = core().read_model(str(final / "model.xml"))
        except Exception:  # a damaged entry: quantize again (and replace it below)
            pass
        else:
            metadata = {**record["metadata"], "reused_from": str(final)}
            notes = (*record["notes"], "int8 IR reused from the quantization cache (same model, shapes, "
                     "calibration data and NNCF settings): NNCF calibration not run again")
            return QuantizeResult(quantized, metadata, notes)
    result = quantize(model, request.calibration, request.model.inputs, subset_size, model_type, keep_fp32,
                      overflow_fix)
    if final is None:
        return result
    try:
        with private_dir(final.parent, "quantized") as tmp:
            openvino.save_model(result.model, str(tmp / "model.xml"), compress_to_fp16=False)
            (tmp / RECORD).write_text(json.dumps({"metadata": result.metadata, "notes": list(result.notes)},
                                                 indent=2))
            if not publish_dir(tmp, final) and not (final / RECORD).is_file():
                replace_dir(tmp, final)  # a damaged entry; a complete one from another writer is kept
    except Exception:  # noqa: BLE001 - an unwritable cache costs a later calibration, not this build
        pass
    return result
