"""The Ray executor: cells on a fleet of ``onnxsmith worker`` nodes. Ray is the distributed engine (placement,
object transfer, worker processes); onnxsmith only says what each stage needs:

* a compile task needs ``onnxsmith:backend:<name>`` (a worker advertises one unit per CPU for every backend
  installed on it), or the device itself when the artifact must be built there (the ``host`` target, which is
  detected where it runs, and backends whose ``builds_on_device`` says so);
* a measure task (profile + validate) needs ``onnxsmith:device:<target id>``, of which each worker advertises one
  unit per device it owns, so two profiles never share a device.

Models, data and bundles travel as content-addressed payloads (:mod:`onnxsmith.fleet.objects`) through Ray's object
store; a worker fetches one only when it does not hold it yet. A task whose worker dies is submitted once more (Ray
places it on a worker with the same resource); a killed attempt returns nothing, so its timings are never counted.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from onnxsmith.errors import MissingDependencyError, UnsupportedError, UserInputError
from onnxsmith.fleet.cells import CellSpec
from onnxsmith.fleet.plan import CellOutcome, Plan, Progress

DEVICE = "onnxsmith:device:"
BACKEND = "onnxsmith:backend:"
WORKER = "onnxsmith:worker:"
DEVICES_ENV = "ONNXSMITH_FLEET_DEVICES"
WORKER_ENV = "ONNXSMITH_FLEET_WORKER"
NO_DEVICE = "not measured: no such device in the fleet"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("ray", "ray", "the fleet (--cluster, onnxsmith worker) runs on Ray") from exc
    return ray


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``) as a driver, with the fleet's token
    (:mod:`onnxsmith.fleet.auth`): ``auto`` is the one cluster of this user on this machine, and a cluster that
    accepts a client without the token, or refuses ours, is never joined."""
    from onnxsmith.fleet import auth

    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray
    if address != "auto" and (":" not in address or "://" in address):
        raise UserInputError(f"invalid --cluster '{address}'", "expected auto or HOST:PORT of a Ray head's GCS "
                             "(Ray Client ray:// addresses are not supported)", "for example --cluster 127.0.0.1:6379")
    path = auth.token_file()
    token = auth.read_token(path)
    gcs = auth.own_cluster() if address == "auto" else address
    auth.check_cluster(gcs, token, path)
    auth.use_token(path)
    try:
        ray.init(address=gcs, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # ConnectionError, ValueError ... from Ray
        raise UnsupportedError(f"cannot join the Ray cluster at {gcs}", str(exc).splitlines()[0][:200],
                               "start a head with 'ray start --head' and workers with 'onnxsmith worker'") from exc
    return ray


def fleet_nodes(ray: Any) -> list[dict[str, Any]]:
    """Alive nodes with their onnxsmith resources: ``{"id", "worker", "devices", "backends"}``."""
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources") or {}
        worker = next((k[len(WORKER):] for k in res if k.startswith(WORKER)), None)
        devices = sorted(k[len(DEVICE):] for k in res if k.startswith(DEVICE))
        backends = sorted(k[len(BACKEND):] for k in res if k.startswith(BACKEND))
        if worker or devices or backends:
            nodes.append({"id": node["NodeID"], "worker": worker or node["NodeID"][:8], "devices": devices,
                          "backends": backends, "address": node.get("NodeManagerAddress")})
    return nodes


# --- what runs in the tasks (on the workers) ------------------------------------------------------------------------
def materialize(ray: Any, sha: str, box: list[Any], transfers: dict[str, str], what: str) -> Path:
    """The folder payload ``sha`` is unpacked in on this worker: from its own store when it holds it, else fetched
    from the object store (``box`` wraps the ref so Ray does not fetch it eagerly); ``transfers[what]`` says which."""
    from onnxsmith.fleet import objects

    folder = objects.cached(sha)
    if folder is not None:
        transfers[what] = "cached"
        return folder
    transfers[what] = "fetched"
    return objects.unpack(sha, ray.get(box[0]))


def worker_name() -> str:
    """The name this worker was started with (``onnxsmith worker --name``), else the host name."""
    import platform

    return os.environ.get(WORKER_ENV) or platform.node()


def compile_task(request: dict[str, Any], payloads: dict[str, tuple[str, str, list[Any]]]) -> tuple[str, bytes]:
    """Compile one cell on this worker; returns (the outcome as JSON, the bundle as a payload)."""
    import tempfile

    import ray

    from onnxsmith.fleet import objects
    from onnxsmith.fleet.cells import run_stage

    started = time.perf_counter()
    transfers: dict[str, str] = {}
    for key, (sha, name, box) in payloads.items():
        request[key] = str(materialize(ray, sha, box, transfers, key) / name)
    with tempfile.TemporaryDirectory(prefix="onnxsmith-fleet-compile-") as tmp:
        request["output"] = str(Path(tmp) / "bundle")
        stage_start = time.perf_counter()
        outcome = run_stage("compile", request, Path(tmp) / "stage")
        outcome["stage_s"] = time.perf_counter() - stage_start
        data = b""
        if outcome["status"] == "ok":
            data = objects.pack({"bundle": Path(tmp) / "bundle"})
            outcome["bundle_sha"] = objects.digest(data)
    outcome.update(worker=worker_name(), transfers=transfers, task_s=time.perf_counter() - started)
    return json.dumps(outcome), data


def measure_task(request: dict[str, Any], target_id: str, bundle: tuple[str, list[Any]],
                 payloads: dict[str, tuple[str, str, list[Any]]]) -> tuple[str, bytes]:
    """Profile and validate one cell on the device this worker owns; returns (the outcome as JSON, the measured
    bundle)."""
    import shutil
    import tempfile

    import ray

    from onnxsmith.fleet import objects
    from onnxsmith.fleet.cells import run_stage

    started = time.perf_counter()
    transfers: dict[str, str] = {}
    device = json.loads(os.environ.get(DEVICES_ENV) or "{}").get(target_id) or {}
    for key, (sha, name, box) in payloads.items():
        request[key] = str(materialize(ray, sha, box, transfers, key) / name)
    source = materialize(ray, bundle[0], bundle[1], transfers, "bundle") / "bundle"
    with tempfile.TemporaryDirectory(prefix="onnxsmith-fleet-measure-") as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(source, work)  # the cached payload stays as it arrived
        request.update(bundle=str(work), remote=device.get("remote"), emulated=bool(device.get("emulated")))
        stage_start = time.perf_counter()
        outcome = run_stage("measure", request, Path(tmp) / "stage")
        outcome["stage_s"] = time.perf_counter() - stage_start
        data = objects.pack({"bundle": work}) if outcome["status"] == "ok" else b""
        if data:
            outcome["bundle_sha"] = objects.digest(data)
    outcome.update(worker=worker_name(), transfers=transfers, emulated=bool(device.get("emulated")),
                   remote=device.get("remote"), task_s=time.perf_counter() - started)
    return json.dumps(outcome), data


# --- what comes back from the workers, checked before use -------------------------------------------------------------
_STATUSES = {"ok", "error", "interrupted", "crash"}
MAX_OUTCOME = 64 * 2**20


class MalformedResult(ValueError):
    """A worker's result is not what its task returns."""


def checked_json(raw: Any, what: str) -> dict[str, Any]:
    """A task's JSON text decoded into a dict of plain values (never an object Ray would unpickle for us)."""
    if not isinstance(raw, str) or len(raw) > MAX_OUTCOME:
        raise MalformedResult(f"{what} is {type(raw).__name__}, not JSON text")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise MalformedResult(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedResult(f"{what} is a JSON {type(value).__name__}, not an object")
    return value


def checked_outcome(raw: Any, stage: str) -> dict[str, Any]:
    """The outcome of a compile or measure task, its types checked."""
    outcome = checked_json(raw, f"the {stage} result")
    if outcome.get("status") not in _STATUSES:
        raise MalformedResult(f"the {stage} result has status {str(outcome.get('status'))[:40]!r}")
    if not isinstance(outcome.get("worker"), str) or not isinstance(outcome.get("message", ""), str):
        raise MalformedResult(f"the {stage} result names no worker")
    transfers = outcome.get("transfers", {})
    if not isinstance(transfers, dict) or not all(isinstance(k, str) and v in ("fetched", "cached")
                                                  for k, v in transfers.items()):
        raise MalformedResult(f"the {stage} result has malformed transfers")
    for key in ("task_s", "stage_s"):
        if outcome.get(key) is not None and (isinstance(outcome[key], bool)
                                             or not isinstance(outcome[key], (int, float))):
            raise MalformedResult(f"the {stage} result's {key} is no number")
    if outcome["status"] == "ok":
        result = outcome.get("result")
        sha = outcome.get("bundle_sha")
        if not isinstance(result, dict) or not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise MalformedResult(f"the {stage} result has no result or bundle digest")
        if stage == "compile" and not isinstance(result.get("target"), str):
            raise MalformedResult("the compile result names no target")
        if stage == "measure" and not all(isinstance(result.get(k), (dict, type(None)))
                                          for k in ("profile", "validation")):
            raise MalformedResult("the measure result has no profile or validation record")
    return outcome


def checked_payload(raw: Any, sha: str | None, what: str) -> bytes:
    """A packed bundle that came back: bytes whose sha256 is the one its outcome named."""
    from onnxsmith.fleet import objects

    if not isinstance(raw, bytes):
        raise MalformedResult(f"{what} is {type(raw).__name__}, not bytes")
    if raw and objects.digest(raw) != sha:
        raise MalformedResult(f"{what} does not match its sha256")
    return raw


# --- the driver -------------------------------------------------------------------------------------------------------
class RayExecutor:
    name = "ray"

    def __init__(self, address: str) -> None:
        self.address = address
        self.ray = connect(address)
        self._refs: dict[str, Any] = {}

    def workers(self) -> list[dict[str, Any]]:
        return [{"name": n["worker"], "devices": n["devices"], "backends": n["backends"], "address": n["address"]}
                for n in fleet_nodes(self.ray)]

    def _put(self, name: str, path: Path, extra: dict[str, Path] | None = None) -> tuple[str, str, list[Any]]:
        """Put a file or folder (with ``extra`` members) into the object store once per content."""
        from onnxsmith.fleet import objects

        data = objects.pack({name: path, **(extra or {})})
        sha = objects.digest(data)
        if sha not in self._refs:
            self._refs[sha] = self.ray.put(data)
        return sha, name, [self._refs[sha]]

    def _payloads(self, plan: Plan, loaded_files: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
        model = plan.model
        extra = {p.relative_to(model.parent).as_posix(): p for p in loaded_files if p != model}
        compile_payloads = {"model": self._put(model.name, model, extra)}
        measure_payloads: dict[str, Any] = {}
        calib = plan.calibration or plan.data
        if calib is not None:
            compile_payloads["calibration"] = self._put(calib.name, calib)
        if plan.data is not None:
            measure_payloads["data"] = self._put(plan.data.name, plan.data)
        return compile_payloads, measure_payloads

    def _placement(self, spec: CellSpec, nodes: list[dict[str, Any]]) -> tuple[str | None, dict[str, float], str]:
        """(backend, Ray resources of the compile task, '' or why the cell cannot compile anywhere)."""
        from onnxsmith.registry import get_backend
        from onnxsmith.targets import load_target

        target_id = load_target(spec.target).id if spec.target != "host" else "host"
        everywhere = {b for n in nodes for b in n["backends"]}
        if spec.target == "host":
            holders = [n for n in nodes if "host" in n["devices"]]
            if not holders:
                return None, {}, f"failed: no worker in the fleet owns a host device ({NO_DEVICE})"
            return spec.backend, {DEVICE + "host": 1}, ""
        target = load_target(spec.target)
        backend = spec.backend or next((b for b in target.backends if b in everywhere), None)
        if backend is None or backend not in everywhere:
            wanted = backend or " / ".join(target.backends)
            return None, {}, f"no worker in the fleet has backend {wanted} installed"
        try:
            on_device = get_backend(backend).builds_on_device(target)
        except Exception:  # not installed on the driver: the worker decides nothing here, the default is cross-build
            on_device = False
        if on_device:
            return backend, {DEVICE + target_id: 1}, ""
        return backend, {BACKEND + backend: 1}, ""

    def run(self, plan: Plan, work: Path, progress: Progress) -> list[CellOutcome]:
        from onnxsmith.model import load_model
        from onnxsmith.targets import load_target

        ray = self.ray
        nodes = fleet_nodes(ray)
        loaded = load_model(plan.model, {k: tuple(v) for k, v in plan.shapes.items()}, check=False)
        compile_payloads, measure_payloads = self._payloads(plan, [plan.model, *loaded.data_files])
        compile_fn = ray.remote(compile_task)
        measure_fn = ray.remote(measure_task)
        cells = [CellOutcome(spec) for spec in plan.cells]
        pending: dict[Any, tuple[CellOutcome, str, Any]] = {}  # outcome ref -> (cell, stage, data ref)
        submitted_at: dict[Any, float] = {}
        tasks: dict[int, tuple[str, Any]] = {}  # id(cell) -> how to resubmit its current stage

        def submit_compile(cell: CellOutcome, resources: dict[str, float], backend: str | None) -> None:
            spec = CellSpec(cell.spec.target, backend, cell.spec.precision)
            request = plan.compile_request(spec, Path("unused"))
            task = compile_fn.options(num_cpus=1, resources=resources, max_retries=0, num_returns=2)
            outcome_ref, data_ref = task.remote(request, dict(compile_payloads))
            pending[outcome_ref] = (cell, "compile", data_ref)
            submitted_at[outcome_ref] = time.perf_counter()
            tasks[id(cell)] = ("compile", lambda: submit_compile(cell, resources, backend))
            cell.attempts += 1

        def submit_measure(cell: CellOutcome, target_id: str, bundle: tuple[str, list[Any]]) -> None:
            if tasks.get(id(cell), ("",))[0] != "measure":
                cell.attempts = 0  # attempts count the submissions of the cell's last stage
            request = plan.measure_request(Path("unused"), None, False)
            task = measure_fn.options(num_cpus=0, resources={DEVICE + target_id: 1}, max_retries=0, num_returns=2)
            outcome_ref, data_ref = task.remote(request, target_id, bundle, dict(measure_payloads))
            pending[outcome_ref] = (cell, "measure", data_ref)
            submitted_at[outcome_ref] = time.perf_counter()
            tasks[id(cell)] = ("measure", lambda: submit_measure(cell, target_id, bundle))
            cell.attempts += 1

        compiled_data: dict[int, Any] = {}
        if plan.bundle is not None:  # profile/validate --cluster: measure an existing bundle where its device is
            from onnxsmith.bundle import Bundle

            cell = cells[0]
            manifest = Bundle.open(plan.bundle).manifest
            target_id = manifest["target"]["id"]
            cell.compile = {"target": target_id, "backend": manifest["backend"], "precision": manifest["precision"],
                            "precision_used": manifest["precision_used"]}
            if not any(target_id in n["devices"] for n in nodes):
                raise UnsupportedError(f"no worker in the fleet owns a {target_id} device",
                                       f"the fleet's devices: {', '.join(sorted({d for n in nodes for d in n['devices']})) or 'none'}",
                                       "start one with 'onnxsmith worker --address HEAD:PORT [--device ...]'")
            sha, _, box = self._put("bundle", plan.bundle)
            compiled_data[id(cell)] = (box[0], sha)
            progress(cell, f"profiling on the worker that owns {target_id}")
            submit_measure(cell, target_id, (sha, box))
        for cell in cells if plan.bundle is None else []:
            backend, resources, why = self._placement(cell.spec, nodes)
            if why:
                cell.status, cell.reason = "failed", why
                progress(cell, why)
                continue
            progress(cell, "compiling")
            submit_compile(cell, resources, backend)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                if not ready:
                    for cell in self._check_stranded(pending):
                        self._unpack(*compiled_data.pop(id(cell)), work, cell)
                        progress(cell, cell.reason)
                    continue
                ref = ready[0]
                cell, stage, data_ref = pending.pop(ref)
                seconds = time.perf_counter() - submitted_at.pop(ref)
                try:
                    outcome = checked_outcome(ray.get(ref), stage)
                except MalformedResult as exc:
                    outcome = {"status": "crash", "message": f"the worker sent a malformed result ({exc})"}
                except Exception as exc:  # the worker (process or node) died: WorkerCrashedError, NodeDiedError...
                    reason = f"attempt {cell.attempts} ({stage}) lost: {type(exc).__name__}"
                    cell.failed_attempts.append(reason)
                    target_id = "host" if cell.spec.target == "host" else load_target(cell.spec.target).id
                    still = any(target_id in n["devices"] for n in fleet_nodes(ray)) if stage == "measure" else True
                    if len(cell.failed_attempts) == 1 and still:
                        progress(cell, f"{reason}; retrying once")
                        tasks[id(cell)][1]()
                    else:
                        cell.status = "compiled" if stage == "measure" else "failed"
                        cell.reason = (f"{stage} failed: {reason}" + ("" if still else
                                       "; no other worker has this device"))
                        progress(cell, cell.reason)
                    continue
                cell.seconds[stage] = cell.seconds.get(stage, 0.0) + seconds
                for part in ("task_s", "stage_s"):  # the Ray overhead is what the driver waited beyond the stage
                    if outcome.get(part) is not None:
                        key = f"{stage}_{part[:-2]}"
                        cell.seconds[key] = cell.seconds.get(key, 0.0) + outcome[part]
                cell.transfers.update({f"{stage}:{k}": v for k, v in outcome.get("transfers", {}).items()})
                cell.worker = outcome.get("worker")
                if outcome["status"] != "ok":
                    cell.fail(outcome, stage)
                    if stage == "measure":
                        self._unpack(*compiled_data.pop(id(cell)), work, cell)
                    progress(cell, cell.reason)
                    continue
                if stage == "compile":
                    cell.compile = outcome["result"]
                    target_id = cell.compile["target"]
                    bundle = (outcome["bundle_sha"], [data_ref])
                    compiled_data[id(cell)] = (data_ref, outcome["bundle_sha"])
                    if "measure" not in plan.stages:
                        cell.status = "compiled"
                        self._unpack(data_ref, outcome["bundle_sha"], work, cell)
                        progress(cell, f"compiled on {cell.worker}")
                        continue
                    if not any(target_id in n["devices"] for n in fleet_nodes(ray)):
                        cell.status, cell.reason = "compiled", NO_DEVICE
                        self._unpack(data_ref, outcome["bundle_sha"], work, cell)
                        progress(cell, f"compiled on {cell.worker}; {NO_DEVICE}")
                        continue
                    progress(cell, f"compiled on {cell.worker}; profiling on the worker that owns {target_id}")
                    submit_measure(cell, target_id, bundle)
                    continue
                result = outcome["result"]
                cell.profile, cell.validation = result["profile"], result["validation"]
                cell.emulated = bool(outcome.get("emulated"))
                cell.device = (cell.profile or {}).get("device")
                cell.status = "measured"
                compiled_data.pop(id(cell), None)
                self._unpack(data_ref, outcome["bundle_sha"], work, cell)
                progress(cell, f"measured on {cell.worker}" + (" (emulated)" if cell.emulated else ""))
        except BaseException:
            for ref in list(pending):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            raise
        return cells

    def _unpack(self, data_ref: Any, sha: str | None, work: Path, cell: CellOutcome) -> None:
        """Write the cell's bundle into the (private) result folder: unpacked aside, then renamed into place; a
        payload that does not match its digest is left out, with the reason."""
        import shutil

        from onnxsmith.build.cache import private_dir
        from onnxsmith.fleet import objects

        try:
            data = checked_payload(self.ray.get(data_ref), sha, "the bundle that came back")
        except MalformedResult as exc:
            cell.reason = f"{cell.reason + '; ' if cell.reason else ''}{exc}: left out"
            return
        if not data:
            return
        cells_dir = work / "cells"
        with private_dir(cells_dir, cell.spec.slug) as tmp:
            objects.unpack_to(data, tmp)
            final = cells_dir / cell.spec.slug
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp / "bundle", final)

    def _check_stranded(self, pending: dict[Any, tuple[CellOutcome, str, Any]]) -> list[CellOutcome]:
        """A measure task waiting for a device no alive worker has any more would wait for ever: report it."""
        devices = {d for n in fleet_nodes(self.ray) for d in n["devices"]}
        stranded = []
        for ref, (cell, stage, _) in list(pending.items()):
            if stage == "measure" and cell.compile and cell.compile["target"] not in devices:
                self.ray.cancel(ref, force=True)
                pending.pop(ref)
                cell.status = "compiled"
                cell.reason = f"measure failed: the worker owning {cell.compile['target']} left the fleet"
                stranded.append(cell)
        return stranded


def _probe_task(backend: str | None, quick: bool) -> str:
    from onnxsmith.probe import probe_host

    record = probe_host(backend, quick=quick)
    record["worker"] = worker_name()
    return json.dumps(record)


def probe_cluster(address: str, backend: str | None, quick: bool) -> list[dict[str, Any]]:
    """Probe every worker's host device (one task per worker, holding that device), each stored on its worker."""
    ray = connect(address)
    nodes = [n for n in fleet_nodes(ray) if "host" in n["devices"]]
    if not nodes:
        raise UnsupportedError("no worker in the fleet owns a host device", "every worker was started with --no-host",
                               "start one with 'onnxsmith worker --address HEAD:PORT'")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(_probe_task)
    refs = [task.options(num_cpus=0, resources={DEVICE + "host": 1}, max_retries=0,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(n["id"], soft=False)).remote(backend, quick)
            for n in nodes]
    records = []
    for raw in ray.get(refs):
        try:
            record = checked_json(raw, "a probe result")
            if not (isinstance(record.get("worker"), str) and isinstance(record.get("peaks"), dict)):
                raise MalformedResult("a probe result has no worker or peaks")
        except MalformedResult as exc:
            from onnxsmith.errors import BackendError

            raise BackendError("probing the fleet failed", f"a worker sent a malformed result ({exc})") from exc
        records.append(record)
    return records


def fleet_compile(address: str, model: str, target: str, output: str, *, backend: str | None, precision: str | None,
                  profile: str, shapes: dict[str, list[int]], calibration: str | None, options: dict[str, str],
                  force: bool = False, progress: Progress | None = None) -> CellOutcome:
    """``compile --cluster``: compile on a worker that has the backend (or the device, when the artifact must be
    built there) and write the bundle at ``output`` (atomically)."""
    from onnxsmith.build.cache import private_dir, replace_dir
    from onnxsmith.errors import BackendError
    from onnxsmith.dirs import check_output_dir

    out = check_output_dir(output, "bundle", [model, *([calibration] if calibration else [])], force=force)
    spec = CellSpec(target, backend, precision)
    plan = Plan(model=Path(model).resolve(), shapes=shapes, cells=(spec,), profile=profile, data=None, labels=None,
                calibration=None if calibration is None else Path(calibration).resolve(), samples=0, options=options,
                stages=("compile",))
    with private_dir(out.parent, out.name) as work:
        cell = RayExecutor(address).run(plan, work, progress or (lambda c, m: None))[0]
        if cell.status != "compiled":
            raise BackendError(f"compiling on the fleet failed for {target}", cell.reason or cell.status)
        replace_dir(work / "cells" / spec.slug, out)
    return cell


def fleet_measure(address: str, bundle: str, parts: tuple[str, ...], *, profile: str, data: str | None = None,
                  labels: str | None = None, samples: int = 64, progress: Progress | None = None) -> CellOutcome:
    """``profile/validate --cluster``: measure ``bundle`` on the worker that owns its device; its profile.json /
    validation.json (and worst examples) come back into the local bundle."""
    import shutil

    from onnxsmith.bundle import Bundle
    from onnxsmith.build.cache import private_dir
    from onnxsmith.errors import BackendError
    from onnxsmith.report import write_report

    local = Bundle.open(bundle)
    plan = Plan(model=local.reference_model, shapes={}, cells=(CellSpec(local.manifest["target"]["id"]),),
                profile=profile, data=None if data is None else Path(data).resolve(), labels=labels, samples=samples,
                calibration=None, options={}, measure_parts=parts, bundle=local.path)
    with private_dir(local.path.parent, f"{local.path.name}-fleet") as work:
        cell = RayExecutor(address).run(plan, work, progress or (lambda c, m: None))[0]
        if cell.status != "measured" and not (cell.profile or cell.validation):
            raise BackendError(f"measuring on the fleet failed for {local.path}", cell.reason or cell.status)
        came = work / "cells" / cell.spec.slug
        for part, name in (("profile", "profile.json"), ("validate", "validation.json")):
            if part in parts and (came / name).is_file():
                shutil.copyfile(came / name, local.path / name)
        if "validate" in parts and (came / "examples").is_dir():
            shutil.rmtree(local.path / "examples", ignore_errors=True)
            shutil.copytree(came / "examples", local.path / "examples")
    local.wrote("profile.json", "validation.json", "examples")
    write_report(local)
    return cell
