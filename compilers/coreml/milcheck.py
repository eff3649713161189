"""A Linux-side numerical check of a converted ML Program, without Core ML's runtime.

coremltools ships a numpy ``value_inference`` for many MIL ops (matmul, linear, softmax, layer_norm, gelu, reshape,
concat, reductions, elementwise... but not conv, pooling, batch_norm or resize). :func:`evaluate_program` replays
the saved ``.mlpackage`` op by op on numpy arrays: each op is rebuilt with the MIL builder on constant inputs, which
makes coremltools compute its value; ``conv``, ``max_pool``/``avg_pool`` and ``batch_norm``, which have
no such value, are computed by this module's own numpy references (:data:`REFERENCE_OPS`, accumulating in fp32 and
rounding to the op's output type). Constants, casts and compressed weights (``constexpr_*``) are evaluated as
stored, so fp16 rounding and int8 weight quantization show in the result.

It checks what the converter emitted, not Core ML's kernels: numpy's fp16 arithmetic is not the GPU's or Neural
Engine's, and timings from it mean nothing. Core ML itself predicts only on macOS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.compilers.coreml.common import coremltools, openable_package, package_path, quiet
from onnxsmith.errors import BackendError, DataError, UnsupportedError, first_line
from onnxsmith.plugin import Emulation, Runner, Support

if TYPE_CHECKING:
    import numpy as np

    from onnxsmith.plugin import Artifact


def _load_program(package: Path) -> Any:
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    ct = coremltools()
    try:
        with quiet(), openable_package(package) as readable:
            model = ct.models.MLModel(str(readable), skip_model_load=True)
            spec = model.get_spec()
            if spec.WhichOneof("Type") != "mlProgram":
                raise UnsupportedError("cannot evaluate this Core ML model on Linux", "it is not an ML Program")
            return milproto_load(spec, spec.specificationVersion, model.weights_dir)
    except UnsupportedError:
        raise
    except Exception as exc:
        raise BackendError(f"coremltools could not read '{package.name}'", first_line(exc)) from exc


# ---- numpy references for the MIL ops coremltools cannot evaluate ------------------------------------------------

def _pads(op: Any, kernel: list[int], strides: list[int], dilations: list[int], spatial: tuple[int, ...]
          ) -> list[int]:
    """Padding before each spatial dim, as MIL's ``pad_type`` defines it (``custom``: ``pad[2i]``)."""
    pad_type = str(_value(op, "pad_type", "valid")).lower()
    if pad_type == "custom":
        pad = [int(p) for p in _value(op, "pad", [0] * 2 * len(kernel))]
        return pad[0::2]
    if pad_type in ("same", "same_lower"):
        begins = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            extent = (k - 1) * d + 1
            total = max(0, (-(-size // s) - 1) * s + extent - size)
            begins.append(total // 2 if pad_type == "same" else total - total // 2)
        return begins
    return [0] * len(kernel)


def _value(op: Any, name: str, default: Any) -> Any:
    var = op.inputs.get(name)
    return default if var is None or var.val is None else var.val


def _windows(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int], begins: list[int],
             out: tuple[int, ...], fill: float) -> np.ndarray:
    """``(N, C, *out, *kernel)``: the input window of every output position (padded with ``fill``)."""
    import numpy as np

    spatial = len(kernel)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    ends = [max(0, (o - 1) * s + e - (size + b)) for o, s, e, size, b in
            zip(out, strides, extents, x.shape[2:], begins, strict=True)]
    padded = np.pad(x, [(0, 0), (0, 0), *zip(begins, ends, strict=True)], constant_values=fill)
    view = np.lib.stride_tricks.sliding_window_view(padded, extents, axis=tuple(range(2, 2 + spatial)))
    index = (slice(None), slice(None), *(slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides, strict=True)),
             *(slice(None, None, d) for d in dilations))
    return view[index]


def _float32(array: Any) -> np.ndarray:
    import numpy as np

    return np.asarray(array, dtype=np.float32)


def _conv(op: Any, values: Mapping[str, Any]) -> np.ndarray:
    """MIL ``conv``: N-d, grouped, strided, dilated, padded as ``pad_type`` says; bias per output channel."""
    import numpy as np

    x, weight = _float32(values["x"]), _float32(values["weight"])
    spatial = x.ndim - 2
    kernel = list(weight.shape[2:])
    strides = [int(v) for v in _value(op, "strides", [1] * spatial)]
    dilations = [int(v) for v in _value(op, "dilations", [1] * spatial)]
    groups = int(_value(op, "groups", 1))
    out = tuple(int(d) for d in op.outputs[0].shape[2:])
    begins = _pads(op, kernel, strides, dilations, x.shape[2:])
    win = _windows(x, kernel, strides, dilations, begins, out, 0.0)
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    positions, taps = int(np.prod(out, dtype=np.int64)), int(np.prod(kernel, dtype=np.int64))
    win = win.reshape(n, groups, c_in // groups, positions, taps)
    w = weight.reshape(groups, c_out // groups, c_in // groups, taps)
    y = np.einsum("ngcpk,gock->ngop", win, w, optimize=True).reshape(n, c_out, *out)
    bias = values.get("bias")
    if bias is not None:
        y = y + _float32(bias).reshape(1, c_out, *([1] * spatial))
    return y


def _pool(op: Any, values: Mapping[str, Any]) -> np.ndarray:
    """MIL ``max_pool`` / ``avg_pool`` (padding, ``ceil_mode`` through the op's output shape,
    ``exclude_padding_from_average``)."""
    import numpy as np

    x = _float32(values["x"])
    spatial = x.ndim - 2
    kernel = [int(v) for v in _value(op, "kernel_sizes", [1] * spatial)]
    strides = [int(v) for v in _value(op, "strides", [1] * spatial)]
    ones = [1] * spatial
    out = tuple(int(d) for d in op.outputs[0].shape[2:])
    begins = _pads(op, kernel, strides, ones, x.shape[2:])
    axes = tuple(range(-spatial, 0))
    if op.op_type == "max_pool":
        return _windows(x, kernel, strides, ones, begins, out, -np.inf).max(axis=axes)
    total = _windows(x, kernel, strides, ones, begins, out, 0.0).sum(axis=axes)
    mask = np.ones((1, 1, *x.shape[2:]), np.float32)
    if not bool(_value(op, "exclude_padding_from_average", False)):
        # the declared padding counts, the extra right padding of ceil_mode does not
        pad_type = str(_value(op, "pad_type", "valid")).lower()
        ends = [int(p) for p in _value(op, "pad", [0] * 2 * spatial)][1::2] if pad_type == "custom" else begins
        mask = np.pad(mask, [(0, 0), (0, 0), *zip(begins, ends, strict=True)], constant_values=1.0)
        begins = [0] * spatial
    count = _windows(mask, kernel, strides, ones, begins, out, 0.0).sum(axis=axes)
    return total / np.maximum(count, 1.0)


def _batch_norm(op: Any, values: Mapping[str, Any]) -> np.ndarray:
    """MIL ``batch_norm``: per channel (axis 1) ``(x - mean) / sqrt(variance + epsilon) * gamma + beta``."""
    x = _float32(values["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    epsilon = float(values.get("epsilon", 1e-5) if values.get("epsilon") is not None else 1e-5)
    variance = _float32(values["variance"]).reshape(shape)
    y = (x - _float32(values["mean"]).reshape(shape)) / (variance + epsilon) ** 0.5
    if values.get("gamma") is not None:
        y = y * _float32(values["gamma"]).reshape(shape)
    if values.get("beta") is not None:
        y = y + _float32(values["beta"]).reshape(shape)
    return y


def _dequantize(op: Any, values: Mapping[str, Any]) -> np.ndarray:
    """MIL ``dequantize`` (iOS17, what W8A8 inserts): ``(input - zero_point) * scale``, per tensor or along
    ``axis``."""
    import numpy as np

    q = np.asarray(values["input"]).astype(np.float32)
    scale = _float32(values["scale"])
    zero = values.get("zero_point")
    zero = np.zeros((), np.float32) if zero is None else _float32(zero)
    axis = values.get("axis")
    if scale.ndim == 1 and axis is not None:
        shape = [1] * q.ndim
        shape[int(axis)] = -1
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.ndim == 1 else zero)
    return (q - zero) * scale


REFERENCE_OPS = {"dequantize": _dequantize, "conv": _conv, "max_pool": _pool, "avg_pool": _pool,
                 "batch_norm": _batch_norm}
"""MIL ops without a coremltools ``value_inference``, computed here (fp32 accumulation, rounded to the op's type)."""


def _python_scalar(value: Any) -> Any:
    """numpy bools and strings as Python values: the MIL builder refuses ``np.bool_`` for ``keep_dims``-style flags
    (numeric scalars keep their numpy type, which carries the dtype the op's type check needs)."""
    import numpy as np

    if isinstance(value, (np.bool_, np.str_)):
        return value.item()
    return value


def _evaluable(op: Any) -> bool:
    from coremltools.converters.mil.mil.operation import Operation

    if op.op_type == "const" or op.op_type.startswith("constexpr_") or op.op_type in REFERENCE_OPS:
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
    missing = missing_value_inference(package_path(artifact, directory))
    if missing:
        return Support(False, f"coremltools has no numpy evaluation for MIL op(s) {', '.join(missing)}",
                       "validate on a Mac (Core ML predicts only on macOS)")
    return Support(True)


class ProgramEvaluator:
    """An artifact's ML Program loaded once, evaluated with numpy for any number of feeds (constants and
    compressed weights are materialized once)."""

    def __init__(self, package: Path, io: Mapping[str, Mapping[str, str]] | None = None) -> None:
        from coremltools.converters.mil.mil import types

        self.function = function = _load_program(package).functions["main"]
        missing = sorted({op.op_type for op in function.operations if not _evaluable(op)})
        if missing:
            raise UnsupportedError("cannot evaluate this Core ML program on Linux",
                                   f"coremltools has no numpy evaluation for MIL op(s) {', '.join(missing)}",
                                   "validate on a Mac (Core ML predicts only on macOS)")
        io = io or {}
        self.in_map = dict(io.get("inputs", {})) or {name: name for name in function.inputs}
        self.out_map = dict(io.get("outputs", {})) or {var.name: var.name for var in function.outputs}
        self.input_dtypes = {onnx_name: types.nptype_from_builtin(function.inputs[cm].dtype)
                             for onnx_name, cm in self.in_map.items()}
        self.op_types = sorted({op.op_type for op in function.operations})
        self.num_ops = len(function.operations)
        self._constants: dict[str, Any] = {}
        with quiet():
            for op in function.operations:
                if op.op_type == "const":
                    results = [out.val for out in op.outputs]
                elif op.op_type.startswith("constexpr_"):
                    results = op.materialized_val_inference()
                else:
                    continue
                if not isinstance(results, (list, tuple)):
                    results = [results]
                for out, value in zip(op.outputs, results, strict=True):
                    self._constants[out.name] = value

    def __call__(self, feeds: Mapping[str, np.ndarray], observe: Callable[[str, np.ndarray], None] | None = None
                 ) -> dict[str, np.ndarray]:
        """The program's outputs for ``feeds``; ``observe(name, value)`` sees every input and op output."""
        import numpy as np
        from coremltools.converters.mil.mil import Builder as mb
        from coremltools.converters.mil.mil import Function, types

        function = self.function
        values: dict[str, Any] = dict(self._constants)
        for onnx_name, coreml_name in self.in_map.items():
            if onnx_name not in feeds:
                raise DataError("input missing for the Core ML program", f"no array for input '{onnx_name}'")
            values[function.inputs[coreml_name].name] = np.asarray(feeds[onnx_name],
                                                                   dtype=self.input_dtypes[onnx_name])
            if observe is not None:
                observe(coreml_name, values[function.inputs[coreml_name].name])
        with quiet(), Function({}, opset_version=function.opset_version):
            for op in function.operations:
                if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                    continue
                kwargs = {}
                for param, var in op.inputs.items():
                    if isinstance(var, (list, tuple)):
                        kwargs[param] = [_python_scalar(values.get(v.name, v.val)) for v in var]
                    else:
                        kwargs[param] = _python_scalar(values[var.name] if var.name in values else var.val)
                try:
                    if op.op_type in REFERENCE_OPS:
                        dtype = types.nptype_from_builtin(op.outputs[0].dtype)
                        results = [np.asarray(REFERENCE_OPS[op.op_type](op, kwargs)).astype(dtype)]
                    else:
                        built = getattr(mb, op.op_type)(**kwargs)
                        results = [v.val for v in (built if isinstance(built, (list, tuple)) else [built])]
                except Exception as exc:
                    raise BackendError(f"numpy evaluation of MIL op '{op.name}' ({op.op_type}) failed",
                                       first_line(exc)) from exc
                for out, value in zip(op.outputs, results, strict=True):
                    if value is None:
                        raise UnsupportedError("cannot evaluate this Core ML program on Linux",
                                               f"MIL op '{op.name}' ({op.op_type}) gave no value for these inputs")
                    values[out.name] = value
                    if observe is not None:
                        observe(out.name, value)
        outputs = {var.name: var for var in function.outputs}
        return {onnx_name: np.asarray(values[outputs[coreml_name].name])
                for onnx_name, coreml_name in self.out_map.items()}


def evaluate_program(artifact: Artifact, directory: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the artifact's ML Program for ``feeds`` (ONNX names in and out), computed with numpy."""
    return ProgramEvaluator(package_path(artifact, directory), artifact.metadata.get("io", {}))(feeds)


def activation_ranges(package: Path, io: Mapping[str, Mapping[str, str]], samples: Iterable[Mapping[str, Any]]
                      ) -> tuple[dict[str, dict[str, float]], int]:
    """Min/max of every input and op output of the program over ``samples`` (ONNX-named feeds), in the form
    coremltools' activation quantizer takes (``{name: {"rmin", "rmax"}}``), with the inputs and outputs of each
    ``concat`` sharing one range as coremltools does; and the number of samples run. The program's outputs are
    left out (coremltools keeps no range for them)."""
    import numpy as np

    evaluator = ProgramEvaluator(package, io)
    ranges: dict[str, dict[str, float]] = {}

    def observe(name: str, value: np.ndarray) -> None:
        array = np.asarray(value)
        if array.size == 0 or array.dtype.kind != "f":
            return
        low, high = float(array.min()), float(array.max())
        seen = ranges.get(name)
        ranges[name] = {"rmin": low if seen is None else min(low, seen["rmin"]),
                        "rmax": high if seen is None else max(high, seen["rmax"])}

    count = 0
    for feeds in samples:
        evaluator(feeds, observe)
        count += 1
    function = evaluator.function
    for var in function.outputs:
        ranges.pop(var.name, None)
    groups = [[v.name for v in op.inputs["values"]] + [op.outputs[0].name]
              for op in function.operations if op.op_type == "concat"]
    changed = True
    while changed:  # inputs shared between concats join their groups: iterate to a fixed point
        changed = False
        for group in groups:
            present = [ranges[n] for n in group if n in ranges]
            if not present:
                continue
            low, high = min(r["rmin"] for r in present), max(r["rmax"] for r in present)
            for name in group:
                if name in ranges and (ranges[name]["rmin"], ranges[name]["rmax"]) != (low, high):
                    ranges[name] = {"rmin": low, "rmax": high}
                    changed = True
    return ranges, count


LABEL = "MIL program evaluated on Linux, not Core ML's kernels"


class MILProgramRunner(Runner):
    """The bundle's ML Program evaluated with numpy: what ``validate`` compares on a machine without Core ML."""

    def __init__(self, artifact: Artifact, directory: Path) -> None:
        from onnxsmith.model import TensorSpec

        evaluator = ProgramEvaluator(package_path(artifact, directory), artifact.metadata.get("io", {}))
        self._evaluate = evaluator
        function = evaluator.function

        def spec(name: str, var: Any) -> TensorSpec:
            import numpy as np
            from coremltools.converters.mil.mil import types

            dtype = np.dtype(types.nptype_from_builtin(var.dtype)).name
            return TensorSpec(name, dtype, tuple(int(d) for d in var.shape))

        outputs = {var.name: var for var in function.outputs}
        self.inputs = tuple(spec(n, function.inputs[cm]) for n, cm in evaluator.in_map.items())
        self.outputs = tuple(spec(n, outputs[cm]) for n, cm in evaluator.out_map.items())
        computed = [t for t in evaluator.op_types if t != "const" and not t.startswith("constexpr_")]
        own = [t for t in computed if t in REFERENCE_OPS]
        self.emulation = Emulation(
            LABEL,
            checked=(f"the ML Program saved in the bundle ({evaluator.num_ops} MIL ops: {', '.join(computed)}), "
                     "op by op as converted",
                     "its weights as stored (fp16 rounding; int8 or palettized weights decompressed as Core ML "
                     "decompresses them)",
                     "fp16 programs round every op's output to fp16",
                     "coremltools' numpy value_inference per op" + (
                         f"; {', '.join(own)} by onnxsmith's numpy references (fp32 accumulation)" if own else "")),
            not_checked=("Core ML's own kernels on the CPU, GPU or Neural Engine (their accumulation order and "
                         "precision, fused ops, layouts)",
                         "which compute unit Core ML places each op on",
                         "that the package loads on the target OS version",
                         "speed: nothing here is timed (profile on a Mac)"),
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._evaluate(feeds)
