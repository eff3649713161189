"""``onnxsmith doctor``."""

from __future__ import annotations

import click

from onnxsmith.cli.common import json_option


@click.command("doctor")
@json_option
def doctor_command(as_json: bool) -> None:
    """Show which backends and devices are usable here, and why not."""
    import dataclasses
    import platform
    import sys

    from rich.table import Table

    import onnxsmith
    from onnxsmith.build.cache import cache_root
    from onnxsmith.console import print_json, shown, stdout_console
    from onnxsmith.profiling.peaks import describe, load_peaks
    from onnxsmith.registry import backend_names, backend_status
    from onnxsmith.targets.host import detect_host, isa_summary

    host = detect_host()
    statuses = [backend_status(name) for name in backend_names()]
    data = {
        "onnxsmith": onnxsmith.__version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "host": {"name": host.name, "cores": host.cores, "cpu_features": list(host.requires.cpu_flags),
                 "precisions": list(host.precisions), "peak_tflops": dict(host.peak.tflops), **isa_summary()},
        "cache": str(cache_root()),
        "measured_peaks": load_peaks(),
        "backends": [dataclasses.asdict(s) for s in statuses],
    }
    if as_json:
        print_json(data)
        return
    out = stdout_console()
    out.print(shown(f"onnxsmith {data['onnxsmith']}, Python {data['python']}, {data['platform']}"))
    out.print(shown(f"host: {host.name}; features: {', '.join(host.requires.cpu_flags) or '-'}; "
                    f"precisions: {', '.join(host.precisions)}"))
    out.print(shown(data["host"]["text"]))
    out.print(f"cache: {shown(data['cache'])}")
    out.print(shown(describe(data["measured_peaks"])))
    table = Table(title="backends")
    for col in ("backend", "usable", "version", "devices", "why not / fix"):
        table.add_column(col)
    for s in statuses:  # shown: "pip install 'onnxsmith[openvino]'" is not rich markup
        table.add_row(shown(s.name), "[green]yes[/green]" if s.available else "[red]no[/red]", shown(s.version or "-"),
                      shown(", ".join(s.devices) or "-"), shown(s.reason + (f" (hint: {s.hint})" if s.hint else "")))
    out.print(table)
    from onnxsmith.options import Option

    for s in statuses:
        if s.options:
            out.print(f"{shown(s.name)} options (--option KEY=VALUE):")
            for o in s.options:
                option = Option(str(o["name"]), {"int": int, "float": float, "bool": bool, "list": list}.get(
                    str(o["type"]), str), o["default"], str(o["help"]), tuple(o["choices"]),  # type: ignore[arg-type]
                    o["minimum"], o["maximum"])  # type: ignore[arg-type]
                out.print(f"  {shown(option.describe())}")
