"""int8 sensitivity per layer and the smallest keep-list that meets an accuracy budget.

Measured on the one backend-neutral form: the model quantized to QDQ int8 by :mod:`onnxsmith.optimize.quantize`
(per-channel weights, per-tensor activations), calibrated **once** (the ranges are kept in an ONNX Runtime
calibration cache and every variant reuses them), run by ONNX Runtime on the validation data and compared with the
fp32 reference through :mod:`onnxsmith.check.numerics`. A *layer* is a compute node the quantizer quantizes (Conv,
MatMul, Gemm...); keeping a layer means leaving it out of quantization (``nodes_to_exclude``).

1. **Alone**: the accuracy drop with only that layer quantized. With more than ``single_limit`` layers, groups
   are measured first and bisected: a group quantized alone within the noise floor clears all its layers at once,
   a harmful group is split in halves until single layers remain.
2. **Keep-list**: layers by sensitivity, most harmful first, are kept in fp32 until everything else quantized meets
   the budget; then each kept layer is tried back in int8 (least harmful first) and quantized again if the budget
   still holds. Greedy, not an exhaustive search: the result is minimal (no single kept layer can be dropped), not
   guaranteed to be the smallest possible.
3. **Cost** of each kept layer: the accuracy drop when it alone goes back to int8 ("everything but it" quantized
   against the keep-list), and, per backend, its time in the mixed artifact against the same layer's time in the
   full int8 one (from the backend's own per-layer profiler, :mod:`onnxsmith.optimize.precision_debug`).

ONNX Runtime's QDQ quantizer quantizes a tensor when its producer *or* a consumer is quantized, so an activation
with outliers between two layers is only kept wide when both are kept: the keep-list can name pairs.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UserInputError

if TYPE_CHECKING:
    import onnx

    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel

LAYER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU")


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    name: str
    op_type: str
    alone_drop: float | None
    """Quality drop with only this layer quantized (``None``: cleared as part of a safe group)."""
    method: str
    """``alone`` or ``safe group of N`` (bisection)."""


@dataclasses.dataclass(frozen=True)
class KeptLayer:
    name: str
    op_type: str
    alone_drop: float | None
    cost_drop: float
    """How much the quality drops when this layer alone goes back to int8 (the rest of the keep-list kept)."""


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    metric: str
    """``accuracy`` (labelled data), ``agreement`` (top-1 with fp32) or ``cosine_min``."""
    reference_quality: float
    int8_quality: float
    int8_drop: float
    budget: float
    layers: tuple[LayerSensitivity, ...]
    """Every quantizable layer, most harmful first."""
    keep: tuple[KeptLayer, ...]
    """The keep-list (empty when full int8 meets the budget)."""
    mixed_quality: float | None
    mixed_drop: float | None
    met: bool
    """Whether full int8 or int8 with the keep-list meets the budget."""
    evaluations: int
    calibration: str
    samples: int
    notes: tuple[str, ...] = ()

    @property
    def keep_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keep)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = [dataclasses.asdict(x) for x in self.layers]
        data["keep"] = [dataclasses.asdict(x) for x in self.keep]
        data["notes"] = list(self.notes)
        data["keep_names"] = list(self.keep_names)
        return data


def quantizable_layers(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, op type) of the compute nodes a full QDQ quantization quantized (fed by a DequantizeLinear)."""
    producers = {out: n for n in proto.graph.node for out in n.output}
    found = []
    for node in proto.graph.node:
        if node.op_type in LAYER_OPS and node.name and any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input):
            found.append((node.name, node.op_type))
    return found


