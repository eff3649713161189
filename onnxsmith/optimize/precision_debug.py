"""``onnxsmith debug precision``: which layers int8 must keep wide, applied and measured on every backend.

:func:`onnxsmith.optimize.sensitivity.analyze` finds the keep-list on the backend-neutral QDQ form; then, for each
backend of the target that runs here and offers int8, the fp32, full-int8 and mixed (keep-list) artifacts are
built from **one calibration set**, profiled and validated like ladder steps (:class:`StepRunner`), in the same
run. The keep-list reaches each backend through its own mechanism: the QDQ pass's ``nodes_to_exclude`` where int8
is an onnxsmith ONNX pass (ONNX Runtime), else the option the backend names in
:meth:`~onnxsmith.plugin.Compiler.keep_fp32_option` (NNCF ignored scope, TensorRT Q/DQ omission, Core ML op
selectors). Each kept layer's latency cost is its time in the mixed artifact minus its time in the full int8 one,
from the backend's own per-layer profiler.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.errors import OnnxsmithError
from onnxsmith.optimize.ladder_steps import mixed_recipe, usable_backends

if TYPE_CHECKING:
    from onnxsmith.data.dataset import Dataset
    from onnxsmith.model import LoadedModel
    from onnxsmith.optimize.record import Step
    from onnxsmith.profiles import Profile
    from onnxsmith.targets import Target

RESULT = "precision.json"
REPORT = "precision.md"


def layer_cost_ms(int8_bundle: Path, mixed_bundle: Path, keep: Sequence[str], data: Dataset,
                  reference_proto: Any) -> dict[str, float | None]:
    """Per kept layer: its time in the mixed artifact minus its time in the full int8 one (ms; medians of three
    per-layer profiles each), from the backend's own per-layer profiler; ``None`` where the profiler names no
    entry after the layer."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.profiling.run import profile_feeds

    aliases: dict[str, set[str]] = {}
    for node in reference_proto.graph.node:
        if node.name in keep:
            aliases[node.name] = {node.name, *node.output}
    consumers: dict[str, list[Any]] = {}
    for node in reference_proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for name, names in aliases.items():  # the bias/activation fused into it carry its time
        frontier = [o for o in list(names) if o != name]
        for tensor in frontier:
            for follower in consumers.get(tensor, []):
                if follower.op_type in ("Relu", "Add", "Clip", "BatchNormalization") and len(consumers[tensor]) == 1:
                    names |= {follower.name, *follower.output}

    def times(path: Path, repeats: int = 3) -> dict[str, float]:
        """Per kept layer, the median over ``repeats`` per-layer profiles of its summed time."""
        import statistics

        bundle = Bundle.open(path, verify=False)
        feeds, _ = profile_feeds(bundle, data)
        runs: dict[str, list[float]] = {}
        with bundle.load_runner() as runner:
            for _ in range(repeats):
                out: dict[str, float] = {}
                for layer in runner.layer_profile(feeds) or []:
                    for name, names in aliases.items():
                        base = re.sub(r"(_token_\d+|_nchwc|_quant)$", "", layer.name.split("/")[0])
                        if layer.name in names or base in names:
                            out[name] = out.get(name, 0.0) + layer.time_ms
                for name, ms in out.items():
                    runs.setdefault(name, []).append(ms)
        return {name: statistics.median(values) for name, values in runs.items()}

    before, after = times(int8_bundle), times(mixed_bundle)
    return {n: (round(after[n] - before[n], 6) if n in after and n in before else None) for n in keep}


