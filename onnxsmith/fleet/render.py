"""The compare record as a terminal table (rich), ``compare.md`` and a self-contained ``compare.html`` with plots
(p50 with p99 whiskers per cell; accuracy vs latency; efficiency in % of the device's peak), all from one record."""

from __future__ import annotations

import html
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxsmith.console import shown
from onnxsmith.deploy.quoting import json_in_html

COLUMNS = ("cell", "status", "worker", "p50 ms", "p99 ms", "speed-up vs ORT fp32", "efficiency", "quality", "size",
           "compile s", "note")


def _fmt(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _quality(cell: Mapping[str, Any]) -> str:
    if cell.get("validation_passed") is None:
        return "-"
    text = "pass" if cell["validation_passed"] else "FAIL"
    if cell.get("accuracy") is not None:
        return f"{text}, acc {cell['accuracy'] * 100:.1f} %"
    return f"{text}, cos {cell['cosine_min']:.5f}"


def _efficiency(cell: Mapping[str, Any]) -> str:
    if cell.get("emulated"):
        return "-"  # an emulator's speed says nothing about the device's peak
    parts = []
    if cell.get("efficiency_of_measured_peak") is not None:
        parts.append(f"{cell['efficiency_of_measured_peak'] * 100:.1f} % meas.")
    if cell.get("efficiency") is not None:
        parts.append(f"{cell['efficiency'] * 100:.1f} % nom.")
    return ", ".join(parts) or "-"


def _note(cell: Mapping[str, Any]) -> str:
    notes = []
    if cell["status"] == "measured" and not cell.get("emulated"):
        notes.append(f"rank {cell['rank']}" if cell["rank"] else "not ranked")
    if cell.get("emulated"):
        notes.append("EMULATED (qemu): timings not ranked")
    if cell["status"] == "measured" and cell.get("validation_passed") is False:
        notes.append("validation failed")
    if cell.get("reason"):
        notes.append(cell["reason"])
    if cell.get("attempts", 0) > 1:
        notes.append(f"{cell['attempts']} attempts ({'; '.join(cell['failed_attempts'])})")
    return "; ".join(notes)


def rows(record: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for c in record["cells"]:
        size = c.get("artifact_size_bytes")
        speed = c.get("speedup_vs_baseline")
        out.append([c["cell"] + (f" ({c['backend']} {c['precision_used']})" if c.get("precision_used") else ""),
                    c["status"], c.get("worker") or "-", _fmt(c.get("p50_ms")), _fmt(c.get("p99_ms")),
                    _fmt(speed, ".2f", "x"), _efficiency(c), _quality(c),
                    "-" if size is None else f"{size / 1e6:.2f} MB", _fmt(c.get("compile_seconds"), ".2f"),
                    _note(c)])
    return out


def print_table(record: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    where = record["executor"] + (f" at {record['cluster']}" if record.get("cluster") else "")
    table = Table(title=f"compare {shown(record['model']['name'])} ({record['profile']} profile, {shown(where)}, "
                        f"{record['wall_seconds']:.1f} s)")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("p50 ms", "p99 ms", "size", "compile s") else "left")
    for row in rows(record):
        table.add_row(*(shown(x) for x in row))
    Console(width=None if sys.stdout.isatty() else 220).print(table)


def markdown(record: Mapping[str, Any]) -> str:
    lines = [f"# compare: {record['model']['name']}", "",
             f"{record['profile']} profile, {record['executor']} executor"
             + (f" at {record['cluster']}" if record.get("cluster") else "") + f", {record['wall_seconds']:.1f} s", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(record):
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    lines += ["", "Cells profiled under emulation run the device's code in an emulator: their timings are not the "
              "device's and are never ranked.", ""]
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------------------------------
def _measured(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in record["cells"] if c["status"] == "measured" and c.get("p50_ms")]


def latency_svg(record: Mapping[str, Any]) -> str | None:
    from onnxsmith.optimize.plots import figure_svg, pyplot_module

    cells = _measured(record)
    if not cells:
        return None
    plt = pyplot_module("compare-latency")
    fig, ax = plt.subplots(figsize=(6.8, 0.45 * len(cells) + 1.2))
    names = [c["cell"] + (" (emulated)" if c["emulated"] else "") for c in cells]
    p50 = [c["p50_ms"] for c in cells]
    whisker = [max(0.0, (c.get("p99_ms") or c["p50_ms"]) - c["p50_ms"]) for c in cells]
    colors = ["#8c959f" if c["emulated"] else "#1a7f37" if c.get("rank") == 1 else "#0969da" for c in cells]
    ax.barh(range(len(cells)), p50, xerr=[[0] * len(cells), whisker], color=colors, capsize=4)
    ax.set_yticks(range(len(cells)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency p50 (ms), whisker to p99; grey: emulated, not ranked")
    return figure_svg(fig, plt)


def accuracy_svg(record: Mapping[str, Any]) -> str | None:
    from onnxsmith.optimize.plots import figure_svg, pyplot_module

    cells = [c for c in _measured(record) if not c["emulated"] and (c.get("accuracy") is not None
                                                                     or c.get("cosine_min") is not None)]
    if not cells:
        return None
    use_acc = all(c.get("accuracy") is not None for c in cells)
    plt = pyplot_module("compare-accuracy")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for c in cells:
        y = c["accuracy"] if use_acc else c["cosine_min"]
        ax.scatter([c["p50_ms"]], [y], s=40, color="#0969da", zorder=3)
        ax.annotate(c["cell"], (c["p50_ms"], y), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("accuracy" if use_acc else "min cosine to fp32")
    return figure_svg(fig, plt)


def efficiency_svg(record: Mapping[str, Any]) -> str | None:
    from onnxsmith.optimize.plots import figure_svg, pyplot_module

    cells = [c for c in _measured(record) if not c["emulated"] and c.get("efficiency") is not None]
    if not cells:
        return None
    plt = pyplot_module("compare-efficiency")
    fig, ax = plt.subplots(figsize=(6.8, 0.5 * len(cells) + 1.2))
    y = list(range(len(cells)))
    ax.barh([i - 0.2 for i in y], [c["efficiency"] * 100 for c in cells], height=0.4, color="#0969da",
            label="of nominal peak (target file)")
    measured = [(c.get("efficiency_of_measured_peak") or 0) * 100 for c in cells]
    ax.barh([i + 0.2 for i in y], measured, height=0.4, color="#cf222e", label="of measured peak (onnxsmith probe)")
    ax.set_yticks(y, [c["cell"] for c in cells])
    ax.invert_yaxis()
    ax.set_xlabel("efficiency (% of the device's peak for the precision used)")
    ax.legend(fontsize=8)
    return figure_svg(fig, plt)


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}
th{background:#f6f8fa}tr.status-measured td:nth-child(2){color:#1a7f37;font-weight:600}
tr.status-failed td:nth-child(2){color:#cf222e;font-weight:600}tr.emulated{background:#fff8c5}
tr.rank-1{background:#dafbe1}figure{margin:16px 0}figcaption{font-weight:600;margin-bottom:4px}"""


def render_html(record: Mapping[str, Any]) -> str:
    e = lambda text: html.escape(str(text), quote=True)  # noqa: E731
    title = f"Compare: {record['model']['name']}"
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
             f"<p>{e(record['profile'])} profile, {e(record['executor'])} executor"
             + (f" at {e(record['cluster'])}" if record.get("cluster") else "")
             + f", {record['wall_seconds']:.1f} s, started {e(record['started'])}.</p>",
             '<table id="cells"><thead><tr>' + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr></thead><tbody>"]
    for cell, row in zip(record["cells"], rows(record)):
        classes = [f"status-{cell['status']}"] + (["emulated"] if cell["emulated"] else []) + (
            [f"rank-{cell['rank']}"] if cell.get("rank") else [])
        parts.append(f'<tr class="{" ".join(classes)}" data-cell="{e(cell["cell"])}" data-status="{cell["status"]}">'
                     + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>")
    parts.append("</tbody></table>")
    parts.append("<p>Cells profiled under emulation run the device's code in an emulator: their timings are not the "
                 "device's and are never ranked.</p>")
    for plot_id, caption, svg in (("plot-latency", "Latency per cell (p50, whisker to p99)", latency_svg(record)),
                                  ("plot-accuracy-latency", "Accuracy vs latency", accuracy_svg(record)),
                                  ("plot-efficiency", "Efficiency in % of the device's peak", efficiency_svg(record))):
        if svg:
            parts.append(f'<figure id="{plot_id}"><figcaption>{e(caption)}</figcaption>{svg}</figure>')
    parts.append(f'<script type="application/json" id="record">{json_in_html(record)}</script>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_record(record: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    from onnxsmith.bundle import write_json

    files = {"json": directory / "compare.json", "md": directory / "compare.md", "html": directory / "compare.html"}
    write_json(files["json"], record)
    files["md"].write_text(markdown(record))
    files["html"].write_text(render_html(record))
    return files
