"""``onnxsmith worker``."""

from __future__ import annotations

import click


@click.command("worker", context_settings={"ignore_unknown_options": False})
@click.option("--address", required=True, metavar="HEAD:PORT", help="The Ray head to join (ray start --head ...).")
@click.option("--device", "devices", multiple=True, metavar="TARGET=rpc://HOST:PORT|TARGET=qemu",
              help="A remote device this worker fronts (a TVM RPC server), or qemu: an emulator it starts "
                   "(labelled emulated; never ranked). Repeatable.")
@click.option("--no-host", is_flag=True, help="Do not offer this machine itself as a device.")
@click.option("--name", default=None, help="Worker name shown in compare results (default: HOSTNAME-PID).")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None, help="CPUs Ray may use here (default: all).")
@click.option("--node-ip-address", default=None, help="The address other nodes reach this one at (default: "
              "127.0.0.1 when the head is on loopback, else the interface that routes to the head). A non-loopback "
              "address exposes this node's Ray ports to that network: anyone there who holds the token can run code "
              "here.")
@click.option("--token-file", default=None, metavar="FILE", help="The fleet's Ray token (default: "
              "$ONNXSMITH_RAY_TOKEN_FILE, else $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; mode 600).")
def worker_command(address: str, devices: tuple[str, ...], no_host: bool, name: str | None, num_cpus: int | None,
                   node_ip_address: str | None, token_file: str | None) -> None:
    """Start a Ray worker node that offers this machine's backends and devices."""
    from onnxsmith.fleet.worker import run_worker

    code = run_worker(address, devices, host=not no_host, name=name, cpus=num_cpus, node_ip=node_ip_address,
                      token_file=token_file)
    if code:
        from onnxsmith.errors import BackendError

        raise BackendError("the Ray worker node stopped", f"'ray start' exited with {code}",
                           "check that the head is reachable at --address")

