"""``int8_qdq``: post-training static int8 quantization in QDQ form (``onnxruntime.quantization``).

Weights are quantized per channel (int8, symmetric), activations per tensor (uint8 by default: the U8S8 form ONNX
Runtime's x86 kernels prefer) with ranges calibrated on a :class:`~onnxsmith.data.dataset.Dataset` by MinMax, Entropy or
Percentile. The result is an ONNX model with QuantizeLinear/DequantizeLinear pairs that any QDQ-aware runtime
(ONNX Runtime, OpenVINO, TensorRT) executes in int8.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, UserInputError, first_line
from onnxsmith.optimize.passes import Change, Pass, feed_batches, package_version

if TYPE_CHECKING:
    import onnx

    from onnxsmith.data.dataset import Dataset

METHODS = ("minmax", "entropy", "percentile")


@dataclasses.dataclass(frozen=True)
class Int8QdqConfig:
    calibrate_method: str = "minmax"
    """``minmax``, ``entropy`` or ``percentile``."""
    percentile: float = 99.999
    """For ``percentile``: the percentile of |activation| kept."""
    per_channel: bool = True
    activation_type: str = "uint8"
    """``uint8`` (U8S8, fastest on x86) or ``int8`` (S8S8, what TensorRT and some NPUs want)."""
    weight_type: str = "int8"
    reduce_range: bool = False
    """7-bit weights: avoids saturation in VPMADDUBSW on x86 CPUs without VNNI, at some accuracy cost."""
    samples: int = 128
    """Calibration samples used at most."""
    preprocess: bool = True
    """Run ONNX Runtime's quantization pre-processing (shape inference, basic fusions) first."""
    nodes_to_exclude: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] = ()
    """Empty: every op type ONNX Runtime can quantize."""
    calibration_cache: str = ""
    """A file for ONNX Runtime's calibration ranges: computed and written on first use, reused after (so variants
    with different ``nodes_to_exclude`` share one calibration). Empty: calibrate every time."""


def _quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "", "int8 QDQ uses onnxruntime.quantization") from exc
    return quantization


def calibration_reader(model: onnx.ModelProto, data: Dataset, limit: int) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``data`` shaped for ``model``'s inputs."""
    quantization = _quantization()
    feeds = list(feed_batches(model, data, limit))

    class DatasetReader(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.samples = sum(len(next(iter(f.values()))) for f in feeds)
            self._iter = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

    return DatasetReader()


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Which ops run quantized in a QDQ model: those fed by a DequantizeLinear."""
    producers = {out: n for n in model.graph.node for out in n.output}
    quantized: collections.Counter[str] = collections.Counter()
    float_ops: collections.Counter[str] = collections.Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fed = any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
        (quantized if fed else float_ops)[node.op_type] += 1
    return {"quantized_ops": dict(sorted(quantized.items())),
            "float_ops": dict(sorted(float_ops.items())),
            "quantize_linear": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
            "dequantize_linear": sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")}


class Int8QdqPass(Pass):
    """Static int8 post-training quantization, QDQ format, per-channel weights."""

    name = "int8_qdq"
    config_type = Int8QdqConfig
    needs_calibration = True

    def _apply(self, model: onnx.ModelProto, calibration: Dataset | None) -> Change:
        import onnx

        config: Int8QdqConfig = self.config
        if config.calibrate_method not in METHODS:
            raise UserInputError(f"unknown calibration method '{config.calibrate_method}'",
                                 f"choose {', '.join(METHODS)}")
        if config.activation_type not in ("uint8", "int8") or config.weight_type not in ("uint8", "int8"):
            raise UserInputError("invalid int8 types", "activation_type and weight_type are uint8 or int8")
        assert calibration is not None
        q = _quantization()
        method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                  "percentile": q.CalibrationMethod.Percentile}[config.calibrate_method]
        qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
        notes: list[str] = []
        extra: dict[str, Any] = {}
        if config.calibrate_method == "percentile":
            extra["CalibPercentile"] = config.percentile
        quiet = io.StringIO()
        with tempfile.TemporaryDirectory(prefix="onnxsmith-int8-") as tmp:
            src = Path(tmp) / "model.onnx"
            large = model.ByteSize() > 1_800_000_000
            onnx.save_model(model, str(src), save_as_external_data=large)
            if config.preprocess:
                pre = Path(tmp) / "model.pre.onnx"
                try:
                    with contextlib.redirect_stdout(quiet), _quiet_logging():
                        q.shape_inference.quant_pre_process(str(src), str(pre), save_as_external_data=large)
                    src = pre
                except Exception as exc:  # pre-processing is an aid; quantize the model as it is without it
                    notes.append(f"quantization pre-processing skipped: {first_line(exc)}")
            reader = calibration_reader(model, calibration, config.samples)
            out = Path(tmp) / "model.int8.onnx"
            try:
                with contextlib.redirect_stdout(quiet), _quiet_logging():
                    q.quantize_static(
                        str(src), str(out), reader, quant_format=q.QuantFormat.QDQ, per_channel=config.per_channel,
                        reduce_range=config.reduce_range, activation_type=qtype[config.activation_type],
                        weight_type=qtype[config.weight_type], calibrate_method=method,
                        nodes_to_exclude=list(config.nodes_to_exclude) or None,
                        op_types_to_quantize=list(config.op_types_to_quantize) or None,
                        use_external_data_format=large, extra_options=extra,
                        **({"calibration_cache_path": config.calibration_cache} if config.calibration_cache else {}),
                    )
            except Exception as exc:
                raise BackendError("int8 quantization failed", first_line(exc),
                                   "check the calibration data; try calibrate_method='minmax'") from exc
            new = onnx.load_model(str(out))
        summary_ops = qdq_summary(new)
        if config.nodes_to_exclude:
            notes.append(f"kept in fp32 (left out of quantization): {', '.join(config.nodes_to_exclude)}")
        quantized = sum(summary_ops["quantized_ops"].values())
        if quantized == 0:
            notes.append("no op was quantized: the model has no op type ONNX Runtime quantizes")
        a, w = config.activation_type, config.weight_type
        method_text = (f"{config.calibrate_method} ({config.percentile} %)" if config.calibrate_method == "percentile"
                       else config.calibrate_method)
        summary = (f"int8 QDQ: {quantized} ops quantized ({', '.join(f'{k} x{v}' for k, v in summary_ops['quantized_ops'].items()) or 'none'}); "
                   f"{'per-channel' if config.per_channel else 'per-tensor'} {w} weights"
                   f"{' (7-bit: reduce_range)' if config.reduce_range else ''}, {a} activations, "
                   f"{method_text} calibration on {reader.samples} samples")
        details = {**summary_ops, "calibration": {"method": config.calibrate_method, "samples": reader.samples,
                                                  "batches": len(reader), "data": calibration.source},
                   "quantizer": f"onnxruntime.quantization {package_version('onnxruntime')}",
                   "preprocessed": config.preprocess and not any("pre-processing skipped" in n for n in notes)}
        return Change(new, f"onnxruntime {package_version('onnxruntime')} quantize_static (QDQ)", summary, details,
                      tuple(notes))


@contextlib.contextmanager
def _quiet_logging() -> Any:
    """onnxruntime.quantization logs progress at INFO/WARNING level through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