class _Evaluator:
    """Quantize with a keep-list (calibration ranges computed once) and measure the quality drop on ONNX Runtime."""

    def __init__(self, model: LoadedModel, data: Dataset, calibration: Dataset, metric: str, work: Path,
                 config: dict[str, Any]) -> None:
        from onnxsmith.optimize.evaluate import reference_outputs

        self.model, self.data, self.calibration, self.metric = model, data, calibration, metric
        self.cache = str(work / "calibration.json")
        self.config = config
        self.source = model
        if config.get("preprocess", True):  # once, not per variant: the pass would pre-process every time
            self.source, self.config = _preprocessed(model, work), {**config, "preprocess": False}
        self.reference = reference_outputs(model, data)
        self.evaluations = 0
        self._memo: dict[frozenset[str], float] = {}
        self.names = [o.name for o in model.outputs]

    def reference_quality(self) -> float:
        return self.reference.accuracy if self.metric == "accuracy" else 1.0  # type: ignore[return-value]

    def quantize(self, keep: Sequence[str]) -> Any:
        from onnxsmith.optimize.passes import get_pass

        result = get_pass("int8_qdq", **self.config, nodes_to_exclude=tuple(sorted(keep)),
                          calibration_cache=self.cache).run(self.source, calibration=self.calibration)
        return result.model

    def quality(self, keep: Sequence[str]) -> float:
        key = frozenset(keep)
        if key in self._memo:
            return self._memo[key]
        from onnxsmith.data.dataset import model_batch
        from onnxsmith.check.layers import ort_runner_for
        from onnxsmith.check.numerics import collect, compare

        proto = self.quantize(keep)
        batch = model_batch(self.model.inputs[0]) if self.model.inputs else 1
        with ort_runner_for(proto) as runner:
            got = collect(runner, self.data.batches(batch), self.names)
        n = len(got[self.names[0]])
        want = {k: self.reference.outputs[k][:n] for k in self.names}
        result = compare(got, want, self.data.labels, self.names)
        value = {"accuracy": result.accuracy, "agreement": result.top1_agreement,
                 "cosine_min": result.cosine_min}[self.metric]
        self.evaluations += 1
        self._memo[key] = float(value if value is not None else 0.0)
        return self._memo[key]

    def drop(self, keep: Sequence[str]) -> float:
        return self.reference_quality() - self.quality(keep)


def _preprocessed(model: LoadedModel, work: Path) -> LoadedModel:
    """``model`` after ONNX Runtime's quantization pre-processing (what the int8_qdq pass runs first), or as it is
    when that fails (the pass then skips it too)."""
    import contextlib
    import io

    from onnxsmith.model import load_model
    from onnxsmith.optimize.quantize import _quantization, _quiet_logging

    q = _quantization()
    out = work / "preprocessed" / model.path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
            q.shape_inference.quant_pre_process(str(model.path), str(out))
        return load_model(out, {s.name: tuple(int(d) for d in s.shape) for s in model.inputs})  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - pre-processing is an aid, as in the pass
        return model


def choose_metric(model: LoadedModel, data: Dataset) -> str:
    """The quality measure the ladder uses too: accuracy with labels on a classifier, else top-1 agreement, else
    the lowest cosine to fp32."""
    from onnxsmith.optimize.evaluate import reference_outputs

    ref = reference_outputs(model, data.subset(min(len(data), 8)))
    if ref.classifier:
        return "accuracy" if data.labels is not None else "agreement"
    return "cosine_min"


