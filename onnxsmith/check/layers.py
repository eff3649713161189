"""Per-layer divergence: where does an artifact start to compute something else than the fp32 reference?

Every float tensor a node of the reference (fp32) ONNX writes is a *layer output*. The reference runs with all of
them exposed as extra graph outputs (ONNX Runtime); the artifact runs with the same tensors exposed the backend's
own way (:meth:`onnxsmith.plugin.Compiler.load_layers`: extra outputs of the ONNX Runtime graph, including the
quantized tensors of a QDQ graph dequantized; extra outputs of the OpenVINO model), or, for a backend without
that hook whose artifact was compiled from the reference ONNX itself, by compiling that ONNX again with the
extra outputs. Both run on the same inputs, batch by batch, and every figure comes from the one comparison
engine (:func:`onnxsmith.check.numerics.compare`).

Caveat, said in every result: exposing a tensor makes it a graph output, so a backend cannot fuse across it;
the tensors are those of the same compiled precision, not necessarily of the very same kernels.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import DataError, UnsupportedError
from onnxsmith.precisions import min_cosine_for

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from onnxsmith.bundle import Bundle
    from onnxsmith.data.dataset import Dataset

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "RNN",
                         "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "Einsum"})
"""Ops a layer is named after: the elementwise ops that follow one (bias, activation, norm) belong to it."""
_FOLLOWERS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Gelu", "HardSwish", "HardSigmoid",
                        "Add", "Mul", "BatchNormalization", "Softplus", "Elu", "Selu", "PRelu"})
_FLOAT_TYPES = (1, 10, 16, 11)  # FLOAT, FLOAT16, BFLOAT16, DOUBLE
LAYERS_JSON = "layers.json"
LAYERS_PNG = "layers.png"


@dataclasses.dataclass(frozen=True)
class LayerTensor:
    """One float tensor a reference node writes."""

    tensor: str
    node: str
    op_type: str
    layer: str
    """The compute node it belongs to (``conv3`` for the Relu after ``conv3``), else the node itself."""
    inputs: tuple[str, ...]
    """Earlier layer tensors it is computed from (for the error each node adds)."""


@dataclasses.dataclass(frozen=True)
class LayerError:
    index: int
    tensor: str
    node: str
    op_type: str
    layer: str
    cosine_min: float
    max_abs_error: float
    max_rel_error: float
    rel_l2_error: float
    """Worst sample's ``||artifact - reference|| / ||reference||``."""
    added: float | None
    """``rel_l2_error`` divided by the largest of its inputs' (how much this node made the error grow); ``None``
    when its inputs were exact and it has an error of its own."""
    exceeds: bool


@dataclasses.dataclass(frozen=True)
class Divergence:
    backend: str
    precision_used: str
    samples: int
    data: str
    min_cosine: float
    max_rel_l2: float | None
    exposed_by: str
    layers: tuple[LayerError, ...]
    first: str | None
    """The first layer (topological order) whose output exceeds the tolerance."""
    first_tensor: str | None
    growth: str
    """How the error grows after the first layer that exceeds the tolerance, in words."""
    not_exposed: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = [dataclasses.asdict(layer) for layer in self.layers]
        data["not_exposed"] = list(self.not_exposed)
        data["notes"] = list(self.notes)
        return data


