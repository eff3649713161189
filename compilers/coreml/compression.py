"""Compressing a converted program's weights (int8 linear or k-means palettized, a keep-list left float) and, for
W8A8, its activations, through coremltools' ``optimize.coreml`` entry points."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.coreml.common import MAIN_FILE, quiet
from onnxsmith.compilers.coreml.conversion import io_names, program_summary
from onnxsmith.errors import BackendError, DataError, UnsupportedError, first_line

if TYPE_CHECKING:
    from onnxsmith.compilers.coreml.options import CoreMLOptions
    from onnxsmith.plugin import CompileRequest


def keep_weights(proto: Any, nodes: tuple[str, ...]) -> tuple[str, ...]:
    """The initializers (weights) of the ONNX nodes in ``nodes``; a name the model lacks is refused."""
    if not nodes:
        return ()
    initializers = {t.name for t in proto.graph.initializer}
    by_name = {n.name: n for n in proto.graph.node}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise UnsupportedError(f"keep_fp32 names {', '.join(missing)}, which the model does not have",
                               "the keep-list holds ONNX node names", "list them with 'onnxsmith inspect'")
    return tuple(i for n in nodes for i in by_name[n].input if i in initializers)


def _const_ops(mlmodel: Any, weights: tuple[str, ...]) -> set[str]:
    """MIL const op names holding those ONNX weights (onnx2coreml names them after the initializer, with a
    ``_to_fp16`` suffix in fp16 programs): the op selectors that keep them float."""
    program = mlmodel._mil_program
    consts = {op.name for fn in program.functions.values() for op in fn.find_ops(op_type="const")}
    wanted = set(weights)
    return {c for c in consts if c in wanted or any(c.startswith(w + "_to_") for w in wanted)}


def _compress_weights(mlmodel: Any, op_config: Any, compress: Callable[..., Any], keep: tuple[str, ...],
                      weight_threshold: int, failed: str, nothing: str, hint: str
                      ) -> tuple[Any, int, dict[str, Any]]:
    """``mlmodel`` with its weights compressed by ``compress`` (a coremltools ``optimize.coreml`` entry point) with
    ``op_config`` for every op but the consts holding the ``keep`` weights; refused when nothing was compressed.
    Returns the model, how many weights were compressed, and ``kept_float`` (when there is a keep-list)."""
    from coremltools.optimize.coreml import OptimizationConfig

    kept = _const_ops(mlmodel, keep) if keep else set()
    config = OptimizationConfig(global_config=op_config, op_name_configs={name: None for name in kept})
    try:
        with quiet():
            compressed_model = compress(mlmodel, config=config)
    except Exception as exc:
        raise BackendError(f"coremltools could not {failed}", first_line(exc)) from exc
    compressed = program_summary(compressed_model.get_spec())["compressed_weights"]
    if not compressed:
        raise UnsupportedError(nothing, f"no weight tensor has more than weight_threshold={weight_threshold} elements",
                               hint)
    return compressed_model, compressed, ({"kept_float": sorted(kept)} if keep else {})


def palettize(mlmodel: Any, opts: CoreMLOptions, keep: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """Weights palettized: a k-means look-up table of ``2**palettize_bits`` values per tensor."""
    from coremltools.optimize.coreml import OpPalettizerConfig, palettize_weights

    op_config = OpPalettizerConfig(mode="kmeans", nbits=opts.palettize_bits, granularity="per_tensor",
                                   weight_threshold=opts.weight_threshold)
    palettized, compressed, kept = _compress_weights(
        mlmodel, op_config, palettize_weights, keep, opts.weight_threshold, "palettize the weights",
        "palettization compressed no weights", "lower --option weight_threshold")
    return palettized, {**kept, "method": "coremltools palettize_weights (OpPalettizerConfig)", "mode": "kmeans",
                        "nbits": opts.palettize_bits, "granularity": "per_tensor",
                        "weight_threshold": opts.weight_threshold, "palettized_weights": compressed}


def quantize_weights(mlmodel: Any, opts: CoreMLOptions, keep: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """Weights stored as int8 (linear symmetric, per channel or per tensor), dequantized on load."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, linear_quantize_weights

    op_config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity=opts.granularity,
                                        weight_threshold=opts.weight_threshold)
    quantized, compressed, kept = _compress_weights(
        mlmodel, op_config, linear_quantize_weights, keep, opts.weight_threshold, "quantize the weights to int8",
        "int8 quantized no weights", "lower --option weight_threshold, or compile fp16")
    return quantized, {**kept, "method": "coremltools linear_quantize_weights (weight-only)",
                       "mode": "linear_symmetric", "dtype": "int8", "granularity": opts.granularity,
                       "weight_threshold": opts.weight_threshold, "quantized_weights": compressed}


def quantize_activations(mlmodel: Any, request: CompileRequest, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """W8A8's activation half: coremltools' ``linear_quantize_activations`` with the ranges measured by
    evaluating the float program with numpy on the calibration set (coremltools measures them with
    ``predict``, which needs macOS)."""
    import tempfile
    from unittest import mock

    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig
    from coremltools.optimize.coreml import _post_training_quantization as ptq

    from onnxsmith.compilers.coreml.milcheck import activation_ranges

    calibration = request.calibration
    assert calibration is not None
    with tempfile.TemporaryDirectory(prefix=".w8a8-", dir=workdir.parent) as tmp:
        float_package = Path(tmp) / MAIN_FILE
        with quiet():
            mlmodel.save(str(float_package))
        io = io_names(request.model, mlmodel.get_spec())
        ranges, samples = activation_ranges(float_package, io, calibration.batches())
    if not ranges:
        raise DataError("int8 activations found no activation to calibrate", "the program has no float "
                        "intermediate values")
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
    in_names = io["inputs"]
    sample_data = [{in_names[k]: v for k, v in feeds.items() if k in in_names}
                   for feeds in calibration.batches()][:1]
    try:
        # the public entry point, with its range measurement (MLModel.predict) replaced by ours
        with quiet(), mock.patch.object(ptq, "_get_activation_calibration_stats",
                                        lambda *args, **kwargs: {k: dict(v) for k, v in ranges.items()}):
            quantized = ptq.linear_quantize_activations(mlmodel, config, sample_data)
    except Exception as exc:
        raise BackendError("coremltools could not quantize the activations", first_line(exc)) from exc
    pairs = program_summary(quantized.get_spec())["ops"].get("quantize", 0)
    if not pairs:
        raise UnsupportedError("int8 activations quantized nothing",
                               "coremltools found no op pattern it quantizes (conv, linear, matmul, add...)",
                               "compile int8 weights only (drop --option activations=int8)")
    return quantized, {"method": "coremltools linear_quantize_activations, ranges from a numpy evaluation of "
                       "the MIL program", "mode": "linear_symmetric", "dtype": "int8", "samples": samples,
                       "quantize_ops": pairs}
