"""``prune``: zero weights of MatMul, Gemm and Conv by magnitude, unstructured or 2:4 structured.

- ``magnitude``: in each weight tensor (or over all of them with ``scope="global"``), the ``sparsity`` fraction of
  entries with the smallest |w| become 0.
- ``2:4``: in every group of 4 consecutive weights along the reduction (input-channel) axis, the 2 smallest
  become 0: the pattern NVIDIA sparse tensor cores (and some NPUs) run at up to twice the speed. Conv weights are
  grouped along input channels (``O x kh x kw x I`` order, as NVIDIA's ASP does); a tensor whose reduction size is
  not a multiple of 4 is left dense and listed.

No fine-tuning is done, so accuracy drops with sparsity; the ladder measures it. The ONNX file keeps dense
storage: its size does not change unless compressed (the record gives the zlib-compressed size too), and only a
runtime with sparse kernels gets faster, which the ladder measures on the chosen backend.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import UserInputError
from onnxsmith.optimize.passes import Change, Pass

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from onnxsmith.data.dataset import Dataset

METHODS = ("magnitude", "2:4")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    method: str = "magnitude"
    """``magnitude`` (unstructured) or ``2:4`` (structured)."""
    sparsity: float = 0.5
    """Fraction of weights zeroed by ``magnitude`` (``2:4`` is always 0.5)."""
    scope: str = "layer"
    """``magnitude`` only: ``layer`` (each tensor to the target) or ``global`` (one threshold for all)."""
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    min_params: int = 256
    """Leave weight tensors smaller than this dense (tiny first/last layers matter most to accuracy)."""
    exclude: tuple[str, ...] = ()
    """Node names to leave dense."""


def _weights(model: onnx.ModelProto, config: PruneConfig) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Prunable weight initializers -> {nodes, op_type, axis (reduction axis)}; and the skipped ones with why."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    for node in model.graph.node:
        if node.op_type not in config.op_types:
            continue
        if node.op_type == "MatMul":
            candidates = [(1, -2), (0, -1)]
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            candidates = [(1, 1 if trans_b else 0), (0, 0 if trans_a else 1)]
        else:
            candidates = [(1, 1)]
        for index, axis in candidates:
            if index >= len(node.input) or node.input[index] not in inits:
                continue
            name = node.input[index]
            tensor = inits[name]
            if node.name in config.exclude:
                skipped.append({"weight": name, "node": node.name, "why": "excluded by config"})
            elif tensor.data_type not in (1, 10, 11, 16):
                skipped.append({"weight": name, "node": node.name, "why": "not a float tensor"})
            elif len(tensor.dims) < 2:
                skipped.append({"weight": name, "node": node.name, "why": "not a matrix"})
            else:
                entry = found.setdefault(name, {"nodes": [], "op_type": node.op_type, "axis": axis})
                entry["nodes"].append(node.name)
            break
    return found, skipped


def magnitude_mask(values: np.ndarray, sparsity: float, threshold: float | None = None) -> np.ndarray:
    """True where a weight is kept: all but the ``sparsity`` fraction with the smallest |w|."""
    import numpy as np

    flat = np.abs(values).ravel()
    if threshold is None:
        k = int(round(sparsity * flat.size))
        if k <= 0:
            return np.ones(values.shape, dtype=bool)
        order = np.argsort(flat, kind="stable")
        keep = np.ones(flat.size, dtype=bool)
        keep[order[:k]] = False
        return keep.reshape(values.shape)
    return np.abs(values) > threshold


def two_four_mask(values: np.ndarray, axis: int) -> np.ndarray | None:
    """True where kept: the 2 largest |w| of every 4 consecutive along ``axis``; ``None`` if it is not a multiple
    of 4."""
    import numpy as np

    axis = axis % values.ndim
    if values.shape[axis] % 4:
        return None
    moved = np.moveaxis(np.abs(values), axis, -1)
    groups = moved.reshape(-1, 4)
    order = np.argsort(-groups, axis=1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :2], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def is_two_four(values: np.ndarray, axis: int) -> bool:
    """Whether at most 2 of every 4 consecutive weights along ``axis`` are non-zero."""
    import numpy as np

    moved = np.moveaxis(values, axis % values.ndim, -1)
    if moved.shape[-1] % 4:
        return False
    return bool(((moved.reshape(-1, 4) != 0).sum(axis=1) <= 2).all())


def _compressed_size(model: onnx.ModelProto) -> int:
    return len(zlib.compress(model.SerializeToString(), 6))


class PrunePass(Pass):
    """Zero the smallest weights (unstructured magnitude, or 2:4 structured)."""

    name = "prune"
    config_type = PruneConfig

    def _apply(self, model: onnx.ModelProto, calibration: Dataset | None) -> Change:
        import numpy as np
        from onnx import numpy_helper

        config: PruneConfig = self.config
        if config.method not in METHODS:
            raise UserInputError(f"unknown pruning method '{config.method}'", f"choose {', '.join(METHODS)}")
        if not 0 <= config.sparsity < 1:
            raise UserInputError(f"invalid sparsity {config.sparsity}", "it is a fraction in [0, 1)")
        if config.scope not in ("layer", "global"):
            raise UserInputError(f"invalid pruning scope '{config.scope}'", "choose layer or global")
        compressed_before = _compressed_size(model)
        found, skipped = _weights(model, config)
        inits = {t.name: t for t in model.graph.initializer}
        arrays = {name: numpy_helper.to_array(inits[name]) for name in found}
        for name, arr in list(arrays.items()):
            if arr.size < config.min_params:
                skipped.append({"weight": name, "node": ", ".join(found[name]["nodes"]),
                                "why": f"{arr.size} parameters, fewer than min_params={config.min_params}"})
                del arrays[name]
        threshold = None
        if config.method == "magnitude" and config.scope == "global" and arrays:
            everything = np.concatenate([np.abs(a).ravel().astype(np.float64) for a in arrays.values()])
            k = int(round(config.sparsity * everything.size))
            threshold = float(np.partition(everything, k - 1)[k - 1]) if k > 0 else -1.0
        layers = []
        total = zeros_before = zeros_after = 0
        for name, arr in arrays.items():
            if config.method == "2:4":
                mask = two_four_mask(arr, found[name]["axis"])
                if mask is None:
                    skipped.append({"weight": name, "node": ", ".join(found[name]["nodes"]),
                                    "why": f"reduction axis has {arr.shape[found[name]['axis']]} entries, not a "
                                           "multiple of 4"})
                    continue
            else:
                mask = magnitude_mask(arr, config.sparsity, threshold)
            pruned = np.where(mask, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype)
            inits[name].CopyFrom(numpy_helper.from_array(pruned, name))
            before, after = int((arr == 0).sum()), int((pruned == 0).sum())
            total += arr.size
            zeros_before += before
            zeros_after += after
            layers.append({"weight": name, "nodes": found[name]["nodes"], "op_type": found[name]["op_type"],
                           "shape": list(arr.shape), "sparsity_before": round(before / arr.size, 6),
                           "sparsity": round(after / arr.size, 6)})
        all_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in (1, 10, 11, 16))
        all_zeros = 0
        for t in model.graph.initializer:
            if t.data_type in (1, 10, 11, 16):
                all_zeros += int((numpy_helper.to_array(t) == 0).sum())
        compressed_after = _compressed_size(model)
        sparsity = zeros_after / total if total else 0.0
        notes = []
        if not layers:
            notes.append("no weight was pruned (no MatMul/Gemm/Conv weight met the conditions)")
        notes.append("dense storage: the ONNX file keeps every zero; only a runtime with sparse kernels can be faster")
        what = "2:4 structured" if config.method == "2:4" else f"magnitude ({config.scope})"
        summary = (f"{what} pruning of {len(layers)} weight tensors: sparsity {sparsity * 100:.1f} % of pruned "
                   f"weights, {all_zeros / max(all_params, 1) * 100:.1f} % of all; zlib-compressed size "
                   f"{compressed_before:,} -> {compressed_after:,} bytes")
        details = {"method": config.method, "layers": layers, "skipped": skipped,
                   "sparsity_pruned_weights": round(sparsity, 6),
                   "sparsity_all_weights": round(all_zeros / max(all_params, 1), 6),
                   "pruned_params": total, "zeros_before": zeros_before, "zeros_after": zeros_after,
                   "compressed_size_before": compressed_before, "compressed_size_after": compressed_after}
        return Change(model, f"onnxsmith prune ({config.method})", summary, details, tuple(notes))
