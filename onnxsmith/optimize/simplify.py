"""``simplify``: constant folding, dead-node removal and fusions (onnxslim; ONNX Runtime's offline optimizer at
basic level when onnxslim is missing or fails). The record says which tool ran."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from onnxsmith.errors import BackendError, MissingDependencyError, first_line
from onnxsmith.optimize.passes import Change, Pass, op_counts, package_version

if TYPE_CHECKING:
    import onnx

    from onnxsmith.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class SimplifyConfig:
    tool: str = "auto"
    """``auto`` (onnxslim, else ONNX Runtime), ``onnxslim`` or ``onnxruntime``."""
    skip_fusion_patterns: tuple[str, ...] = ()
    """onnxslim fusion patterns to leave alone (e.g. ``FusionGelu``)."""


def _fusions(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Describe the op-count changes in words (``BatchNormalization x53 folded``)."""
    words = []
    for op in sorted(set(before) | set(after)):
        delta = after.get(op, 0) - before.get(op, 0)
        if delta < 0:
            words.append(f"{op} -{-delta}")
        elif delta > 0:
            words.append(f"{op} +{delta}")
    return words


def _onnxslim(model: onnx.ModelProto, config: SimplifyConfig) -> tuple[onnx.ModelProto, str]:
    try:
        import onnxslim
    except ImportError as exc:
        raise MissingDependencyError("onnxslim", "optimize") from exc
    quiet = io.StringIO()
    kwargs = {"skip_fusion_patterns": list(config.skip_fusion_patterns)} if config.skip_fusion_patterns else {}
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        slim = onnxslim.slim(model, **kwargs)
    if slim is None:
        raise BackendError("onnxslim returned no model", quiet.getvalue().strip()[-300:] or "no output")
    return slim, f"onnxslim {package_version('onnxslim')}"


def _ort_basic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    import onnx

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "") from exc
    with tempfile.TemporaryDirectory(prefix="onnxsmith-simplify-") as tmp:
        out = Path(tmp) / "basic.onnx"
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendError("ONNX Runtime could not optimize the model", first_line(exc)) from exc
        return onnx.load_model(str(out)), f"onnxruntime {ort.__version__} offline optimizer (basic level)"


class SimplifyPass(Pass):
    """Fold constants, drop dead nodes, fuse (Conv+BN, Conv+Add, Gemm, GELU...)."""

    name = "simplify"
    config_type = SimplifyConfig

    def _apply(self, model: onnx.ModelProto, calibration: Dataset | None) -> Change:
        import onnx

        config: SimplifyConfig = self.config
        notes: list[str] = []
        before = op_counts(model)
        if config.tool in ("auto", "onnxslim"):
            try:
                new, tool = _onnxslim(model, config)
            except Exception as exc:  # onnxslim is young; any failure falls back to ONNX Runtime
                if config.tool == "onnxslim":
                    if isinstance(exc, (MissingDependencyError, BackendError)):
                        raise
                    raise BackendError("onnxslim failed", first_line(exc)) from exc
                notes.append(f"onnxslim did not run ({first_line(exc)}); used ONNX Runtime's basic optimizer instead")
                new, tool = _ort_basic(model)
        elif config.tool == "onnxruntime":
            new, tool = _ort_basic(model)
        else:
            from onnxsmith.errors import UserInputError

            raise UserInputError(f"unknown simplify tool '{config.tool}'", "choose auto, onnxslim or onnxruntime")
        try:
            onnx.checker.check_model(new)
        except onnx.checker.ValidationError as exc:
            raise BackendError(f"{tool} produced an invalid model", first_line(exc)) from exc
        after = op_counts(new)
        changes = _fusions(before, after)
        removed = len(model.graph.node) - len(new.graph.node)
        summary = (f"{tool}: {len(model.graph.node)} -> {len(new.graph.node)} nodes"
                   + (f" ({', '.join(changes)})" if changes else " (nothing to simplify)"))
        details = {"ops_before": before, "ops_after": after, "nodes_removed": removed,
                   "initializers_before": len(model.graph.initializer),
                   "initializers_after": len(new.graph.initializer)}
        return Change(new, tool, summary, details, tuple(notes))
