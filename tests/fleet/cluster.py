"""A real local Ray fleet for tests and ``make bench``: a head and two ``onnxsmith worker`` nodes on 127.0.0.1,
inside a network and PID namespace (``unshare -n -p -f --mount-proc``) so that nothing listens outside loopback and
``ray stop`` can only reach the Ray processes started here.

``python -m tests.fleet.cluster OUT SCENARIO`` must run inside the namespace (use :func:`run_in_namespace`).
Worker ``host-worker`` owns this machine's CPU (``host``); worker ``arm-worker`` owns no host device and fronts the
qemu-aarch64 TVM RPC server it starts (``arm/raspberry-pi-5=qemu``). Each node has its own onnxsmith cache, as
separate machines would. The cluster uses Ray's token authentication, with a fresh token in ``OUT/token``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "onnxsmith" / "examples" / "digits"
PORT = 6399
HEAD = f"127.0.0.1:{PORT}"
CELLS = ["host:openvino:fp32", "host:onnxruntime:int8", "arm/raspberry-pi-5:tvm:fp32"]
FOREIGN_PORT = 6401


def namespace_command() -> list[str] | None:
    """The unshare prefix that works here (root, or an unprivileged user namespace), or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for prefix in (["unshare", "-n", "-p", "-f", "--mount-proc"], ["unshare", "-r", "-n", "-p", "-f", "--mount-proc"]):
        probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def run_in_namespace(out: Path, scenario: str, timeout: float) -> dict:
    prefix = namespace_command()
    if prefix is None:
        raise RuntimeError("no network namespace (unshare -n needs root or user namespaces)")
    proc = subprocess.run([*prefix, sys.executable, "-m", "tests.fleet.cluster", str(out), scenario], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    result = out / "scenario.json"
    if not result.exists():
        raise AssertionError(f"the fleet scenario failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    info = json.loads(result.read_text())
    if "error" in info:
        logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(out.glob("*.log")))
        raise AssertionError(f"the fleet scenario failed:\n{info['error']}{logs}")
    return info


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "ONNXSMITH_CACHE_DIR": str(cache), "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(ROOT)}


def _make_token(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _grpc_probe(address: str, service: str, token: str | None) -> str:
    """The status code of one call without (or with) a token: to a GCS, a raylet or a Ray Client server."""
    import grpc
    from ray.core.generated import (gcs_service_pb2, gcs_service_pb2_grpc, node_manager_pb2,
                                    node_manager_pb2_grpc, ray_client_pb2, ray_client_pb2_grpc)

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        call = {"gcs": lambda: gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(), timeout=20, metadata=metadata),
                "raylet": lambda: node_manager_pb2_grpc.NodeManagerServiceStub(channel).GetResourceLoad(
                    node_manager_pb2.GetResourceLoadRequest(), timeout=20, metadata=metadata),
                "client": lambda: ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                    ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), timeout=20,
                    metadata=metadata)}[service]
        try:
            call()
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


_CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    print("RAN", ray.get(ray.remote(lambda: 42).options(resources={"onnxsmith:worker:host-worker": 0.01}).remote()))
except Exception as exc:
    print("REFUSED", type(exc).__name__, " ".join(str(exc).split())[:600])
"""


def _auth_checks(out: Path, token: str, env: dict[str, str]) -> dict:
    """A Ray client without the token, or with a wrong one, is refused by the cluster and by each worker's
    raylet; with it, a task runs on host-worker."""
    import ray

    ray.init(address=HEAD, logging_level="ERROR", log_to_driver=False)
    try:
        raylets = {k.split(":", 2)[2]: f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}" for n in ray.nodes()
                   if n["Alive"] for k in n["Resources"] if k.startswith("onnxsmith:worker:")}
    finally:
        ray.shutdown()
    wrong = "0" * 64
    checks: dict = {"gcs": {name: _grpc_probe(HEAD, "gcs", t) for name, t in (("none", None), ("wrong", wrong),
                                                                               ("token", token))}}
    for worker, address in raylets.items():
        checks[worker] = {name: _grpc_probe(address, "raylet", t) for name, t in (("none", None), ("wrong", wrong),
                                                                                  ("token", token))}
    checks["ray_client"] = {name: _grpc_probe("127.0.0.1:10001", "client", t) for name, t in (("none", None),
                                                                                              ("wrong", wrong))}
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    _make_token(out / "wrong-token", wrong)
    for name, extra in (("none", {}), ("wrong", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH":
                                                   str(out / "wrong-token")}), ("token", {})):
        proc = subprocess.run([sys.executable, "-c", _CLIENT, HEAD], env={**(env if name == "token" else bare),
                              **extra}, capture_output=True, text=True, timeout=180)
        checks[f"ray_init_{name}"] = proc.stdout.strip()
    # the CLI with the wrong token: one line, before anything runs
    proc = _onnxsmith("probe", "--quick", "--cluster", HEAD, env={**env, "ONNXSMITH_RAY_TOKEN_FILE":
                                                                  str(out / "wrong-token")}, timeout=120)
    checks["cli_wrong_token"] = {"exit": proc.returncode, "stderr": proc.stderr}
    return checks


def foreign_python() -> list[str] | None:
    """A Python another user can run with this Ray (the venv's may sit under a private home), or None."""
    import ray

    site = str(Path(ray.__file__).resolve().parents[1])
    exe = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/usr/local/bin")
    if exe is None or shutil.which("setpriv") is None:
        return None
    probe = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "env",
                            f"PYTHONPATH={site}", exe, "-c", "import ray"], capture_output=True, cwd="/",
                           timeout=120)
    return [exe] if probe.returncode == 0 else None


