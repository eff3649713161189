"""A real Ray fleet on 127.0.0.1: a head and two ``onnxsmith worker`` nodes (one owning this machine's CPU, one
fronting the qemu-aarch64 TVM RPC server it starts), started once for the module inside a network and PID
namespace (see tests/fleet/cluster.py). One compare runs through it and the same compare on the local executor;
then a compare during which the Ray worker process running a profile is killed with SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet import cluster

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'onnxsmith[ray]')")
    if cluster.namespace_command() is None:
        pytest.skip("Ray test clusters start inside a network namespace, and unshare -n is not permitted here "
                    "(needs root or unprivileged user namespaces)")
    from onnxsmith.compilers.tvm import emulate

    if emulate.missing():
        pytest.skip(f"the ARM worker needs the qemu-aarch64 TVM RPC server: {emulate.missing()}")
    out = tmp_path_factory.mktemp("fleet")
    return cluster.run_in_namespace(out, "test", timeout=1500)


def _cells(run: dict) -> dict[str, dict]:
    assert run["exit"] == 0, run["stderr"]
    return {c["cell"]: c for c in run["record"]["cells"]}


def test_each_cell_runs_on_the_worker_that_owns_its_device(scenario: dict) -> None:
    cells = _cells(scenario["ray"])
    assert set(cells) == set(cluster.CELLS)
    for name in ("host:openvino:fp32", "host:onnxruntime:int8"):
        assert cells[name]["status"] == "measured" and cells[name]["worker"] == "host-worker"
        assert not cells[name]["emulated"] and cells[name]["rank"] in (1, 2)
        assert cells[name]["p50_ms"] > 0 and cells[name]["baseline_p50_ms"] > 0
    arm = cells["arm/raspberry-pi-5:tvm:fp32"]
    assert arm["status"] == "measured" and arm["worker"] == "arm-worker"
    assert arm["emulated"] and arm["rank"] is None and "rpc" in arm["device"].lower()
    record = scenario["ray"]["record"]
    assert record["executor"] == "ray" and {w["name"] for w in record["workers"]} == {"host-worker", "arm-worker"}
    assert "EMULATED" in scenario["ray"]["stdout"] and "host-worker" in scenario["ray"]["stdout"]


def test_payloads_are_content_addressed_and_fetched_once_per_worker(scenario: dict) -> None:
    cells = _cells(scenario["ray"])
    for cell in cells.values():
        assert set(cell["transfers"].values()) <= {"fetched", "cached"}
    # the two host cells compile and measure on host-worker: its second use of the model is from its own store
    host = [cells["host:openvino:fp32"]["transfers"], cells["host:onnxruntime:int8"]["transfers"]]
    assert sorted(t["compile:model"] for t in host) == ["cached", "fetched"]
    # the kill run reuses the same cluster: the model is never sent to host-worker again
    kill = _cells(scenario["kill"])
    assert all(c["transfers"]["compile:model"] == "cached" for c in kill.values())


def test_results_match_the_local_executor(scenario: dict) -> None:
    ray_cells, local_cells = _cells(scenario["ray"]), _cells(scenario["local"])
    assert scenario["local"]["record"]["executor"] == "local"
    for name in cluster.CELLS:
        a, b = ray_cells[name], local_cells[name]
        assert a["status"] == b["status"] == "measured"
        assert a["emulated"] == b["emulated"]
        assert a["precision_used"] == b["precision_used"]
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
        assert a["reference_accuracy"] == pytest.approx(b["reference_accuracy"], abs=1e-9)
        assert a["cosine_min"] == pytest.approx(b["cosine_min"], abs=1e-5)
        assert a["validation_passed"] == b["validation_passed"]


def test_a_killed_worker_is_retried_and_its_timings_never_counted(scenario: dict) -> None:
    assert scenario["killed"], "the test never saw a host profile to kill"
    cells = _cells(scenario["kill"])
    retried = [c for c in cells.values() if c["failed_attempts"]]
    assert len(retried) == 1, cells
    cell = retried[0]
    assert "lost" in cell["failed_attempts"][0] and cell["attempts"] == 2
    assert cell["status"] == "measured" and cell["worker"] == "host-worker" and cell["p50_ms"] > 0
    # the other cell finished untouched
    other = [c for c in cells.values() if c is not cell][0]
    assert other["status"] == "measured" and other["attempts"] == 1
    # every cell bundle in the result is whole (its profile and validation written), nothing half-written beside
    out = Path(scenario["kill"]["out"])
    names = sorted(p.name for p in (out / "cells").iterdir())
    assert names == sorted(c["slug"] for c in cells.values())
    for c in cells.values():
        assert (out / c["bundle"] / "profile.json").is_file() and (out / c["bundle"] / "validation.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_compile_profile_validate_take_cluster(scenario: dict) -> None:
    import json

    verbs = scenario["verbs"]
    for verb in ("compile", "profile", "validate"):
        assert verbs[verb]["exit"] == 0, (verb, verbs[verb]["stderr"])
    assert "compiled on fleet worker host-worker" in verbs["compile"]["stdout"]
    bundle = Path(verbs["bundle"])
    profile = json.loads((bundle / "profile.json").read_text())
    assert profile == json.loads(verbs["profile"]["stdout"]) and profile["latency_ms"]["p50"] > 0
    validation = json.loads((bundle / "validation.json").read_text())
    assert validation["passed"] and validation["accuracy"] > 0.9 and validation["samples"] > 0
    from onnxsmith.bundle import Bundle

    Bundle.open(bundle)  # the bundle that came back is whole: checksums verified


def test_optimize_takes_cluster(scenario: dict) -> None:
    import json

    verbs = scenario["verbs"]
    run = verbs["optimize"]
    assert run["exit"] == 0, run["stderr"]
    assert "ran on fleet worker host-worker" in run["stdout"]
    out = Path(verbs["optimized"])
    card = json.loads((out / "card.json").read_text())
    assert card["chosen"] and card["bundle"] and (out / "card.html").is_file()
    measured = [s for s in card["steps"] if s["status"] != "failed"]
    assert len(measured) >= 2 and all(s["latency_p50_ms"] > 0 for s in measured)
    from onnxsmith.bundle import Bundle

    Bundle.open(out / card["bundle"])  # whole: its checksums verify
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    # a device the worker fronts over RPC: refused in one line, nothing written
    rpc = verbs["optimize-rpc"]
    assert rpc["exit"] == 5, rpc["stderr"]
    last = rpc["stderr"].strip().splitlines()[-1]
    assert last.startswith("error:") and "RPC" in last and "Traceback" not in rpc["stderr"], rpc["stderr"]
    assert not (out.parent / "optimized-rpc").exists()


def test_a_client_without_the_token_is_refused_by_the_cluster_and_its_workers(scenario: dict) -> None:
    auth = scenario["auth"]
    # raw gRPC calls: the head's GCS, each worker's raylet and the Ray Client server refuse a missing or wrong token
    for part in ("gcs", "host-worker", "arm-worker"):
        assert auth[part] == {"none": "UNAUTHENTICATED", "wrong": "UNAUTHENTICATED", "token": "OK"}, (part, auth)
    assert auth["ray_client"] == {"none": "UNAUTHENTICATED", "wrong": "UNAUTHENTICATED"}, auth
    # a real Ray driver: refused without the token and with a wrong one; with it, a task runs on host-worker
    assert auth["ray_init_none"].startswith("REFUSED") and cluster.HEAD in auth["ray_init_none"], auth
    assert auth["ray_init_wrong"].startswith("REFUSED") and cluster.HEAD in auth["ray_init_wrong"], auth
    assert auth["ray_init_token"] == "RAN 42", auth
    # the CLI with the wrong token: one line, exit 2 (bad input), nothing ran
    wrong = auth["cli_wrong_token"]
    assert wrong["exit"] == 2 and "Traceback" not in wrong["stderr"], wrong
    last = wrong["stderr"].strip().splitlines()[-1]
    assert last.startswith("error:") and "refused the token" in last, wrong


def test_cluster_auto_does_not_attach_to_another_users_cluster(scenario: dict) -> None:
    foreign = scenario["foreign"]
    if "skipped" in foreign:
        pytest.skip(foreign["skipped"])
    assert foreign["foreign_start"] == 0, foreign["foreign_stderr"]
    auto = foreign["auto"]
    assert auto["exit"] == 5 and "Traceback" not in auto["stderr"], auto
    line = auto["stderr"].strip().splitlines()
    assert len(line) == 1 and "not attaching" in line[0] and "uid 65534" in line[0], auto
    # named explicitly, it is refused too: it takes clients without a token (and so does onnxsmith worker)
    for name in ("explicit", "worker"):
        run = foreign[name]
        assert run["exit"] == 5 and "does not require a token" in run["stderr"], (name, run)
        assert "Traceback" not in run["stderr"], run


def test_a_sigkilled_worker_cli_takes_its_ray_node_and_rpc_server_with_it(scenario: dict) -> None:
    kill = scenario["worker_kill"]
    started = " ".join(kill["started"])
    assert "raylet" in started and "rpc" in started.lower(), kill  # its Ray node and the qemu RPC server were seen
    assert not kill["left"], kill
