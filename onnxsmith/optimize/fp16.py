"""``fp16``: weights and activations in float16, inputs and outputs kept float32, with an overflow guard.

The guard runs the fp32 model with ONNX Runtime on calibration data (every intermediate tensor exposed, graph
optimizations off) and keeps in fp32 every node that reads or writes a tensor whose magnitude exceeds the fp16
limit (65504), and every node that reads a weight that does. The conversion is ONNX Runtime's
``onnxruntime.transformers.float16.convert_float_to_float16`` with those nodes in ``node_block_list`` (it puts
Cast nodes at the fp16/fp32 boundaries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import BackendError, MissingDependencyError, first_line
from onnxsmith.optimize.passes import Change, Pass, feed_batches, ort_session, package_version, toposort

if TYPE_CHECKING:
    import onnx

    from onnxsmith.data.dataset import Dataset

FP16_MAX = 65504.0


@dataclasses.dataclass(frozen=True)
class Fp16Config:
    threshold: float = FP16_MAX
    """Magnitude above which a tensor is considered to overflow fp16 (lower it for headroom)."""
    samples: int = 32
    """Calibration samples used to measure activation ranges."""
    keep_io_types: bool = True
    """Keep the model's inputs and outputs float32 (Casts at the boundaries)."""
    op_block_list: tuple[str, ...] = ()
    """Extra op types to keep in fp32 (added to ONNX Runtime's default list)."""


def activation_ranges(model: onnx.ModelProto, data: Dataset, samples: int) -> tuple[dict[str, float], int]:
    """Max |value| of every float tensor produced in ``model`` over up to ``samples`` samples, and the count used."""
    import numpy as np
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in outputs:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                outputs.add(name)
    try:
        session = ort_session(probe)
    except MissingDependencyError:
        raise
    except Exception as exc:
        raise BackendError("cannot measure activation ranges", f"ONNX Runtime could not load the model "
                           f"({first_line(exc)})") from exc
    names = [o.name for o in session.get_outputs()]
    ranges: dict[str, float] = {}
    used = 0
    for feeds in feed_batches(model, data, samples):
        for name, value in feeds.items():
            if np.issubdtype(value.dtype, np.floating) and value.size:
                ranges[name] = max(ranges.get(name, 0.0), float(np.nanmax(np.abs(value))))
        try:
            results = session.run(names, feeds)
        except Exception as exc:
            raise BackendError("cannot measure activation ranges", f"ONNX Runtime failed ({first_line(exc)})") from exc
        for name, value in zip(names, results):
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.floating) and value.size:
                finite = value[np.isfinite(value)]
                peak = float(np.abs(finite).max()) if finite.size else 0.0
                ranges[name] = max(ranges.get(name, 0.0), peak)
        used += len(next(iter(feeds.values())))
    return ranges, used


def overflow_guard(model: onnx.ModelProto, ranges: dict[str, float], threshold: float) -> list[dict[str, Any]]:
    """Nodes to keep in fp32, each with the reason."""
    import numpy as np
    from onnx import numpy_helper

    big_weights = {}
    for init in model.graph.initializer:
        if init.data_type in (1, 11):  # float, double
            arr = numpy_helper.to_array(init)
            if arr.size and float(np.abs(arr).max()) > threshold:
                big_weights[init.name] = float(np.abs(arr).max())
    kept = []
    for node in model.graph.node:
        reasons = []
        for name in node.output:
            if ranges.get(name, 0.0) > threshold:
                reasons.append(f"output '{name}' reaches {ranges[name]:.4g}")
        for name in node.input:
            if name in big_weights:
                reasons.append(f"weight '{name}' has values up to {big_weights[name]:.4g}")
            elif ranges.get(name, 0.0) > threshold:
                reasons.append(f"input '{name}' reaches {ranges[name]:.4g}")
        if reasons:
            kept.append({"node": node.name, "op_type": node.op_type,
                         "why": "; ".join(reasons) + f" (fp16 max {FP16_MAX:g}, threshold {threshold:g})"})
    return kept


