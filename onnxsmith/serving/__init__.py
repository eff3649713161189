"""Serving configuration from measurements: ``BUNDLE/serving/``.

``write_serving(bundle, batching)`` turns a batch sweep and its dynamic-batching simulation
(:mod:`onnxsmith.serving.batching`, the record ``optimize`` keeps in ``card.json``) into:

- ``serving/triton/``: a Triton Inference Server model repository served by Triton's **Python backend** (a
  generated ``model.py`` that loads the bundle with ``onnxsmith.load``, i.e. the backend's own runtime), with
  ``max_batch_size``, ``dynamic_batching { preferred_batch_size, max_queue_delay_microseconds }`` and
  ``instance_group`` from the simulation's chosen setting. This is the repository ``onnxsmith serve-check`` runs.
- ``serving/triton-native/``: the same model for Triton's own backend of the artifact kind (``onnxruntime_onnx``,
  ``openvino``, ``tensorrt_plan``), where the backend names one (:meth:`Compiler.triton_model`).
- ``serving/ovms/``: an OpenVINO Model Server ``config.json`` with the IR, for OpenVINO artifacts.
- ``serving/serving.json`` (every number, and where it came from) and ``serving/README.md`` (the same, in words).

A static artifact (the bundle's batch dimension fixed, today's default) cannot be batched by a native Triton
backend: its native config gets ``max_batch_size: 0``; the Python backend's ``model.py`` runs a formed batch as
consecutive runs of the artifact's batch (padding the last), so its service time for a batch of n is
``ceil(n / b) * t(b)``, which is what the prediction for ``serve-check`` uses. When the manifest carries
``shape_ranges`` (a dynamic batch), the range's max bounds ``max_batch_size`` and the batch runs in one call.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxsmith.deploy import quoting
from onnxsmith.errors import UserInputError

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle
    from onnxsmith.serving.batching import BatchSweep

FOLDER = "serving"
TEMPLATES = Path(__file__).parent / "templates"
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64",
                "bool": "TYPE_BOOL"}


def model_name(bundle: Bundle) -> str:
    """The Triton and OVMS model name, which is also its folder's name: the model's name where it is a safe file
    name, else its safe form (:func:`onnxsmith.deploy.quoting.file_stems`)."""
    name = str(bundle.manifest["model"].get("name") or "model")
    return quoting.file_stems([name])[name]


def batch_range(bundle: Bundle) -> tuple[int, int, bool] | None:
    """(min, max, dynamic) of the batch dimension every batch input shares, or ``None`` when the model has none
    (then Triton cannot batch it: ``max_batch_size: 0``). Static artifacts give (b, b, False)."""
    names = bundle.batch_inputs
    if not names:
        return None
    specs = {s.name: s for s in bundle.inputs}
    ranges = bundle.manifest.get("shape_ranges") or bundle.manifest["model"].get("shape_ranges") or {}
    found = set()
    for name in names:
        if name not in specs or not specs[name].shape:
            return None
        entry = ranges.get(name) if isinstance(ranges, Mapping) else None
        if isinstance(entry, Mapping) and entry.get("min") and entry.get("max"):
            low, high = int(entry["min"][0]), int(entry["max"][0])
            found.add((low, high, low != high))  # a range over other dims only leaves the batch fixed
        else:
            first = specs[name].shape[0]
            if not isinstance(first, int):
                return None
            found.add((first, first, False))
    return found.pop() if len(found) == 1 else None


def served_sweep(sweep: BatchSweep, artifact_batch: int, max_batch: int, dynamic: bool) -> BatchSweep:
    """The service times the Python backend's ``model.py`` gives for batches of 1..max_batch: the measured sweep
    when the artifact takes the batch in one call (dynamic), else consecutive runs of the artifact's static batch."""
    from onnxsmith.serving.batching import BatchPoint, BatchSweep

    if dynamic:
        return sweep
    one = sweep.service_ms(artifact_batch)
    return BatchSweep(tuple(BatchPoint(b, math.ceil(b / artifact_batch) * one) for b in range(1, max(max_batch, 2) + 1)),
                      f"{sweep.step} as served: consecutive runs of the static batch {artifact_batch}")


