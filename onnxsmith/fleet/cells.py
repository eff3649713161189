"""Cells: one (target, backend, precision) of a compare, and the two stages every executor runs for it.

A stage runs in its own Python process (``python -m onnxsmith.fleet.cells STAGE REQUEST RESULT``), on this machine
(local executor) or inside a Ray task on the worker that holds the toolchain or the device (Ray executor), so both
executors compile, profile and validate a cell with exactly the same code as ``onnxsmith compile/profile/validate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from onnxsmith.errors import OnnxsmithError, UserInputError, to_wire
from onnxsmith.precisions import PRECISIONS, choose_precision


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """``TARGET[:BACKEND[:PRECISION]]``; an omitted backend or precision is chosen where the cell compiles."""

    target: str
    backend: str | None = None
    precision: str | None = None

    @classmethod
    def parse(cls, text: str) -> CellSpec:
        parts = text.strip().split(":")
        if not parts[0] or len(parts) > 3 or any(p == "" for p in parts[1:]):
            raise UserInputError(f"invalid cell '{text}'", "expected TARGET[:BACKEND[:PRECISION]]",
                                 "for example -t host:openvino:int8 or -t arm/raspberry-pi-5")
        backend = parts[1] if len(parts) > 1 else None
        precision = parts[2] if len(parts) > 2 else None
        if precision is not None and precision not in PRECISIONS:
            raise UserInputError(f"invalid precision '{precision}' in cell '{text}'",
                                 f"precisions are {', '.join(PRECISIONS)}", "for example -t host:onnxruntime:int8")
        if backend is not None:
            from onnxsmith.registry import backend_names

            if backend not in backend_names():
                import difflib

                close = difflib.get_close_matches(backend, backend_names(), 1)
                raise UserInputError(f"unknown backend '{backend}' in cell '{text}'",
                                     f"known backends: {', '.join(backend_names())}",
                                     f"did you mean '{close[0]}'?" if close else "see 'onnxsmith doctor'")
        return cls(parts[0], backend, precision)

    @property
    def label(self) -> str:
        return ":".join(p for p in (self.target, self.backend, self.precision) if p)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", self.label.replace(".toml", "")).strip("-")


# --- the stages (run in a child process) ---------------------------------------------------------------------------
def compile_stage(req: dict[str, Any]) -> dict[str, Any]:
    """Compile the cell into the bundle folder ``req['output']``; returns what the compare table shows."""
    from onnxsmith.build.compile import choose_backend, compile_model
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.model import load_model
    from onnxsmith.profiles import load_profile
    from onnxsmith.registry import get_backend
    from onnxsmith.targets import load_target

    target = load_target(req["target"])
    profile = load_profile(req["profile"])
    model = load_model(req["model"], {k: tuple(v) for k, v in (req.get("shapes") or {}).items()})
    opened: list[Any] = []

    def calibration_data() -> Any:
        """The cell's calibration data, read once however many steps need it (None without any)."""
        if not opened:
            opened.append(open_dataset(req["calibration"], model.inputs, what="calibration data",
                                       known_batch=model.batch_inputs) if req.get("calibration") else None)
        return opened[0]

    picked = None
    if req.get("backend"):
        backend = get_backend(req["backend"])
    else:  # the host's measured pick, as 'compile --target host' makes it; else the target's first usable backend
        from onnxsmith.build.pick import host_default

        asked = req.get("precision") or profile.precision
        picked = host_default(model, target, profile, asked,
                              calibration_data() if target.id == "host" and asked == "int8" else None,
                              req.get("options"))
        backend = get_backend(picked[0]) if picked else choose_backend(target)
    backend.check_environment()
    precision, why = choose_precision(backend, target, profile, req.get("precision"))
    calibration = None
    onnx_pass = None
    if precision not in backend.precisions(target):
        onnx_pass = backend.onnx_pass_precisions(target).get(precision)  # e.g. int8 as an ONNX QDQ graph
    if onnx_pass or backend.needs_calibration(precision, model):
        calibration = calibration_data()
    compiled, reference, notes = model, None, tuple(n for n in (picked[1] if picked else None, why) if n)
    with contextlib.ExitStack() as stack:
        if onnx_pass:
            from onnxsmith.build.cache import private_dir
            from onnxsmith.model.saving import save_model
            from onnxsmith.optimize.passes import get_pass

            if precision not in target.precisions:
                from onnxsmith.errors import UnsupportedError

                raise UnsupportedError(f"{target.id} does not support {precision}",
                                       f"its precisions are {', '.join(target.precisions)}")
            done = get_pass(onnx_pass).run(model, calibration=calibration)
            # beside the cell's bundle and removed however the compile ends (a killed stage's is swept later)
            scratch = stack.enter_context(private_dir(Path(req["output"]).resolve().parent, "cell-pass"))
            compiled = load_model(save_model(done.model, scratch / f"{model.name}.onnx"))
            reference, notes = model, (*notes, f"{precision} through onnxsmith's {onnx_pass} pass, compiled as "
                                       f"fp32 by {backend.name}")
        bundle = compile_model(compiled, target, profile=profile, output=req["output"], backend=backend.name,
                               precision="fp32" if onnx_pass else precision,
                               calibration=None if onnx_pass else calibration,
                               options=req.get("options") or {}, reference=reference, notes=notes)
    m = bundle.manifest
    return {"backend": m["backend"], "backend_version": m["backend_version"], "precision": precision,
            "onnx_pass": onnx_pass,
            "precision_used": m["precision_used"], "compile_seconds": m["compile_seconds"],
            "cache_hit": m["cache"]["hit"], "artifact_size_bytes": bundle.artifact_size(),
            "runs_here": m["runs_here"], "notes": m["notes"], "target": m["target"]["id"],
            "artifact_device": m["artifact"].get("device")}