def _inferred(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is a help for the types; without it, typed tensors are what we have
        return proto


def layer_tensors(proto: onnx.ModelProto) -> list[LayerTensor]:
    """Every float tensor a node of ``proto``'s main graph writes, in node (topological) order; graph outputs
    included, Constant nodes and shape arithmetic left out."""
    proto = _inferred(proto)
    graph = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
    producer: dict[str, Any] = {}
    layer_of: dict[str, str] = {}
    out: list[LayerTensor] = []
    known: set[str] = set()
    for node in graph.node:
        if node.op_type in ("Constant", "ConstantOfShape", "Shape", "Size"):
            continue
        first_input = producer.get(node.input[0]) if node.input else None
        if node.op_type in COMPUTE_OPS or first_input is None:
            layer = node.name or node.output[0]
        elif node.op_type in _FOLLOWERS:
            layer = layer_of.get(node.input[0], node.name or node.output[0])
        else:
            layer = node.name or node.output[0]
        sources = tuple(dict.fromkeys(i for i in node.input if i in known))
        for name in node.output:
            if not name or types.get(name) not in _FLOAT_TYPES:
                continue
            producer[name] = node
            layer_of[name] = layer
            known.add(name)
            out.append(LayerTensor(name, node.name or name, node.op_type, layer, sources))
    return out


def with_outputs(proto: onnx.ModelProto, tensors: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``proto`` with ``tensors`` (float intermediates) added as graph outputs."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inferred = _inferred(model)
    infos = {v.name: v for v in inferred.graph.value_info}
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            info = infos.get(name)
            if info is not None and info.type.tensor_type.HasField("shape"):
                model.graph.output.append(info)
            else:
                model.graph.output.append(onnx.helper.make_tensor_value_info(
                    name, info.type.tensor_type.elem_type if info is not None else 1, None))
            present.add(name)
    return model


def ort_runner_for(proto: onnx.ModelProto, threads: int = 0, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime runner on an in-memory model (written to a private temporary folder: ONNX Runtime reads
    the file, external data included, when the session is created, so the folder goes right after)."""
    import onnx

    from onnxsmith.check.reference import OnnxRuntimeRunner

    with tempfile.TemporaryDirectory(prefix="onnxsmith-layers-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(proto, str(path), save_as_external_data=proto.ByteSize() > 1_800_000_000)
        return OnnxRuntimeRunner(path, providers or ["CPUExecutionProvider"], threads)


def _layer_backends() -> list[str]:
    """The registered backends that expose per-layer outputs themselves (``Compiler.exposes_layers``)."""
    from onnxsmith.registry import backend_names, get_backend

    names = []
    for name in backend_names():
        try:
            if get_backend(name).exposes_layers:
                names.append(name)
        except Exception:  # noqa: BLE001 - a broken plugin is simply not suggested
            continue
    return names


def _artifact_runner(bundle: Bundle, names: Sequence[str]) -> tuple[Any, str, list[str]]:
    """The artifact loaded with ``names`` exposed: (runner, how, notes)."""
    from onnxsmith.plugin import backend_call
    from onnxsmith.registry import get_backend

    backend = get_backend(bundle.backend)
    bundle.load_runner().close()  # the same checks as any load (version, runs here), with their messages
    with backend_call(bundle.backend, "expose per-layer outputs"):
        runner = backend.load_layers(bundle.artifact, bundle.artifact_dir, bundle.target(), list(names))
    if runner is not None:
        return runner, f"{bundle.backend}'s own intermediate tensors (load_layers)", []
    manifest = bundle.manifest
    if manifest["model"]["fingerprint"] != manifest.get("reference_fingerprint"):
        raise UnsupportedError(f"backend '{bundle.backend}' cannot expose per-layer outputs of this bundle",
                               "it has no load_layers hook, and the artifact was compiled from a transformed ONNX "
                               "(an ONNX pass) that the bundle does not keep",
                               "compile the model itself with this backend and run 'debug diverge' on that bundle")
    if backend.needs_calibration(bundle.manifest["precision"], None):  # type: ignore[arg-type]
        raise UnsupportedError(f"backend '{bundle.backend}' cannot expose per-layer outputs of this "
                               f"{bundle.manifest['precision']} bundle", "it has no load_layers hook, and compiling "
                               "again with extra outputs would need the calibration data",
                               f"use a backend with per-layer outputs ({', '.join(_layer_backends()) or 'none installed'})")
    import onnx

    from onnxsmith.build.compile import compile_model
    from onnxsmith.model import load_model
    from onnxsmith.profiles import load_profile

    proto = with_outputs(onnx.load(str(bundle.reference_model)), names)
    with tempfile.TemporaryDirectory(prefix="onnxsmith-layers-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(proto, str(path))
        shapes = {s.name: tuple(int(d) for d in s.shape) for s in bundle.inputs}  # type: ignore[arg-type]
        model = load_model(path, shapes)
        again = compile_model(model, bundle.target(), profile=load_profile(manifest.get("profile") or "balanced"),
                              output=Path(tmp) / "bundle", backend=bundle.backend,
                              precision=manifest["precision"])
        runner = again.load_runner()
    return runner, (f"the reference ONNX with extra outputs, compiled again by {bundle.backend} at "
                    f"{manifest['precision']} (it has no per-layer output hook)"), [
        f"{bundle.backend} compiled the model again with every layer output exposed; backend options given at "
        "compile time were not repeated"]


def diverge(bundle: Bundle, data: Dataset | None = None, *, samples: int = 16, seed: int = 0,
            min_cosine: float | None = None, max_rel_l2: float | None = None,
            batches: int | None = None) -> Divergence:
    """Per-layer error of ``bundle``'s artifact against ONNX Runtime fp32 on the reference model, on ``data`` (or
    seeded generated inputs); the first layer past the tolerance (cosine below ``min_cosine``, default the
    precision's validation threshold, or relative L2 error above ``max_rel_l2``) and how the error grows after."""
    import numpy as np
    import onnx

    from onnxsmith.data.dataset import check_against_model, synthetic
    from onnxsmith.model import load_model
    from onnxsmith.check.numerics import compare
    from onnxsmith.plugin import backend_call
    from onnxsmith.check.validation import check_min_cosine

    check_min_cosine(min_cosine)
    if max_rel_l2 is not None and not (max_rel_l2 > 0 and np.isfinite(max_rel_l2)):
        raise DataError(f"invalid maximum relative error {max_rel_l2}", "it is a positive number",
                        "for example --max-rel-error 0.05")
    precision = bundle.manifest["precision_used"]
    threshold = min_cosine_for(precision, min_cosine)
    if data is None:
        data = synthetic(load_model(bundle.reference_model, check=False), samples, seed, bundle.batch_inputs)
    else:
        whole, per_feed = check_against_model(data.arrays, bundle.inputs, f"data '{data.source}'",
                                              bundle.batch_inputs)
        data = dataclasses.replace(data, whole=whole, batch=per_feed)
        if len(data) > samples:
            data = data.subset(samples)
    reference_proto = onnx.load(str(bundle.reference_model))
    tensors = layer_tensors(reference_proto)
    if not tensors:
        raise DataError("the model has no float intermediate tensors", "nothing to compare layer by layer")
    names = [t.tensor for t in tensors]
    outputs = [o.name for o in bundle.outputs]
    runner, how, notes = _artifact_runner(bundle, names)
    sums: dict[str, dict[str, float]] = {}
    count = 0
    with runner, ort_runner_for(with_outputs(reference_proto, names)) as reference:
        for index, feeds in enumerate(data.batches()):
            if batches is not None and index >= batches:
                break
            with backend_call(bundle.backend, "run"):
                got = runner.run(feeds)
            want = reference.run(feeds)
            if data.one_feed:
                got = {k: np.asarray(v)[None] for k, v in got.items()}
                want = {k: np.asarray(v)[None] for k, v in want.items()}
            count += len(np.asarray(want[outputs[0]])) if outputs and outputs[0] in want else 1
            for name in names:
                if name not in got or name not in want or np.shape(got[name]) != np.shape(want[name]):
                    continue
                stats = compare({name: got[name]}, {name: want[name]}, names=[name]).per_output[name]
                acc = sums.setdefault(name, {"cosine_min": 1.0, "max_abs_error": 0.0, "max_rel_error": 0.0,
                                             "rel_l2_error": 0.0})
                acc["cosine_min"] = min(acc["cosine_min"], stats["cosine_min"])
                for key in ("max_abs_error", "max_rel_error", "rel_l2_error"):
                    acc[key] = max(acc[key], stats[key])
    if not count:
        raise DataError("not enough samples for per-layer divergence", "not one full batch to run")
    rows: list[LayerError] = []
    rel_of: dict[str, float] = {}
    for layer in tensors:
        stats = sums.get(layer.tensor)
        if stats is None:  # fused away: pass its inputs' error on, so the next exposed tensor is judged fairly
            rel_of[layer.tensor] = max((rel_of[i] for i in layer.inputs if i in rel_of), default=0.0)
            continue
        rel = stats["rel_l2_error"]
        before = [rel_of[i] for i in layer.inputs if i in rel_of]
        base = max(before, default=0.0)
        added = rel / base if base > 0 else (None if rel > 0 else 1.0)
        exceeds = stats["cosine_min"] < threshold or (max_rel_l2 is not None and rel > max_rel_l2)
        rel_of[layer.tensor] = rel
        rows.append(LayerError(len(rows), layer.tensor, layer.node, layer.op_type, layer.layer,
                               round(stats["cosine_min"], 8), stats["max_abs_error"], stats["max_rel_error"], rel,
                               added, bool(exceeds)))
    not_exposed = tuple(n for n in names if n not in sums)
    first = next((r for r in rows if r.exceeds), None)
    growth = _growth(rows, first)
    notes.append("exposing a tensor makes it a graph output, so the backend cannot fuse across it: these are the "
                 "tensors of the same compiled precision, not necessarily of the very same kernels")
    return Divergence(bundle.backend, precision, count, data.source, threshold, max_rel_l2, how, tuple(rows),
                      None if first is None else first.layer, None if first is None else first.tensor, growth,
                      not_exposed, tuple(notes))


def _growth(rows: Sequence[LayerError], first: LayerError | None) -> str:
    if not rows:
        return "no layer output could be compared"
    if first is None:
        worst = max(rows, key=lambda r: r.rel_l2_error)
        return (f"no layer exceeds the tolerance; the largest relative error is {worst.rel_l2_error:.3g} at "
                f"{worst.layer} ({worst.tensor})")
    after = [r for r in rows if r.index >= first.index]
    last = rows[-1]
    jumps = sorted((r for r in rows if r.exceeds and (r.added is None or r.added > 2)),
                   key=lambda r: -(r.added or float("inf")))[:3]
    text = (f"first past the tolerance at {first.layer} ({first.tensor}: cosine {first.cosine_min:.4f}, relative "
            f"error {first.rel_l2_error:.3g}); from there to the last layer output ({last.tensor}) the relative "
            f"error goes {first.rel_l2_error:.3g} -> {last.rel_l2_error:.3g}"
            + (f" ({last.rel_l2_error / first.rel_l2_error:.1f}x)" if first.rel_l2_error > 0 else "")
            + f"; {sum(r.exceeds for r in after)} of the {len(after)} layer outputs from there on exceed it")
    if jumps:
        text += "; the error grows most at " + ", ".join(
            f"{r.layer} ({'from exact inputs' if r.added is None else f'{r.added:.1f}x its inputs'})"
            for r in jumps)
    return text


def divergence_png(result: Divergence) -> bytes | None:
    """Relative error (log) and cosine per layer output, the tolerance and the first layer past it marked."""
    import io

    if not result.layers:
        return None
    from onnxsmith.optimize.plots import pyplot_module

    plt = pyplot_module("layers")
    fig, ax = plt.subplots(figsize=(max(6.0, min(18.0, len(result.layers) * 0.25)), 3.6))
    xs = [r.index for r in result.layers]
    ax.semilogy(xs, [max(r.rel_l2_error, 1e-9) for r in result.layers], "o-", color="#0969da", markersize=3,
                label="relative L2 error")
    if result.max_rel_l2:
        ax.axhline(result.max_rel_l2, color="#8c959f", linestyle="--", linewidth=0.8)
    ax.set_xlabel("layer output (topological order)")
    ax.set_ylabel("relative error vs fp32")
    twin = ax.twinx()
    twin.plot(xs, [r.cosine_min for r in result.layers], "s-", color="#1a7f37", markersize=2, linewidth=0.8,
              label="cosine (min over samples)")
    twin.axhline(result.min_cosine, color="#1a7f37", linestyle=":", linewidth=0.8)
    twin.set_ylabel("cosine")
    first = next((r for r in result.layers if r.exceeds), None)
    if first is not None:
        ax.axvline(first.index, color="#cf222e", linewidth=1)
        ax.annotate(f"first past tolerance: {first.layer}", (first.index, max(first.rel_l2_error, 1e-9)),
                    textcoords="offset points", xytext=(6, 6), color="#cf222e", fontsize=8)
    if len(result.layers) <= 40:
        ax.set_xticks(xs)
        ax.set_xticklabels([r.tensor[:18] for r in result.layers], rotation=70, fontsize=7)
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="lower right", fontsize=7, frameon=False)
    ax.set_title(f"{result.backend} {result.precision_used} vs ONNX Runtime fp32, per layer ({result.samples} samples)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_divergence(bundle: Bundle, result: Divergence) -> dict[str, Any]:
    """``layers.json`` and ``layers.png`` in the bundle, and the report rebuilt with its section."""
    from onnxsmith.report import save_record

    record = result.to_json()
    png = divergence_png(result)
    if png is not None:
        tmp = bundle.path / f".{LAYERS_PNG}.tmp"
        tmp.write_bytes(png)
        tmp.replace(bundle.path / LAYERS_PNG)
        bundle.wrote(LAYERS_PNG)
        record["plot"] = LAYERS_PNG
    save_record(bundle, LAYERS_JSON, record)
    return record