def _foreign_checks(env: dict[str, str]) -> dict:
    """Another user (nobody) starts a head without authentication; --cluster auto must not attach to it, and an
    explicit --cluster / onnxsmith worker --address refuses it because it takes clients without a token."""
    import tempfile

    import ray

    python = foreign_python()
    if python is None:
        return {"skipped": "no Python that user nobody can run with this Ray (setpriv, /usr/bin/python3.X)"}
    home = Path(tempfile.mkdtemp(prefix="onnxsmith-foreign-"))
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    foreign_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    foreign_env.update(HOME=str(home), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                       PYTHONPATH=str(Path(ray.__file__).resolve().parents[1]))
    start = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *python, "-m",
                            "ray.scripts.scripts", "start", "--head", "--port", str(FOREIGN_PORT), "--num-cpus", "1",
                            "--node-ip-address", "127.0.0.1", "--temp-dir", str(home / "ray"),
                            "--include-dashboard", "false", "--disable-usage-stats"],
                           env=foreign_env, cwd=home, capture_output=True, text=True, timeout=180)
    checks: dict = {"foreign_start": start.returncode, "foreign_stderr": start.stderr[-1500:]}
    try:
        for name, args in (("auto", ["probe", "--quick", "--cluster", "auto"]),
                           ("explicit", ["probe", "--quick", "--cluster", f"127.0.0.1:{FOREIGN_PORT}"]),
                           ("worker", ["worker", "--address", f"127.0.0.1:{FOREIGN_PORT}", "--name", "w"])):
            proc = _onnxsmith(*args, env=env, timeout=120)
            checks[name] = {"exit": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout[-500:]}
    finally:
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True,
                       timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    return checks


