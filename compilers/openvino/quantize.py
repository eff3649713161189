"""int8 post-training quantization of an OpenVINO model with NNCF, calibrated on the user's data."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.openvino.common import vendor_why
from onnxsmith.errors import BackendError, DataError, MissingDependencyError

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import TensorSpec

DEFAULT_SUBSET = 300
"""NNCF's own default number of calibration samples."""


@dataclasses.dataclass(frozen=True)
class QuantizeResult:
    model: Any
    """The quantized ``openvino.Model`` (FakeQuantize nodes inserted)."""
    metadata: dict[str, Any]
    notes: tuple[str, ...]


def nncf_module() -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise MissingDependencyError("nncf", "openvino", "OpenVINO int8 quantization needs NNCF") from exc
    return nncf


def count_ops(model: Any, type_name: str) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == type_name)


def calibration_feeds(calibration: Dataset | None, inputs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    """The calibration data as a list of feeds shaped like the model's (fixed) inputs."""
    import dataclasses

    from onnxsmith.data.dataset import check_against_model

    if calibration is None:
        raise DataError("OpenVINO int8 needs calibration data",
                        "NNCF post-training quantization measures activation ranges on real inputs",
                        "pass --calibration calib.npz (one array per model input, samples along the first axis)")
    whole, batch = check_against_model(calibration.arrays, inputs, "calibration data",
                                       None if calibration.one_feed else tuple(k for k in calibration.arrays
                                                                                if k not in calibration.whole))
    calibration = dataclasses.replace(calibration, whole=whole, batch=batch)
    feeds = list(calibration.batches())
    if not feeds:
        raise DataError("calibration data is too small", f"{len(calibration)} sample(s), the model takes batches "
                        f"of {batch}", f"give at least {batch} samples (a few hundred is typical)")
    return feeds


@contextlib.contextmanager
def _quiet_nncf(nncf: Any) -> Iterator[list[str]]:
    """Keep NNCF's progress bars and log lines off stdout (``--json`` prints there); collect its warnings."""
    logger = logging.getLogger("nncf")
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage().splitlines()[0] if record.getMessage() else record.levelname)

    handlers, level = logger.handlers[:], logger.level
    logger.handlers = [Collect()]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield warnings
    finally:
        logger.handlers = handlers
        logger.setLevel(level)


def ignored_scope(model: Any, keep: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The OpenVINO op names of the ONNX nodes in ``keep`` (the ONNX frontend names a Conv with bias
    ``conv3/WithoutBiases`` + ``conv3``), and the ONNX names no op carries."""
    ops = [op.get_friendly_name() for op in model.get_ordered_ops()]
    names, missing = [], []
    for node in keep:
        found = [n for n in ops if n == node or n.startswith(node + "/")]
        names += found
        if not found:
            missing.append(node)
    return names, missing


def quantize(model: Any, calibration: Dataset | None, inputs: tuple[TensorSpec, ...], subset_size: int = 0,
             model_type: str = "", keep_fp32: tuple[str, ...] = (), overflow_fix: str = "") -> QuantizeResult:
    """``nncf.quantize`` on ``model`` with the calibration feeds; FakeQuantize nodes end up in the IR. The ONNX
    nodes in ``keep_fp32`` go into NNCF's ignored scope (left unquantized)."""
    feeds = calibration_feeds(calibration, inputs)
    nncf = nncf_module()
    subset = min(subset_size or DEFAULT_SUBSET, len(feeds))
    kwargs: dict[str, Any] = {"subset_size": subset}
    if model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if overflow_fix:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    ignored: list[str] = []
    missing: list[str] = []
    if keep_fp32:
        ignored, missing = ignored_scope(model, keep_fp32)
        if missing:
            raise DataError(f"keep_fp32 names {', '.join(missing)}, which the model does not have",
                            "the keep-list holds ONNX node names", "list them with 'onnxsmith inspect'")
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored)
    start = time.perf_counter()
    try:
        with _quiet_nncf(nncf) as warnings:
            quantized = nncf.quantize(model, nncf.Dataset(feeds), **kwargs)
    except Exception as exc:
        raise BackendError("NNCF could not quantize the model", vendor_why(exc),
                           "check the calibration data, or try --precision fp32 / bf16") from exc
    seconds = time.perf_counter() - start
    fake_quantize = count_ops(quantized, "FakeQuantize")
    notes = [f"NNCF: {w}" for w in dict.fromkeys(warnings)][:5]
    if fake_quantize == 0:
        notes.append("NNCF inserted no FakeQuantize node: the model has no op it quantizes, so it runs unquantized")
    if subset < 100:
        notes.append(f"int8 calibrated on only {subset} batch(es); a few hundred representative samples give "
                     "steadier ranges")
    metadata = {
        "quantizer": "nncf.quantize (post-training, OpenVINO backend)",
        "nncf_version": str(nncf.__version__),
        "overflow_fix": overflow_fix or "NNCF's default",
        "fake_quantize_nodes": fake_quantize,
        "calibration_batches_available": len(feeds),
        "subset_size": subset,
        "model_type": model_type or "default",
        "quantize_seconds": round(seconds, 3),
    }
    if keep_fp32:
        metadata["ignored_scope"] = {"onnx_nodes": list(keep_fp32), "openvino_ops": ignored}
        notes.append(f"kept in fp32 (NNCF ignored scope): {', '.join(keep_fp32)}")
    return QuantizeResult(quantized, metadata, tuple(notes))