def analyze(model: LoadedModel, data: Dataset, calibration: Dataset, max_drop: float, *,
            metric: str | None = None, single_limit: int = 24, config: dict[str, Any] | None = None,
            max_seconds: float | None = None, progress: Callable[[str], None] | None = None) -> Sensitivity:
    """Per-layer int8 sensitivity of ``model`` and the keep-list that meets ``max_drop`` (see the module doc).

    ``max_seconds``: past it no further layer is measured alone (those left say so) and the keep-list search stops
    adding layers; the result says it was capped."""
    import time

    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    capped: list[str] = []

    def late() -> bool:
        if deadline is not None and time.monotonic() > deadline:
            if not capped:
                capped.append(f"stopped at the {max_seconds:g} s time cap: the ranking and keep-list are partial")
            return True
        return False

    if not 0 <= max_drop < 1:
        raise UserInputError(f"invalid accuracy budget {max_drop}", "it is a fraction from 0 to 1",
                             "for example --max-accuracy-drop 1%")
    say = progress or (lambda message: None)
    metric = metric or choose_metric(model, data)
    with tempfile.TemporaryDirectory(prefix="onnxsmith-sensitivity-") as tmp:
        ev = _Evaluator(model, data, calibration, metric, Path(tmp), dict(config or {}))
        say("int8 everywhere (calibrating once)")
        full = ev.quantize(())
        layers = [(n, t) for n, t in quantizable_layers(full) if n in {x.name for x in model.proto.graph.node}]
        names = [n for n, _ in layers]
        full_drop = ev.drop(())
        notes: list[str] = []
        if not layers:
            notes.append("the int8 quantizer quantized no Conv/MatMul/Gemm layer: nothing to keep")
        floor = max(max_drop / 4, 1.0 / max(len(data), 1))
        alone: dict[str, float | None] = {}
        method: dict[str, str] = {}

        def probe(group: list[str]) -> None:
            say(f"sensitivity: {len(alone)} of {len(names)} layers measured")
            if late():
                for n in group:
                    alone[n], method[n] = None, "not measured (time cap)"
                return
            others = [n for n in names if n not in group]
            d = ev.drop(others)
            if len(group) == 1:
                alone[group[0]], method[group[0]] = d, "alone"
            elif d <= floor:
                for n in group:
                    alone[n], method[n] = None, f"safe group of {len(group)} (drop {d:.4f} quantized together)"
            else:
                half = len(group) // 2
                probe(group[:half])
                probe(group[half:])

        if full_drop > max_drop and layers:
            if len(names) <= single_limit:
                for n in names:
                    probe([n])
            else:
                probe(names)
        ranked = sorted(layers, key=lambda x: -(alone.get(x[0]) or 0.0))
        sensitivities = tuple(LayerSensitivity(n, t, alone.get(n), method.get(n, "not needed: int8 meets the budget"))
                              for n, t in ranked)
        keep: list[str] = []
        mixed_drop: float | None = None
        if full_drop > max_drop and layers:
            for n, _ in ranked:
                if late() and keep:
                    break
                keep.append(n)
                say(f"keep-list: trying {len(keep)} layer(s) in fp32")
                mixed_drop = ev.drop(keep)
                if mixed_drop <= max_drop:
                    break
            if mixed_drop is not None and mixed_drop <= max_drop:
                for n in sorted(keep, key=lambda x: alone.get(x) or 0.0):
                    if late():
                        break
                    trial = [k for k in keep if k != n]
                    if trial and ev.drop(trial) <= max_drop:
                        keep = trial
                mixed_drop = ev.drop(keep)
            elif not capped:
                notes.append("no keep-list short of keeping every layer in fp32 meets the budget")
        notes += capped
        kept = tuple(KeptLayer(n, dict(layers)[n], alone.get(n),
                               round(ev.drop([k for k in keep if k != n]) - (mixed_drop or 0.0), 6)) for n in keep)
        met = full_drop <= max_drop or (mixed_drop is not None and mixed_drop <= max_drop)
        return Sensitivity(
            metric=metric, reference_quality=ev.reference_quality(), int8_quality=ev.quality(()),
            int8_drop=round(full_drop, 6), budget=max_drop, layers=sensitivities, keep=kept,
            mixed_quality=None if mixed_drop is None else ev.quality(keep),
            mixed_drop=None if mixed_drop is None else round(mixed_drop, 6), met=met, evaluations=ev.evaluations,
            calibration=f"{calibration.source} ({len(calibration)} samples, one ONNX Runtime calibration reused by "
                        "every variant)", samples=len(data), notes=tuple(notes))