def plan(bundle: Bundle, batching: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The serving settings and where each came from (``serving.json``)."""
    best = batching.get("best")
    batch = batch_range(bundle)
    device = str(bundle.artifact.device).lower()
    kind = "KIND_GPU" if any(k in device for k in ("cuda", "gpu")) else "KIND_CPU"
    record: dict[str, Any] = {
        "source": source, "model": model_name(bundle), "backend": bundle.backend,
        "artifact_batch": None if batch is None else {"min": batch[0], "max": batch[1], "dynamic": batch[2]},
        "rate_per_s": batching.get("rate_per_s"), "p99_budget_ms": batching.get("p99_budget_ms"),
        "sweep": batching.get("sweep"), "best": best, "best_at_rate": batching.get("best_at_rate"),
        "simulation_notes": list(batching.get("notes", [])),
        "instance_group": {"count": 1, "kind": kind,
                           "why": "the simulation models one model instance serving batches one after another"},
    }
    if batch is None:
        record.update(max_batch_size=0, dynamic_batching=None,
                      why="the model has no batch dimension (no input with a dynamic first dim), so Triton cannot "
                          "batch requests: max_batch_size 0")
    elif best is None:
        record.update(max_batch_size=batch[1] if batch[2] else 1, dynamic_batching=None,
                      why="no simulated setting kept p99 within the budget, so no dynamic batching is configured")
    else:
        max_batch = int(best["max_batch"])
        if batch[2]:
            max_batch = min(max_batch, batch[1])
        record.update(max_batch_size=max_batch, dynamic_batching={
            "preferred_batch_size": [max_batch],
            "max_queue_delay_microseconds": int(round(float(best["max_delay_ms"]) * 1000))},
            why=f"the simulation's best setting at {float(batching['rate_per_s']):,.1f} requests/s: max batch "
                f"{best['max_batch']}, max queue delay {float(best['max_delay_ms']):.4g} ms, which sustains "
                f"{float(best['rate_per_s']):,.1f}/s with p99 {float(best['p99_ms']):.4g} ms within the "
                f"{float(batching['p99_budget_ms']):.4g} ms budget")
    return record


def _dims(shape: tuple[Any, ...]) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + " ]"


def config_pbtxt(bundle: Bundle, record: Mapping[str, Any], field: str, value: str, batched: bool,
                 parameters: Mapping[str, str]) -> str:
    """A Triton ``config.pbtxt`` (protobuf text of ``inference.ModelConfig``)."""
    name = record["model"]
    max_batch = int(record["max_batch_size"]) if batched else 0
    batch_names = set(bundle.batch_inputs or ()) if max_batch else set()

    def tensor(spec: Any, strip: bool) -> str:
        if spec.dtype not in TRITON_TYPES:
            raise UserInputError(f"Triton has no type for {quoting.text(spec.name)}'s {spec.dtype}", "see Triton's data types")
        dims = spec.shape[1:] if strip else spec.shape
        return f'  {{\n    name: {quoting.pbtxt(spec.name)}\n    data_type: {TRITON_TYPES[spec.dtype]}\n    dims: {_dims(tuple(dims))}\n  }}'

    lines = [f"name: {quoting.pbtxt(name)}", f"{field}: {quoting.pbtxt(value)}", f"max_batch_size: {max_batch}",
             "input [\n" + ",\n".join(tensor(s, s.name in batch_names) for s in bundle.inputs) + "\n]",
             "output [\n" + ",\n".join(tensor(s, bool(max_batch)) for s in bundle.outputs) + "\n]"]
    dynamic = record.get("dynamic_batching") if max_batch else None
    if dynamic:
        lines.append("dynamic_batching {\n  preferred_batch_size: [ "
                     + ", ".join(str(b) for b in dynamic["preferred_batch_size"])
                     + f" ]\n  max_queue_delay_microseconds: {dynamic['max_queue_delay_microseconds']}\n}}")
    group = record["instance_group"]
    lines.append(f"instance_group [\n  {{\n    count: {group['count']}\n    kind: {group['kind']}\n  }}\n]")
    for key, text in parameters.items():
        lines.append(f"parameters {{\n  key: {quoting.pbtxt(key)}\n  value: {{ string_value: {quoting.pbtxt(text)} }}\n}}")
    return "\n".join(lines) + "\n"


def write_serving(bundle: Bundle, batching: Mapping[str, Any], source: str) -> Path:
    """Write ``BUNDLE/serving/`` (replacing a previous one) from the sweep and simulation record ``batching``."""
    from onnxsmith.build.cache import private_dir
    from onnxsmith.build.cache import replace_dir
    from onnxsmith.registry import get_backend

    record = plan(bundle, batching, source)
    name = record["model"]
    dest = bundle.path / FOLDER
    with private_dir(bundle.path, FOLDER) as tmp:
        python_model = tmp / "triton" / name
        (python_model / "1").mkdir(parents=True)
        (python_model / "1" / "model.py").write_text((TEMPLATES / "model.py").read_text())
        (python_model / "config.pbtxt").write_text(config_pbtxt(
            bundle, record, "backend", "python", True, {"bundle": "../../..",
                                                         "artifact_batch": json.dumps(record["artifact_batch"])}))
        written = {"triton": f"triton/{name}/config.pbtxt"}
        native = get_backend(bundle.backend).triton_model(bundle.artifact, bundle.target())
        if native is not None:
            folder = tmp / "triton-native" / name
            (folder / "1").mkdir(parents=True)
            for rel, src in native.files.items():
                shutil.copyfile(bundle.resolve(f"artifact/{src}"), folder / "1" / rel)
            dynamic = bool(record["artifact_batch"] and record["artifact_batch"]["dynamic"])
            (folder / "config.pbtxt").write_text(config_pbtxt(bundle, record, native.field, native.value, dynamic,
                                                              dict(native.parameters)))
            written["triton-native"] = f"triton-native/{name}/config.pbtxt"
            record["native"] = {"field": native.field, "value": native.value, "batched": dynamic,
                                "why": "the artifact takes the batch range natively" if dynamic else
                                "the artifact's batch is static, so Triton's native backend cannot batch it: "
                                "max_batch_size 0 (the Python-backend repository batches by running it repeatedly)"}
        ovms_files = get_backend(bundle.backend).ovms_model(bundle.artifact, bundle.target())
        if ovms_files:
            _write_ovms(bundle, record, tmp / "ovms", ovms_files)
            written["ovms"] = "ovms/config.json"
        record["files"] = written
        (tmp / "serving.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(record))
        replace_dir(tmp, dest)
    bundle.seal_records(FOLDER)
    return dest


def _write_ovms(bundle: Bundle, record: Mapping[str, Any], folder: Path, files: tuple[str, ...]) -> None:
    name = record["model"]
    (folder / name / "1").mkdir(parents=True)
    for file in files:
        shutil.copyfile(bundle.resolve(f"artifact/{file}"), folder / name / "1" / file)
    config: dict[str, Any] = {"name": name, "base_path": f"/models/{name}", "target_device": bundle.artifact.device,
                              "plugin_config": {str(k): str(v) for k, v in bundle.artifact.options.items()},
                              "nireq": 1}
    batch = record.get("artifact_batch")
    if batch and batch["dynamic"]:
        names = bundle.batch_inputs or ()
        config["shape"] = {s.name: "(" + ",".join([f"{batch['min']}:{batch['max']}"] +
                                                  [str(d) for d in s.shape[1:]]) + ")"
                           for s in bundle.inputs if s.name in names}
    (folder / "config.json").write_text(json.dumps({"model_config_list": [{"config": config}]}, indent=2) + "\n")


def _readme(record: Mapping[str, Any]) -> str:
    name = record["model"]
    out = [f"# Serving {name} ({record['backend']})", "",
           f"Settings from {record['source']}. `serving.json` holds every number below.", "",
           "| setting | value | from |", "|---|---|---|",
           f"| max_batch_size | {record['max_batch_size']} | {record['why']} |"]
    dynamic = record.get("dynamic_batching")
    if dynamic:
        out += [f"| dynamic_batching.preferred_batch_size | {dynamic['preferred_batch_size']} | the simulated max "
                "batch (the batcher dispatches when that many wait) |",
                f"| dynamic_batching.max_queue_delay_microseconds | {dynamic['max_queue_delay_microseconds']} | the "
                "simulated max queue delay |"]
    group = record["instance_group"]
    out += [f"| instance_group | {group['count']} x {group['kind']} | {group['why']} |", ""]
    sweep = (record.get("sweep") or {}).get("points") or []
    if sweep:
        out += [f"Measured batch sweep ({(record.get('sweep') or {}).get('step') or 'the chosen step'}):", "",
                "| batch | p50 ms | throughput /s |", "|---:|---:|---:|"]
        out += [f"| {p['batch']} | {p['latency_p50_ms']:.4g} | {p['throughput_per_s']:,.1f} |" for p in sweep]
        out.append("")
    at = record.get("best_at_rate")
    if at:
        out += [f"Simulated at {float(record['rate_per_s']):,.1f} requests/s (Poisson) with these settings: p50 "
                f"{at['p50_ms']:.4g} ms, p99 {at['p99_ms']:.4g} ms, mean batch {at['mean_batch']:.3g}, utilization "
                f"{at['utilization']:.2f}.", ""]
    out += [f"- {n}" for n in record.get("simulation_notes", [])] + [""]
    out += ["## Triton (`triton/`: Python backend, what `onnxsmith serve-check` runs)", "",
            "`onnxsmith serve-check BUNDLE` starts the server, loads it and stops it. By hand (from the bundle; "
            "BACKENDS/python holds the Python backend of the `nvidia-pytriton` wheel and the "
            "`triton_python_backend_stub` for your Python version from its `python_backend_stubs/`):", "",
            "```", "LD_LIBRARY_PATH=$SITE_PACKAGES/nvidia_pytriton.libs \\",
            "ONNXSMITH_PYTHONPATH=$(python3 -c 'import sys, os; print(os.pathsep.join(sys.path))') \\",
            "tritonserver --model-repository serving/triton --backend-directory BACKENDS --http-address 127.0.0.1 "
            "--grpc-address 127.0.0.1 --metrics-address 127.0.0.1", "```", "",
            "`model.py` loads the bundle (`../../..` from the model folder) with `onnxsmith.load`, i.e. the "
            "backend's own runtime, and runs a formed batch in chunks of the artifact's batch. The stub embeds the "
            "system's libpython, so `ONNXSMITH_PYTHONPATH` names the packages (onnxsmith, numpy, the backend) of "
            "the Python that has them.", ""]
    native = record.get("native")
    if native:
        out += [f"## Triton native (`triton-native/`: {native['field']} `{native['value']}`)", "",
                f"{native['why']}.", ""]
    if "ovms" in record.get("files", {}):
        out += ["## OpenVINO Model Server (`ovms/`)", "", "```",
                "docker run -p 9000:9000 -v $PWD/serving/ovms:/models openvino/model_server "
                "--config_path /models/config.json --port 9000", "```", ""]
    return "\n".join(out)