def measure_stage(req: dict[str, Any]) -> dict[str, Any]:
    """Profile and validate the bundle ``req['bundle']`` on this machine or on the RPC device ``req['remote']``;
    writes profile.json, validation.json and report.md into it."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.data.dataset import model_batch
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.profiles import load_profile
    from onnxsmith.profiling.run import profile_bundle
    from onnxsmith.registry import get_backend
    from onnxsmith.report import write_report
    from onnxsmith.check.validation import validate_bundle

    bundle = Bundle.open(req["bundle"])
    profile = load_profile(req["profile"])
    remote = req.get("remote")
    parts = req.get("do") or ["profile", "validate"]
    record = vrecord = None
    if "profile" in parts:
        batch = model_batch(bundle.inputs[0]) if bundle.inputs else 1
        data = None
        if req.get("data"):
            data = open_dataset(req["data"], bundle.inputs, what="input data", limit=batch, known_batch=bundle.batch_inputs)
        result = profile_bundle(bundle, profile, baseline=not remote, data=data, remote=remote)
        record = result.to_json()
        if req.get("emulated"):
            record["emulated"] = True
            record.setdefault("notes", []).append("profiled under emulation: the timings are the emulator's, not the "
                                                   "device's")
        bundle.write_json("profile.json", record)
    if "validate" in parts:
        labels = req.get("labels")
        vdata = None
        if req.get("data"):
            vdata = open_dataset(req["data"], bundle.inputs, labels=labels, what="validation data",
                                 limit=None if labels else req.get("samples", 64), known_batch=bundle.batch_inputs)
        runner = None
        if remote:
            runner = get_backend(bundle.backend).load_remote(bundle.artifact, bundle.artifact_dir, bundle.target(), remote)
        try:
            if runner is not None:
                runner.__enter__()
            validation = validate_bundle(bundle, vdata, samples=req.get("samples", 64), runner=runner)
        finally:
            if runner is not None:
                runner.__exit__(None, None, None)
        vrecord = validation.to_json()
        bundle.write_json("validation.json", vrecord)
    write_report(bundle)
    return {"profile": record, "validation": vrecord}


STAGES = {"compile": compile_stage, "measure": measure_stage}


def child_main(stage: str, request_path: str, result_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    try:
        outcome: dict[str, Any] = {"status": "ok", "result": STAGES[stage](request)}
    except OnnxsmithError as exc:
        outcome = {"status": "error", "message": exc.one_line(), "error": to_wire(exc)}  # the one error wire
    except KeyboardInterrupt:
        outcome = {"status": "interrupted", "message": "interrupted"}
    except BaseException as exc:  # a bug or a vendor crash that became an exception
        outcome = {"status": "crash", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(outcome, default=str))
    tmp.rename(result_path)


def die_with_parent() -> None:
    """In the child: SIGKILL when the parent dies (a killed Ray worker must not leave its stage running)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_stage(stage: str, request: dict[str, Any], work: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run one stage in a fresh Python process; returns its outcome (``status`` ok / error / crash)."""
    import os
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    req, res = work / f"{stage}.request.json", work / f"{stage}.result.json"
    req.write_text(json.dumps(request))
    res.unlink(missing_ok=True)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "onnxsmith.fleet.cells", stage, str(req), str(res)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"status": "crash", "message": f"the {stage} stage gave no result after {timeout:.0f} s"}
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    if not res.exists():
        tail = (err or "").strip().splitlines()[-1:] or ["no output"]
        return {"status": "crash", "message": f"the {stage} process died (exit {proc.returncode}: {tail[0][:200]})"}
    return json.loads(res.read_text())


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2], sys.argv[3])
