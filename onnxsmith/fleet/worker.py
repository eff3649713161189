"""``onnxsmith worker``: a Ray worker node (Ray's own ``ray start``) that advertises, as Ray custom resources, the
backends installed here (one unit per CPU each: compiles may overlap) and the devices it can run, one unit per
device: this machine as detected (``onnxsmith:device:host``) and the remote devices it fronts (a TVM RPC server,
or an emulator it starts itself with ``TARGET=qemu``)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from typing import Any

from onnxsmith.process import Child
from onnxsmith.errors import UnsupportedError, UserInputError
from onnxsmith.fleet import auth
from onnxsmith.fleet.ray_executor import BACKEND, DEVICE, DEVICES_ENV, WORKER, WORKER_ENV, import_ray


def parse_device(text: str) -> tuple[str, str]:
    """``TARGET=rpc://HOST:PORT`` or ``TARGET=qemu`` -> (target spec, address or 'qemu')."""
    target, sep, where = text.partition("=")
    if not sep or not target:
        raise UserInputError(f"invalid --device '{text}'", "expected TARGET=rpc://HOST:PORT or TARGET=qemu",
                             "for example --device arm/raspberry-pi-5=rpc://192.168.1.20:9090")
    if where == "qemu":
        return target, where
    match = re.match(r"^rpc://(\[?[A-Za-z0-9.\-:]+?\]?:\d{1,5})$", where)
    if not match:
        raise UserInputError(f"invalid --device '{text}'", f"'{where}' is neither rpc://HOST:PORT nor qemu",
                             "for example --device arm/raspberry-pi-5=rpc://192.168.1.20:9090")
    from onnxsmith.profiling.run import check_rpc_address

    check_rpc_address(match.group(1))
    return target, match.group(1)


def advertised(devices: dict[str, dict[str, Any]], cpus: int, name: str) -> dict[str, float]:
    """The Ray custom resources of this worker: backends installed here, devices, and its name."""
    from onnxsmith.registry import backend_names, backend_status

    resources: dict[str, float] = {WORKER + name: 1}
    for backend in backend_names():
        if backend_status(backend, probe_devices=False).available:
            resources[BACKEND + backend] = max(1, cpus)
    for target_id in devices:
        resources[DEVICE + target_id] = 1
    return resources


def run_worker(address: str, device_specs: Sequence[str], *, host: bool = True, name: str | None = None,
               cpus: int | None = None, node_ip: str | None = None, ray_args: Sequence[str] = (),
               token_file: str | None = None) -> int:
    """Start the node and block until it stops (Ctrl-C, SIGTERM or the head going away); returns ray's exit code.
    The node joins only a head that requires the fleet's token (:mod:`onnxsmith.fleet.auth`) and accepts ours."""
    import_ray()
    token_path = auth.token_file(token_file)
    auth.check_cluster(address, auth.read_token(token_path), token_path)
    if node_ip is None and _loopback(address):
        node_ip = "127.0.0.1"  # a head on loopback: this node on loopback too, nothing on other interfaces
    from onnxsmith.targets import load_target

    name = name or f"{platform.node()}-{os.getpid()}"
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    parsed = [parse_device(d) for d in device_specs]
    devices: dict[str, dict[str, Any]] = {}
    if host:
        from onnxsmith.targets.host import detect_host

        devices["host"] = {"remote": None, "emulated": False, "name": detect_host().name}
    with contextlib.ExitStack() as stack:
        for spec, where in parsed:
            target = load_target(spec)
            if where == "qemu":
                address_of = _start_emulator(target, stack)
                devices[target.id] = {"remote": address_of, "emulated": True, "name": f"emulated {target.id}"}
            else:
                devices[target.id] = {"remote": where, "emulated": False, "name": f"{target.id} at {where}"}
        resources = advertised(devices, cpus, name)
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}, **auth.ray_environment(token_path),
               DEVICES_ENV: json.dumps(devices), WORKER_ENV: name, "RAY_USAGE_STATS_ENABLED": "0"}
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address, "--block",
                   "--num-cpus", str(cpus), "--resources", json.dumps(resources), "--disable-usage-stats",
                   *(["--node-ip-address", node_ip] if node_ip else []), *ray_args]
        offered = ", ".join(f"{k} ({v['name']})" for k, v in devices.items()) or "none"
        installed = ", ".join(k[len(BACKEND):] for k in resources if k.startswith(BACKEND))
        print(f"worker {name}: devices {offered}; backends {installed}", flush=True)
        proc = Child(command, grace_s=30, env=env)  # Ray's processes share its group; see onnxsmith.process
        try:
            return proc.wait()
        finally:
            proc.stop()


def _loopback(address: str) -> bool:
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _start_emulator(target: Any, stack: contextlib.ExitStack) -> str:
    from onnxsmith.registry import backend_status, get_backend

    for backend in target.backends:
        if not backend_status(backend, probe_devices=False).available:
            continue
        emulator = get_backend(backend).emulated_device(target)
        if emulator is not None:
            return stack.enter_context(emulator)
    raise UnsupportedError(f"cannot emulate {target.id} here", "no installed backend of the target has an emulator "
                           "for it (TVM runs aarch64 under qemu-aarch64)",
                           "apt-get install qemu-user gcc-aarch64-linux-gnu, or front the real device with rpc://")
