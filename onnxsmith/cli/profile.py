"""``onnxsmith profile``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, echo, json_option, profile_option


@click.command("profile")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@profile_option
@data_option("--input", "input_file", "Time on the first batch of these inputs instead of generated ones (only "
             "that batch is read)")
@click.option("--no-baseline", is_flag=True, help="Skip the ONNX Runtime fp32 baseline.")
@click.option("--rpc", default=None, metavar="HOST:PORT", help="Profile on a remote device's RPC server (TVM).")
@click.option("--cluster", default=None, metavar="auto|HOST:PORT", help="Profile on the Ray fleet worker that owns "
              "the bundle's device (see 'onnxsmith worker').")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Override the profile's minimum timed iterations.")
@click.option("--seconds", type=click.FloatRange(min=0), default=None, help="Override the profile's minimum timed seconds.")
@json_option
def profile_command(bundle_path: str, profile_spec: str, input_file: str | None, no_baseline: bool,
                    rpc: str | None, cluster: str | None, iterations: int | None, seconds: float | None,
                    as_json: bool) -> None:
    """Measure a bundle's latency, throughput and memory beside ONNX Runtime."""
    import dataclasses

    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json, progress
    from onnxsmith.data.dataset import model_batch
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.profiles import load_profile
    from onnxsmith.profiling.run import profile_bundle
    from onnxsmith.report import save_record

    bundle = Bundle.open(bundle_path)
    profile = load_profile(profile_spec)
    if cluster:
        from onnxsmith.errors import UserInputError
        from onnxsmith.fleet.ray_executor import fleet_measure

        if rpc or no_baseline or iterations or seconds is not None:
            raise UserInputError("--cluster takes the profile preset only", "--rpc, --no-baseline, --iterations and "
                                 "--seconds are set by the worker that owns the device", "use -p/--profile")
        with progress("profiling on the fleet", not as_json):
            cell = fleet_measure(cluster, bundle_path, ("profile",), profile=profile_spec, data=input_file)
        record = Bundle.open(bundle_path).read_json("profile.json")
        if as_json:
            print_json(record)
            return
        echo(f"profiled on fleet worker {cell.worker}" + (" (emulated)" if cell.emulated else ""))
        print_profile(record)
        return
    if iterations or seconds is not None:
        measure = dataclasses.replace(profile.measure, **{k: v for k, v in (("min_iterations", iterations),
                                                                              ("min_seconds", seconds)) if v})
        profile = dataclasses.replace(profile, measure=measure)
    specs = bundle.inputs_at("max")  # a shape range is timed at min, opt and max: read enough for max
    batch = model_batch(specs[0]) if specs else 1
    data = open_dataset(input_file, bundle.inputs, what="input data", limit=batch,
                        known_batch=bundle.batch_inputs) if input_file else None
    with progress("profiling", not as_json) as update:
        result = profile_bundle(bundle, profile, baseline=not no_baseline, data=data, remote=rpc, progress=update)
    record = result.to_json()
    save_record(bundle, "profile.json", record)
    if as_json:
        print_json(record)
        return
    print_profile(record, bundle.manifest)
    echo(f"profile: {bundle.path / 'profile.json'}")
    echo(f"report: {bundle.path / 'report.md'}")