def debug_precision(model: LoadedModel, target: Target, profile: Profile, *, data: Dataset,
                    calibration: Dataset | None, max_drop: float, output: Path, backends: Sequence[str] | None = None,
                    force: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Find the keep-list and build, profile and validate fp32 / int8 / mixed on every usable backend."""
    from onnxsmith.build.cache import private_dir, replace_dir
    from onnxsmith.build.compile import protected_inputs
    from onnxsmith.data.dataset import check_against_model
    from onnxsmith.model.shapes import require_static
    from onnxsmith.dirs import check_output_dir

    output = Path(output).resolve()
    require_static(model)
    notes: list[str] = []
    usable = usable_backends(target, backends, notes)
    check_output_dir(output, "precision", protected_inputs(model, data, calibration), force=force)
    say = progress or (lambda message: None)
    check_against_model(data.arrays, model.inputs, f"validation data '{data.source}'")
    # Everything is built in a private folder beside -o, renamed into place only when complete: an interrupted
    # run (Ctrl-C, SIGTERM, SIGKILL) leaves the previous result whole, and a later run sweeps a killed one's folder.
    with private_dir(output.parent, output.name) as work:
        record = _debug_precision(model, target, profile, data, calibration, max_drop, work, usable, notes, say)
        replace_dir(work, output)
    return record


def _debug_precision(model: LoadedModel, target: Target, profile: Profile, data: Dataset,
                     calibration: Dataset | None, max_drop: float, output: Path, usable: Sequence[str],
                     notes: list[str], say: Callable[[str], None]) -> dict[str, Any]:
    import shutil

    from onnxsmith.optimize.evaluate import calibration_data, reference_outputs
    from onnxsmith.optimize.sensitivity import analyze
    from onnxsmith.optimize.steps import Recipe, StepRunner, pass_spec
    from onnxsmith.registry import get_backend

    calibration = calibration_data(model, data, calibration, notes)
    say("measuring int8 sensitivity per layer (ONNX Runtime, QDQ)")
    sens = analyze(model, data, calibration, max_drop, progress=say)
    keep = list(sens.keep_names)
    reference = reference_outputs(model, data)
    runner = StepRunner(model, target, profile, data, calibration, reference, output, 3, say)
    steps: list[Step] = []
    per_backend: list[dict[str, Any]] = []
    for name in usable:
        backend = get_backend(name)
        passes = backend.onnx_pass_precisions(target)
        if passes.get("int8") == "int8_qdq":
            int8_recipe = Recipe(f"{name}-int8", f"{name}-fp32", "precision fp32 -> int8 (int8_qdq ONNX pass)", name,
                                 "int8", "fp32", (pass_spec("int8_qdq"),))
        elif "int8" in backend.precisions(target):
            int8_recipe = Recipe(f"{name}-int8", f"{name}-fp32", "precision fp32 -> int8", name, "int8", "int8")
        else:
            per_backend.append({"backend": name, "keep_mechanism": None,
                                "why": f"{name} offers {', '.join(backend.precisions(target))} for {target.id}: no "
                                       "int8, so nothing to keep"})
            continue
        fp32 = runner.measure(Recipe(f"{name}-fp32", None, f"{name} fp32", name, "fp32", "fp32"))
        steps.append(fp32)
        int8 = runner.measure(int8_recipe)
        steps.append(int8)
        entry: dict[str, Any] = {"backend": name, "fp32": fp32.name, "int8": int8.name, "mixed": None}
        if keep:
            found = mixed_recipe(backend, target, f"{name}-mixed", int8.name, keep, ())
            if found is None:
                entry["why"] = f"{name} has no way to keep layers out of int8"
            else:
                recipe, entry["keep_mechanism"] = found
                mixed = runner.measure(recipe)
                steps.append(mixed)
                entry["mixed"] = mixed.name
                if mixed.measured and int8.measured and mixed.bundle and int8.bundle:
                    try:
                        say(f"per-layer profiles of {name} int8 and mixed")
                        entry["layer_cost_ms"] = layer_cost_ms(output / int8.bundle, output / mixed.bundle, keep,
                                                               data, model.proto)
                    except OnnxsmithError as exc:
                        entry["layer_cost_error"] = exc.one_line()
        per_backend.append(entry)
    by = {s.name: s for s in steps}
    ref_quality = sens.reference_quality
    for entry in per_backend:
        for kind in ("fp32", "int8", "mixed"):
            step = by.get(entry.get(kind) or "")
            if step is None:
                continue
            quality = step.quality(sens.metric)
            entry[f"{kind}_result"] = {
                "status": step.status, "reason": step.reason, "precision": step.precision,
                "latency_p50_ms": step.latency_p50_ms, sens.metric: quality,
                "drop": None if quality is None else round(ref_quality - quality, 6),
                "meets_budget": None if quality is None else ref_quality - quality <= max_drop + 1e-9,
                "bundle": step.bundle}
        fp, mx = entry.get("fp32_result"), entry.get("mixed_result")
        if fp and mx and fp.get("latency_p50_ms") and mx.get("latency_p50_ms"):
            entry["mixed_vs_fp32_latency"] = round(mx["latency_p50_ms"] / fp["latency_p50_ms"], 4)
    import platform

    record = {
        "model": model.name, "target": target.id, "precision": "int8", "max_accuracy_drop": max_drop,
        "metric": sens.metric, "data": data.source, "sensitivity": sens.to_json(), "backends": per_backend,
        "steps": [s.to_json() for s in steps], "notes": notes,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.node()} {platform.machine()}",
    }
    from onnxsmith.bundle import write_json

    write_json(output / RESULT, record)
    (output / REPORT).write_text("\n".join(render(record)) + "\n")
    shutil.rmtree(output / ".models", ignore_errors=True)
    return record


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def render(record: dict[str, Any]) -> list[str]:
    """``precision.md``: the ranking, the keep-list with each layer's cost, and the per-backend results."""
    sens = record["sensitivity"]
    metric = record["metric"]
    lines = [f"# int8 precision debugging: {record['model']} for {record['target']}", "",
             f"Budget: {metric} drop <= {_pct(record['max_accuracy_drop'])} on `{record['data']}` "
             f"({sens['samples']} samples); calibration: {sens['calibration']}; {sens['evaluations']} quantized "
             "variants measured with ONNX Runtime (QDQ).", "",
             f"- fp32 {metric}: {_pct(sens['reference_quality'])}; int8 everywhere: {_pct(sens['int8_quality'])} "
             f"(drop {_pct(sens['int8_drop'])}: {'meets' if sens['int8_drop'] <= sens['budget'] else 'misses'} the "
             "budget)"]
    if sens["keep"]:
        lines.append(f"- **Keep-list ({len(sens['keep'])} of {len(sens['layers'])} layers kept in fp32): "
                     f"{', '.join(sens['keep_names'])}**; with it: {_pct(sens['mixed_quality'])} (drop "
                     f"{_pct(sens['mixed_drop'])})")
    elif sens["int8_drop"] <= sens["budget"]:
        lines.append("- int8 everywhere meets the budget: nothing needs to stay wide.")
    for note in [*sens.get("notes", []), *record.get("notes", [])]:
        lines.append(f"- Note: {note}")
    lines += ["", "## Sensitivity per layer (most harmful first)", "",
              f"| layer | op | {metric} drop quantized alone | how measured |", "|---|---|---|---|"]
    for layer in sens["layers"]:
        lines.append(f"| {layer['name']} | {layer['op_type']} | {_pct(layer['alone_drop'])} | {layer['method']} |")
    if sens["keep"]:
        names = [e["backend"] for e in record["backends"] if e.get("layer_cost_ms")]
        lines += ["", "## Cost of each kept layer", "",
                  f"Accuracy: the {metric} lost if that layer alone went back to int8. Latency: its time in the "
                  "mixed artifact minus in the full int8 one (backend's per-layer profiler).", "",
                  "| layer | accuracy cost | " + " | ".join(f"{n} latency cost" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for kept in sens["keep"]:
            cells = []
            for entry in record["backends"]:
                if entry.get("layer_cost_ms"):
                    cost = entry["layer_cost_ms"].get(kept["name"])
                    cells.append("-" if cost is None else f"{cost:+.4f} ms")
            lines.append(f"| {kept['name']} | {_pct(kept['cost_drop'])} | " + " | ".join(cells) + " |")
    lines += ["", "## Per backend (same run, same calibration set)", "",
              f"| backend | artifact | precision | p50 ms | {metric} | drop | meets | keep-list applied by |",
              "|---|---|---|---|---|---|---|---|"]
    for entry in record["backends"]:
        for kind in ("fp32", "int8", "mixed"):
            res = entry.get(f"{kind}_result")
            if not res:
                continue
            p50 = "-" if res["latency_p50_ms"] is None else f"{res['latency_p50_ms']:.4f}"
            how = entry.get("keep_mechanism", "") if kind == "mixed" else ""
            status = "" if res["status"] in ("measured", "lost", "chosen", "rejected") else f" ({res['status']})"
            lines.append(f"| {entry['backend']} | {kind}{status} | {res['precision']} | {p50} | "
                         f"{_pct(res.get(metric))} | {_pct(res['drop'])} | "
                         f"{'-' if res['meets_budget'] is None else 'yes' if res['meets_budget'] else 'no'} | {how} |")
        if entry.get("why"):
            lines.append(f"| {entry['backend']} | - | - | - | - | - | - | {entry['why']} |")
        if entry.get("mixed_vs_fp32_latency"):
            lines.append(f"| {entry['backend']} | mixed / fp32 p50 | | {entry['mixed_vs_fp32_latency']:.3f}x | | | | |")
    return lines