def _name_nodes(model: onnx.ModelProto) -> None:
    """The converter's block list works by node name: give unnamed nodes unique names."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def drop_round_trips(model: onnx.ModelProto, original_nodes: set[str]) -> int:
    """Remove the fp32 -> fp16 -> fp32 Cast pairs the converter puts between two nodes kept in fp32.

    The converter casts every kept node's outputs to fp16 and back, so a value passed between two fp32 nodes would
    still overflow; feeding the fp32 tensor straight through is exact. Only Casts the converter added are touched.
    Returns the number of round trips removed."""
    from onnx import TensorProto

    graph = model.graph
    producers = {out: n for n in graph.node for out in n.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast" or node.name in original_nodes:
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dropped = []
    identities = 0
    for node in graph.node:
        if cast_to(node) != TensorProto.FLOAT:
            continue
        first = producers.get(node.input[0])
        if first is None or cast_to(first) != TensorProto.FLOAT16:
            continue
        if node.output[0] in graph_outputs:  # keep the output's name: pass the fp32 value through an Identity
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = first.input[0]
            identities += 1
            continue
        rename[node.output[0]] = first.input[0]
        dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    used = {name for n in graph.node for name in n.input} | graph_outputs
    for node in [n for n in graph.node if cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used]:
        graph.node.remove(node)
    return len(dropped) + identities


class Fp16Pass(Pass):
    """Convert to float16 (I/O kept float32); nodes whose values overflow fp16 stay float32."""

    name = "fp16"
    config_type = Fp16Config

    def _apply(self, model: onnx.ModelProto, calibration: Dataset | None) -> Change:
        import onnx

        config: Fp16Config = self.config
        try:
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime", "",
                                         "the fp16 pass uses onnxruntime.transformers.float16") from exc
        notes = []
        _name_nodes(model)
        if calibration is None:
            from onnxsmith.data.dataset import synthetic
            from onnxsmith.model import LoadedModel
            from onnxsmith.optimize.passes import input_specs

            stand_in = LoadedModel(source=Path("model.onnx"), proto=model,
                                   inputs=input_specs(model), outputs=(), opset=0, fingerprint="",
                                   shape_overrides={})
            calibration = synthetic(stand_in, config.samples)
            notes.append("no calibration data: activation ranges measured on generated inputs (N(0,1)); real "
                         "inputs may reach larger values")
        ranges, used = activation_ranges(model, calibration, config.samples)
        kept = overflow_guard(model, ranges, config.threshold)
        block_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(config.op_block_list))
        by_default = [{"node": n.name, "op_type": n.op_type, "why": "op type in the fp32 block list (no fp16 "
                       "kernel or unsafe in fp16)"} for n in model.graph.node if n.op_type in block_ops]
        quiet = io.StringIO()
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(quiet):
                warnings.simplefilter("always")
                new = convert_float_to_float16(model, keep_io_types=config.keep_io_types,
                                               op_block_list=block_ops, node_block_list=[k["node"] for k in kept],
                                               disable_shape_infer=model.ByteSize() > 2_000_000_000)
        except Exception as exc:
            raise BackendError("fp16 conversion failed", first_line(exc)) from exc
        for warning in caught:
            text = (str(warning.message).strip().splitlines() or [""])[0]
            if "truncated" in text.lower() or "clamp" in text.lower() or "out of" in text.lower():
                notes.append(f"converter: {text}")
        round_trips = drop_round_trips(new, {n.name for n in model.graph.node})
        toposort(new)
        try:
            onnx.checker.check_model(new)
        except onnx.checker.ValidationError as exc:
            raise BackendError("fp16 conversion produced an invalid model", first_line(exc)) from exc
        casts = sum(1 for n in new.graph.node if n.op_type == "Cast") - sum(1 for n in model.graph.node
                                                                           if n.op_type == "Cast")
        fp32_nodes = kept + by_default
        converted = len(model.graph.node) - len(fp32_nodes)
        peak = max(ranges.values()) if ranges else 0.0
        summary = (f"fp16 weights and activations in {converted} of {len(model.graph.node)} nodes; "
                   f"{len(fp32_nodes)} kept fp32" + (f" ({len(kept)} by the overflow guard)" if kept else "")
                   + f"; I/O {'fp32' if config.keep_io_types else 'fp16'}; {casts} Cast nodes added")
        details = {
            "ops_kept_fp32": fp32_nodes,
            "overflow_guard": {"threshold": config.threshold, "samples": used, "data": calibration.source,
                               "tensors_measured": len(ranges), "largest_activation": peak},
            "casts_added": casts,
            "fp16_round_trips_removed": round_trips,
            "converter": f"onnxruntime.transformers.float16 (onnxruntime {package_version('onnxruntime')})",
        }
        return Change(new, f"onnxruntime {package_version('onnxruntime')} float16 converter", summary, details,
                      tuple(notes))
