"""``onnxsmith serving`` and ``onnxsmith serve-check``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import echo, json_option


@click.command("serving")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@click.option("--arrival-rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PER_S",
              help="Request rate to plan for (default: 70 % of the measured batch-1 capacity).")
@click.option("--p99-budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS",
              help="p99 latency budget (default: 4x the measured batch-1 latency).")
@json_option
def serving_command(bundle_path: str, arrival_rate: float | None, p99_budget: float | None, as_json: bool) -> None:
    """Write BUNDLE/serving/ (Triton, OVMS) from the bundle's profile and a dynamic-batching simulation."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json
    from onnxsmith.errors import UserInputError
    from onnxsmith.serving.batching import BatchPoint, BatchSweep, plan_batching
    from onnxsmith.serving import batch_range, write_serving

    bundle = Bundle.open(bundle_path)
    profile = bundle.read_json("profile.json")
    latency = (profile or {}).get("latency_ms") or {}
    if not latency.get("p50"):
        raise UserInputError(f"bundle '{bundle_path}' has no profile", "the serving settings come from its measured "
                             "latency", f"run 'onnxsmith profile {bundle_path}' first, or 'onnxsmith optimize' for a "
                             "batch sweep")
    batch = batch_range(bundle)
    size = batch[1] if batch else 1
    sweep = BatchSweep((BatchPoint(size, float(latency["p50"]), latency.get("p99")),), "the bundle's profile")
    report = plan_batching(sweep, arrival_rate, p99_budget)
    dest = write_serving(bundle, report.to_json(), f"the bundle's profile (profile.json, batch {size}) and the "
                         "dynamic-batching simulation")
    record = bundle.read_json("serving/serving.json") or {}
    if as_json:
        print_json(record)
        return
    echo(f"serving configuration: {dest} (README.md says where each setting came from)")


@click.command("serve-check")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PER_S",
              help="Poisson arrival rate (default: 70 % of the batch-1 capacity measured through the server).")
@click.option("--seconds", type=click.FloatRange(min=0.5, max=600), default=10.0, show_default=True,
              help="How long the load runs (at most 20,000 requests).")
@json_option
def serve_check_command(bundle_path: str, rate: float | None, seconds: float, as_json: bool) -> None:
    """Serve the bundle with a real Triton server on 127.0.0.1 and compare with the simulation."""
    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json, progress
    from onnxsmith.serving.check import serve_check

    bundle = Bundle.open(bundle_path)
    with progress("serve-check", not as_json) as update:
        result = serve_check(bundle, rate, seconds, progress=update)
    if as_json:
        print_json(result)
        return
    print_result(result)


def print_result(result: dict) -> None:
    m, p, q = result["measured"], result["predicted"], result["predicted_without_overhead"]
    s = result["settings"]
    echo(f"Triton (Python backend) on 127.0.0.1, max batch {s['max_batch_size']}, max queue delay "
         f"{s['max_queue_delay_ms']:.4g} ms; {m['completed']}/{m['requests']} requests at "
         f"{result['rate_per_s']:,.1f}/s ({result['rate_note']})")
    echo(f"measured overhead: {result['overhead']['batch_ms']:.3f} ms per batch, "
         f"{result['overhead']['request_ms']:.3f} ms per request (bundle batch-1: {result['bundle_batch1_ms']:.4f} ms)")
    echo(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'batch':>8}")
    echo(f"{'measured':28}{m['p50_ms']:>10.3f}{m['p99_ms']:>10.3f}{m['throughput_per_s']:>10.1f}{m['mean_batch']:>8.2f}")
    f = result["predicted_with_mean_overhead"]
    echo(f"{'simulated, with overhead':28}{p['p50_ms']:>10.3f}{p['p99_ms']:>10.3f}{p['throughput_per_s']:>10.1f}"
         f"{p['mean_batch']:>8.2f}")
    echo(f"{'simulated, mean overhead':28}{f['p50_ms']:>10.3f}{f['p99_ms']:>10.3f}{f['throughput_per_s']:>10.1f}"
         f"{f['mean_batch']:>8.2f}")
    u = result["predicted_with_overhead_under_load"]
    echo(f"{'simulated, load overhead':28}{u['p50_ms']:>10.3f}{u['p99_ms']:>10.3f}{u['throughput_per_s']:>10.1f}"
         f"{u['mean_batch']:>8.2f}")
    echo(f"{'simulated, without':28}{q['p50_ms']:>10.3f}{q['p99_ms']:>10.3f}{q['throughput_per_s']:>10.1f}"
         f"{q['mean_batch']:>8.2f}")
    ratio = result["p99_ratio_measured_to_predicted"]
    echo(f"p99 measured / simulated: {ratio:.2f} ({'within' if result['within_25_percent'] else 'NOT within'} 25 %); "
         f"load average {result['load_average']}")
