"""``onnxsmith targets`` and ``onnxsmith profiles``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import echo, json_option


@click.group("targets", invoke_without_command=True)
@json_option
@click.pass_context
def targets_group(ctx: click.Context, as_json: bool) -> None:
    """List the hardware catalogue, or show one target."""
    if ctx.invoked_subcommand:
        return
    from rich.table import Table

    from onnxsmith.console import print_json, shown, stdout_console
    from onnxsmith.host import host_matches
    from onnxsmith.targets import list_targets

    targets = list_targets()
    rows = []
    for t in targets:
        runs = host_matches(t) if t.kind == "cpu" else None
        rows.append({"id": t.id, "name": t.name, "kind": t.kind, "backends": list(t.backends),
                     "precisions": list(t.precisions), "peak_tflops": dict(t.peak.tflops),
                     "memory_bandwidth_gbps": t.peak.memory_bandwidth_gbps,
                     "cpu_runs_here": None if runs is None else runs.ok})
    if as_json:
        print_json(rows)
        return
    table = Table(title="onnxsmith targets")
    for col in ("id", "name", "kind", "backends", "precisions", "peak fp32 TFLOP/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(shown(x) for x in (r["id"], r["name"], r["kind"], ", ".join(r["backends"]),
                                           ", ".join(r["precisions"]), r["peak_tflops"].get("fp32", "-"))))
    stdout_console().print(table)
    echo("details: onnxsmith targets show ID")


@targets_group.command("show")
@click.argument("target_id")
@json_option
def show_command(target_id: str, as_json: bool) -> None:
    """Show one target's file, backends, options, peaks and whether it runs here."""
    from onnxsmith.console import print_json
    from onnxsmith.targets import load_target

    target = load_target(target_id)
    data = target.to_json()
    runs = _runs_here(target)
    data["runs_here"] = {"ok": runs[0], "reason": runs[1]}
    if target.id == "host":
        from onnxsmith.profiling.peaks import load_peaks

        data["measured_peaks"] = load_peaks()
    options = backend_options(target.backends)
    data["backend_options"] = {name: [o.to_json() for o in opts] for name, opts in options.items()}
    if as_json:
        print_json(data)
        return
    echo(f"{target.id}: {target.name} ({target.kind}, {target.vendor})")
    if target.description:
        echo(f"  {target.description}")
    echo(f"  file: {target.source_file}")
    echo(f"  backends (preference): {', '.join(target.backends)}")
    echo(f"  precisions: {', '.join(target.precisions)}")
    echo("  peak: " + ", ".join(f"{k} {v} T{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in target.peak.tflops.items())
         + f", memory {target.peak.memory_bandwidth_gbps} GB/s")
    echo(f"  peak source: {target.peak.source}")
    if target.id == "host":
        from onnxsmith.profiling.peaks import describe, load_peaks

        echo(f"  {describe(load_peaks())}")
    for backend, opts in target.device_options.items():
        echo(f"  {backend}: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    echo(f"  runs here: {'yes' if runs[0] else 'no: ' + runs[1]}")
    for name, opts in options.items():
        echo(f"  {name} --option KEY=VALUE:")
        for option in opts:
            echo(f"    {option.describe()}")


def backend_options(names: tuple[str, ...] | list[str]) -> dict[str, tuple]:
    """Each loadable backend's declared options (no vendor library is imported)."""
    from onnxsmith.errors import OnnxsmithError
    from onnxsmith.registry import get_backend

    out = {}
    for name in names:
        try:
            out[name] = tuple(get_backend(name).options)
        except OnnxsmithError:
            continue
    return out


def _runs_here(target: object) -> tuple[bool, str]:
    from onnxsmith.errors import OnnxsmithError
    from onnxsmith.registry import backend_status, get_backend

    reasons = []
    for name in target.backends:  # type: ignore[attr-defined]
        if not backend_status(name, probe_devices=False).available:
            reasons.append(f"{name} not installed")
            continue
        try:
            support = get_backend(name).runs_here(target)  # type: ignore[arg-type]
        except OnnxsmithError as exc:
            reasons.append(f"{name}: {exc.what}")
            continue
        if support:
            return True, f"with {name}"
        reasons.append(f"{name}: {support.reason}")
    return False, "; ".join(reasons)


@click.command("profiles")
@json_option
def profiles_command(as_json: bool) -> None:
    """List the optimization presets."""
    from onnxsmith.console import print_json
    from onnxsmith.profiles import list_profiles

    profiles = list_profiles()
    if as_json:
        print_json([p.to_json() for p in profiles])
        return
    for p in profiles:
        echo(f"{p.name:<11} {p.description}")
        echo(f"{'':<11} precision {p.precision}, ladder {'/'.join(p.ladder)}, batches "
             f"{'/'.join(map(str, p.batch_sizes))}, max accuracy drop {p.max_accuracy_drop * 100:g} %, "
             f"hint {p.performance_hint}")