def _onnxsmith(*args: str, env: dict[str, str], timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxsmith", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _compare(out: Path, cluster: bool, env: dict[str, str], cells: list[str] = CELLS) -> dict:
    args = ["compare", str(EXAMPLE / "digits_cnn.onnx"), *sum((["-t", c] for c in cells), []),
            "--data", str(EXAMPLE / "validation.npz"), "--labels", "label",
            "--calibration", str(EXAMPLE / "calibration.npz"), "-p", "quick", "--samples", "64", "-o", str(out)]
    start = time.perf_counter()
    proc = _onnxsmith(*args, *(["--cluster", HEAD] if cluster else []), env=env)
    wall = time.perf_counter() - start
    return {"exit": proc.returncode, "wall_s": wall, "out": str(out), "stderr": proc.stderr[-4000:], "stdout": proc.stdout[-6000:],
            "record": json.loads((out / "compare.json").read_text()) if (out / "compare.json").exists() else None}


def _wait_for_workers(names: set[str], proc: subprocess.Popen[str], timeout: float = 480) -> bool:
    """True once the workers ``names`` have joined; False when ``proc`` (the worker command) exited first."""
    import ray

    ray.init(address=HEAD, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = {k.split(":", 2)[2] for n in ray.nodes() if n["Alive"] for k in n["Resources"]
                    if k.startswith("onnxsmith:worker:")}
            if names <= have:
                return True
            if proc.poll() is not None:
                return False
            time.sleep(1)
        raise RuntimeError(f"workers {names} did not join (have {have})")
    finally:
        ray.shutdown()


def _killer(stop: threading.Event, killed: list[dict]) -> None:
    """Kill the Ray worker process running the first host profile (SIGKILL), once."""
    while not stop.is_set():
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                cmd = (proc_dir / "cmdline").read_bytes().split(b"\0")
                if b"onnxsmith.fleet.cells" not in cmd or b"measure" not in cmd:
                    continue
                request = json.loads(Path(cmd[cmd.index(b"measure") + 1].decode()).read_text())
                if request.get("remote"):
                    continue  # the emulated ARM profile: kill the host one
                stat = (proc_dir / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            time.sleep(1.0)  # mid-profile
            os.kill(parent, signal.SIGKILL)
            killed.append({"ray_worker_pid": parent, "stage_pid": int(proc_dir.name), "cell_bundle": request["bundle"]})
            return
        time.sleep(0.2)


def _sigkill_worker(proc: subprocess.Popen[str]) -> dict:
    """SIGKILL one ``onnxsmith worker`` CLI (no ``finally`` runs): its Ray node (``ray start``, the raylet and its
    workers) and the qemu RPC server it fronts must end with it; returns what it had started and what outlived it."""
    from tests.proctree import Tracker

    tracker = Tracker(proc.pid)
    tracker.scan()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return {"started": sorted(comm for _, comm in tracker.seen.values()), "left": tracker.wait_gone(90)}


def main(out: Path, scenario: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    out.mkdir(parents=True, exist_ok=True)
    caches = {n: out / f"cache-{n}" for n in ("driver", "host-worker", "arm-worker", "local")}
    ray_bin = [sys.executable, "-m", "ray.scripts.scripts"]
    token = "".join(f"{b:02x}" for b in os.urandom(32))
    token_file = _make_token(out / "token", token)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
                      ONNXSMITH_RAY_TOKEN_FILE=str(token_file))  # the head, the workers and every client use it
    head_env = _env(caches["driver"])
    workers: list[subprocess.Popen[str]] = []
    info: dict = {"scenario": scenario}
    try:
        start = time.perf_counter()
        subprocess.run([*ray_bin, "start", "--head", "--port", str(PORT), "--num-cpus", "0", "--node-ip-address",
                        "127.0.0.1", "--object-store-memory", str(300 * 2**20), "--disable-usage-stats",
                        "--include-dashboard", "false"], check=True, env=head_env, capture_output=True, timeout=180)
        for name, extra in (("host-worker", []), ("arm-worker", ["--no-host", "--device", "arm/raspberry-pi-5=qemu"])):
            # one at a time, and once more if Ray's fixed 30 s node start-up wait ran out on a loaded machine
            for attempt in range(3):
                log = open(out / f"{name}.log", "a")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "onnxsmith", "worker", "--address", HEAD, "--name", name, "--num-cpus",
                     "1", "--node-ip-address", "127.0.0.1", *extra], env=_env(caches[name]), stdout=log, stderr=log,
                    cwd=ROOT, text=True)
                if _wait_for_workers({name}, proc):
                    workers.append(proc)
                    break
                proc.wait()
            else:
                raise RuntimeError(f"worker {name} did not join the cluster in 3 attempts (see {name}.log)")
        info["cluster_start_s"] = time.perf_counter() - start
        if scenario in ("test", "bench"):
            info["ray"] = _compare(out / "ray", True, head_env)
            info["local"] = _compare(out / "local", False, _env(caches["local"]))
        if scenario == "bench":  # once more each, caches warm: the figures quoted are from this pair
            info["ray_warm"] = _compare(out / "ray2", True, head_env)
            info["local_warm"] = _compare(out / "local2", False, _env(caches["local"]))
        if scenario in ("acceptance", "bench"):  # the acceptance compare, through the cluster
            info["acceptance"] = _compare(out / "acceptance", True, head_env,
                                          ["host", "arm/raspberry-pi-5", "nvidia/h100", "apple/m3"])
        if scenario == "test":
            stop, killed = threading.Event(), []
            thread = threading.Thread(target=_killer, args=(stop, killed), daemon=True)
            thread.start()
            info["kill"] = _compare(out / "kill", True, head_env, CELLS[:2])
            stop.set()
            info["killed"] = killed
            bundle = out / "verbs-bundle"  # compile, profile and validate --cluster on one bundle
            verbs = {}
            for verb, args in (("compile", ["compile", str(EXAMPLE / "digits_cnn.onnx"), "-t", "host", "-b",
                                             "onnxruntime", "-p", "quick", "-o", str(bundle), "--cluster", HEAD]),
                               ("profile", ["profile", str(bundle), "-p", "quick", "--cluster", HEAD, "--json"]),
                               ("validate", ["validate", str(bundle), "--data", str(EXAMPLE / "validation.npz"),
                                             "--labels", "label", "--cluster", HEAD, "--json"])):
                proc = _onnxsmith(*args, env=head_env)
                verbs[verb] = {"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-2000:]}
            verbs["bundle"] = str(bundle)
            optimized = out / "optimized"  # optimize --cluster: the ladder on host-worker, the output back here
            for verb, target in (("optimize", "host"), ("optimize-rpc", "arm/raspberry-pi-5")):
                proc = _onnxsmith("optimize", str(EXAMPLE / "digits_cnn.onnx"), "-t", target, "-b", "onnxruntime",
                                  "-p", "quick", "--data", str(EXAMPLE / "validation.npz"), "--labels", "label",
                                  "--max-accuracy-drop", "2%", "-o", str(optimized if target == "host" else
                                                                        out / "optimized-rpc"),
                                  "--cluster", HEAD, env=head_env)
                verbs[verb] = {"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-2000:]}
            verbs["optimized"] = str(optimized)
            info["verbs"] = verbs
        if scenario in ("test", "auth"):  # last: the foreign cluster needs ours stopped
            info["auth"] = _auth_checks(out, token, head_env)
            if scenario == "test":
                info["worker_kill"] = _sigkill_worker(workers[-1])
            subprocess.run([*ray_bin, "stop", "--force"], capture_output=True, timeout=120)
            info["foreign"] = _foreign_checks(head_env)
    except BaseException:
        import traceback

        info["error"] = traceback.format_exc()
        raise
    finally:
        subprocess.run([*ray_bin, "stop", "--force"], capture_output=True, timeout=120)
        for proc in workers:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        (out / "scenario.json").write_text(json.dumps(info, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
