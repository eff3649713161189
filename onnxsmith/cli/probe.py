"""``onnxsmith probe``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import backend_option, echo, json_option


@click.command("probe")
@backend_option
@click.option("--quick", is_flag=True, help="One MatMul shape and the convolution instead of three shapes and it.")
@click.option("--cluster", default=None, metavar="auto|HOST:PORT", help="Probe the host device of every worker of "
              "a Ray cluster instead of this machine (each stores its own peaks).")
@json_option
def probe_command(backend: str | None, quick: bool, cluster: str | None, as_json: bool) -> None:
    """Measure this device's peak GEMM throughput and memory bandwidth."""
    from onnxsmith.console import print_json, progress
    from onnxsmith.probe import describe, probe_host

    if cluster:
        from onnxsmith.fleet.ray_executor import probe_cluster

        records = probe_cluster(cluster, backend, quick)
    else:
        with progress("probing", not as_json) as update:
            records = [probe_host(backend, update, quick)]
    if as_json:
        print_json(records if cluster else records[0])
        return
    for record in records:
        echo(f"{record.get('worker', 'this machine')}: {record['device']}")
        for precision, entry in record["peaks"].items():
            unit = "GOP/s" if precision == "int8" else "GFLOP/s"
            nominal = record["nominal"]["tflops"].get(precision)
            shapes = ", ".join(f"{s['shape']} {s['tflops'] * 1000:.0f}" for s in entry["shapes"])
            echo(f"  {precision}: {entry['tflops'] * 1000:.1f} {unit} (best: {entry['best']}; nominal "
                 f"{'-' if nominal is None else f'{nominal * 1000:.0f}'}) [{shapes}]")
        echo(f"  memory bandwidth: {record['memory_bandwidth_gbps']} GB/s")
        echo(f"  {describe(record)}")
        if record.get("file"):
            echo(f"  stored: {record['file']}")