def print_profile(record: dict, manifest: dict | None = None) -> None:
    from rich.table import Table

    from onnxsmith.console import shown, stdout_console

    base = record.get("baseline") or {}
    table = Table(title=f"{shown(record['backend'])} {record['precision_used']} on {shown(record['target'])} "
                        f"(batch {record['batch']})")
    table.add_column("metric")
    table.add_column(shown(record["backend"]), justify="right")
    table.add_column("onnxruntime fp32", justify="right")
    table.add_column("ratio", justify="right")
    for key in ("p50", "p90", "p95", "p99", "mean", "min", "max"):
        ours, theirs = record["latency_ms"][key], (base.get("latency_ms") or {}).get(key)
        table.add_row(f"latency {key} (ms)", f"{ours:.3f}", "-" if theirs is None else f"{theirs:.3f}",
                      "-" if not theirs else f"{ours / theirs:.2f}x")
    for key, label in (("throughput_per_s", "throughput (/s)"), ("parallel_throughput_per_s", "parallel throughput (/s)"),
                       ("first_inference_ms", "first inference (ms)"), ("peak_rss_mb", "peak RSS (MB)")):
        ours, theirs = record.get(key), base.get(key)
        table.add_row(label, "-" if ours is None else f"{ours:.2f}", "-" if theirs is None else f"{theirs:.2f}",
                      "-" if not (ours and theirs) else f"{ours / theirs:.2f}x")
    stdout_console().print(table)
    if record.get("shapes"):
        print_shapes(record)
    for line in profile_verdict_lines(record, manifest):
        echo(line)
    if record.get("efficiency") is not None or record.get("efficiency_of_measured_peak") is not None:
        parts = []
        if record.get("efficiency_of_measured_peak") is not None:
            parts.append(f"{record['efficiency_of_measured_peak'] * 100:.2f} % of measured peak "
                         f"({record['measured_peak_tflops'] * 1000:.1f} G/s, onnxsmith probe)")
        else:
            parts.append("measured peak: not probed (run 'onnxsmith probe')")
        if record.get("efficiency") is not None:
            parts.append(f"{record['efficiency'] * 100:.2f} % of nominal peak ({record['peak_tflops']} T/s, "
                         "target file)")
        echo(f"efficiency ({record['precision_used']}): {record['achieved_tflops'] * 1000:.2f} GFLOP/s = "
             + "; ".join(parts))


def print_shapes(record: dict) -> None:
    """A bundle compiled for a shape range: latency at each of its points."""
    from rich.table import Table

    from onnxsmith.console import shown, stdout_console

    table = Table(title=f"{shown(record['backend'])} at each point of the shape range (one artifact; ORT = ONNX Runtime "
                        "fp32)")
    for column in ("point", "shape", "batch", "p50 ms", "p99 ms", "per s", "ORT p50", "vs ORT"):
        table.add_column(column, justify="left" if column in ("point", "shape") else "right")
    for point in record["shapes"]:
        base = point.get("baseline_latency_ms")
        table.add_row(shown(point["point"]), "; ".join("x".join(map(str, v)) for v in point["shape"].values()),
                      str(point["batch"]), f"{point['latency_ms']['p50']:.3f}", f"{point['latency_ms']['p99']:.3f}",
                      f"{point['throughput_per_s']:.2f}", "-" if not base else f"{base['p50']:.3f}",
                      "-" if not point.get("speedup_vs_baseline") else f"{point['speedup_vs_baseline']:.2f}x")
    stdout_console().print(table)


def profile_verdict_lines(record: dict, manifest: dict | None = None) -> list[str]:
    """The interleaved comparison with the baseline, the machine, and the warnings, one line each."""
    from onnxsmith.profiling.environment import busy_warning
    from onnxsmith.profiling.record import slower_than_baseline
    from onnxsmith.profiling.stats import RatioCI

    lines = []
    ci = (record.get("comparison") or {}).get("ratio_p50")
    if ci:
        ratio = RatioCI.from_json(ci)
        word = {"better": "faster than", "worse": "slower than"}.get(ratio.verdict(), "no significant change against")
        lines.append(f"p50 vs ONNX Runtime fp32 in interleaved runs: {ratio.text('x')} ({word} the baseline)")
    env = record.get("environment") or {}
    if env:
        other = env.get("other_processes_cpu_share")
        lines.append(f"machine: {env.get('cpu_model')}, {env.get('usable_cores')} cores"
                     + (f", governor {env['frequency_governor']}" if env.get("frequency_governor") else "")
                     + f"; load average {env.get('load_average_before')} before, {env.get('load_average_after')} "
                     "after" + ("" if other is None else f"; other processes {other * 100:.0f} % of CPU during"))
    disagreement = (record.get("comparison") or {}).get("disagreement")
    for warning in (busy_warning(env), disagreement, slower_than_baseline(record, manifest)):
        if warning:
            lines.append(f"warning: {warning}")
    return lines
