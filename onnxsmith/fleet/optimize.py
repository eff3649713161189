"""``optimize --cluster``: the whole ladder runs on the fleet worker that owns the target's device.

Every step of the ladder is measured on the device (interleaved runs against its parent), and the steps' compiles
are short next to those measurements, so the ladder is one Ray task holding the device's unit for its whole run:
no profile of another cell shares the device meanwhile. The task runs the same ``onnxsmith optimize`` command line
on the worker (model, data and target files arrive as content-addressed payloads, fetched once per worker); the
output folder comes back packed and is renamed into ``-o`` only when complete, so an interrupted run leaves nothing
half-written.

Not built: spreading one ladder's compiles over several workers, and ladders on devices a worker fronts over RPC
(the ladder's runners are in-process).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from onnxsmith.errors import OnnxsmithError, UnsupportedError, UserInputError

Arg = str | tuple[str]
"""A command-line item: text, or ``(payload key,)``, replaced on the worker by the path the payload arrived at."""


class FleetCommandError(OnnxsmithError):
    """The command failed on the worker: its one-line error, with the worker's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def optimize_task(args: list[Arg], payloads: dict[str, tuple[str, str, list[Any]]],
                  target_id: str) -> tuple[str, bytes]:
    """On the worker: run ``onnxsmith optimize ARGS -o TMP --json``; returns (the outcome as JSON, the output folder
    packed)."""
    import subprocess
    import tempfile

    import ray

    from onnxsmith.fleet import objects
    from onnxsmith.fleet.cells import die_with_parent
    from onnxsmith.fleet.ray_executor import DEVICES_ENV, materialize, worker_name

    started = time.perf_counter()
    device = json.loads(os.environ.get(DEVICES_ENV) or "{}").get(target_id) or {}
    if device.get("remote"):
        return json.dumps({"exit": 5, "worker": worker_name(), "error": f"error: optimize --cluster cannot run on "
                           f"{target_id}: this worker fronts it over RPC and the ladder measures in-process. Hint: "
                           "run 'onnxsmith optimize' on the device itself, or 'onnxsmith compare' to measure it."}), b""
    transfers: dict[str, str] = {}
    paths = {key: materialize(ray, sha, box, transfers, key) / name for key, (sha, name, box) in payloads.items()}
    argv = [a if isinstance(a, str) else str(paths[a[0]]) for a in args]
    with tempfile.TemporaryDirectory(prefix="onnxsmith-fleet-optimize-") as tmp:
        out = Path(tmp) / "out"
        proc = subprocess.run([sys.executable, "-m", "onnxsmith", "optimize", *argv, "-o", str(out), "--json"],
                              capture_output=True, text=True, env=dict(os.environ),
                              preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        lines = [line for line in proc.stderr.strip().splitlines() if line.startswith(("error:", "internal error:"))]
        outcome = {"exit": proc.returncode, "stdout": proc.stdout, "worker": worker_name(), "transfers": transfers,
                   "error": lines[-1] if lines else (proc.stderr.strip().splitlines() or [""])[-1][:300]}
        data = objects.pack({"out": out}) if (out / "card.json").is_file() else b""
    outcome.update(task_s=time.perf_counter() - started, bundle_sha=objects.digest(data) if data else None)
    return json.dumps(outcome), data


def _checked(raw: Any) -> dict[str, Any]:
    """The optimize task's outcome, its types checked (a malformed one is a backend failure, exit 4)."""
    from onnxsmith.errors import BackendError
    from onnxsmith.fleet.ray_executor import MalformedResult, checked_json

    try:
        outcome = checked_json(raw, "the optimize result")
        if not (isinstance(outcome.get("exit"), int) and isinstance(outcome.get("worker"), str)
                and isinstance(outcome.get("error", ""), str) and isinstance(outcome.get("stdout", ""), str)):
            raise MalformedResult("the optimize result has malformed fields")
    except MalformedResult as exc:
        raise BackendError("optimize on the fleet sent a malformed result", str(exc)) from exc
    return outcome


def _checked_payload(raw: Any, sha: Any) -> bytes:
    from onnxsmith.errors import BackendError
    from onnxsmith.fleet.ray_executor import MalformedResult, checked_payload

    try:
        return checked_payload(raw, sha if isinstance(sha, str) else None, "the optimize output that came back")
    except MalformedResult as exc:
        raise BackendError("optimize on the fleet sent a malformed result", str(exc)) from exc


def _data_payload(spec: str, option: str) -> tuple[Path, str]:
    """(what to send, the member to name on the worker) for a data option: a file or folder as it is; an image spec
    TOML with the folder it sits in (its ``root`` is relative to it)."""
    path = Path(spec)
    if not path.exists():
        raise UserInputError(f"cannot send {option} '{spec}' to the fleet", "only files and folders travel to a worker, "
                             "not module:function data", f"save the data as .npz and pass that to {option}")
    path = path.resolve()
    if path.is_file() and path.suffix == ".toml":
        return path.parent, f"{path.parent.name}/{path.name}"
    return path, path.name


def fleet_optimize(address: str, model: str, target_spec: str, profile_spec: str, args: list[str], *,
                   output: str, data: str | None, calibration: str | None, force: bool,
                   progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], str]:
    """Run the ladder on the worker that owns ``target_spec``'s device; write its output at ``output`` (atomically)
    and return (the card record as ``optimize --json`` prints it, the worker's name). ``args`` are the other
    command-line options, passed through as they are."""
    from onnxsmith.build.cache import private_dir, replace_dir
    from onnxsmith.fleet import objects
    from onnxsmith.fleet.ray_executor import DEVICE, RayExecutor, fleet_nodes
    from onnxsmith.model import load_model
    from onnxsmith.dirs import check_output_dir
    from onnxsmith.targets import load_target

    say = progress or (lambda message: None)
    model_path = Path(model)
    if model_path.suffix != ".onnx" or not model_path.is_file():
        raise UserInputError(f"optimize --cluster takes an ONNX file, not '{model}'", "the worker gets the model as a "
                             "file", "export it first with 'onnxsmith export' and optimize the .onnx")
    protected = [model, *(p for p in (data, calibration) if p and Path(p).exists())]
    out = check_output_dir(output, "optimize", protected, force=force)
    target_id = "host" if target_spec == "host" else load_target(target_spec).id
    executor = RayExecutor(address)
    nodes = fleet_nodes(executor.ray)
    if not any(target_id in n["devices"] for n in nodes):
        raise UnsupportedError(f"no worker in the fleet owns a {target_id} device",
                               f"the fleet's devices: {', '.join(sorted({d for n in nodes for d in n['devices']})) or 'none'}",
                               "start one on that device with 'onnxsmith worker --address HEAD:PORT'")
    model_path = model_path.resolve()
    loaded = load_model(model_path, check=False)
    extra = {p.relative_to(model_path.parent).as_posix(): p for p in loaded.data_files if p != model_path}
    payloads = {"model": executor._put(model_path.name, model_path, extra)}
    head: list[Arg] = [("model",)]
    for key, spec, option in (("target", target_spec, "--target"), ("profile", profile_spec, "--profile")):
        if Path(spec).is_file():  # a target or profile file: it travels too
            payloads[key] = executor._put(Path(spec).name, Path(spec).resolve())
            head += [option, (key,)]
        else:
            head += [option, spec]
    for key, spec, option in (("data", data, "--data"), ("calibration", calibration, "--calibration")):
        if spec:
            path, member = _data_payload(spec, option)
            sha, _, box = executor._put(path.name, path)
            payloads[key] = (sha, member, box)
            head += [option, (key,)]
    say(f"running the ladder on the worker that owns {target_id}")
    task = executor.ray.remote(optimize_task).options(num_cpus=0, resources={DEVICE + target_id: 1}, max_retries=1,
                                                      num_returns=2)
    outcome_ref, data_ref = task.remote([*head, *args], payloads, target_id)
    try:
        outcome = _checked(executor.ray.get(outcome_ref))
    except BaseException:
        executor.ray.cancel(outcome_ref, force=True)
        raise
    packed = _checked_payload(executor.ray.get(data_ref), outcome.get("bundle_sha"))
    if not packed:
        raise FleetCommandError(f"optimize on fleet worker {outcome['worker']} failed: "
                                f"{outcome['error'].removeprefix('error: ')}", outcome["exit"] or 1)
    with private_dir(out.parent, out.name) as work:
        objects.unpack_to(packed, work)
        replace_dir(work / "out", out)
    try:
        record = json.loads(outcome["stdout"])
    except json.JSONDecodeError:
        record = json.loads((out / "card.json").read_text())
    return record, outcome["worker"]
