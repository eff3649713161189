"""The evidence card: ``card.json``, ``card.md`` and a self-contained ``card.html``, all from one :class:`Card`.

The HTML has its CSS inline, the plots as inline SVG and the failure examples as base64 PNG, so it can be mailed
or attached to a ticket as one file. ``card.md`` links the same plots, written beside it under ``card_files/``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxsmith.optimize.card_style import CSS
from onnxsmith.optimize.plots import METRIC_LABELS, latency_accuracy_svg, throughput_batch_svg
from onnxsmith.optimize.record import Card, Step, fmt_ms, fmt_num, fmt_pct
from onnxsmith.units import fmt_bytes

FILES_DIR = "card_files"


def _write(path: Path, text: str) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_card(card: Card, directory: str | Path) -> dict[str, Path]:
    """Write ``card.json``, ``card.md``, ``card.html`` (and the plots for the Markdown) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plots = {"latency_accuracy": latency_accuracy_svg(card), "throughput_batch": throughput_batch_svg(card.batching)}
    files: dict[str, Path] = {}
    for name, svg in plots.items():
        if svg is not None:
            files[name] = directory / FILES_DIR / f"{name}.svg"
            _write(files[name], svg)
    files["json"] = directory / "card.json"
    _write(files["json"], json.dumps(card.to_json(), indent=2, allow_nan=False) + "\n")
    files["md"] = directory / "card.md"
    _write(files["md"], render_markdown(card, {k: f"{FILES_DIR}/{k}.svg" for k, v in plots.items() if v}))
    files["html"] = directory / "card.html"
    _write(files["html"], render_html(card, directory, plots))
    return files


# --- shared wording -----------------------------------------------------------------------------------------------

def _quality_cells(step: Step) -> tuple[str, str, str]:
    cos = "–" if step.cosine_min is None else f"{step.cosine_min:.6f}"
    return fmt_pct(step.accuracy), fmt_pct(step.agreement), cos


def _status_text(step: Step) -> str:
    return {"chosen": "chosen", "rejected": "rejected", "failed": "failed"}.get(step.status, step.status)


def _verdict(card: Card) -> str:
    if card.chosen:
        step = card.step(card.chosen)
        return f"Chosen: {step.name} ({step.backend}, {step.precision}, batch {step.batch}) — {step.reason}"
    return f"Nothing met the constraints: {card.failure or 'see the steps'}"


def _constraints_text(card: Card) -> list[tuple[str, str]]:
    c = card.constraints
    rows = [("model", f"{card.model} ({card.model_fingerprint[:12]})"), ("target", card.target),
            ("profile", card.profile),
            ("max accuracy drop", f"{fmt_pct(c.max_accuracy_drop)} of {METRIC_LABELS.get(c.metric, c.metric)} "
                                  f"vs {card.reference}"),
            ("latency budget", f"{fmt_ms(c.latency_budget_ms)} ms (p50)" if c.latency_budget_ms else "none"),
            ("objective", "lowest p50 latency" if c.objective == "latency" else "highest throughput"),
            ("validation data", card.validation or "none (generated inputs)")]
    if card.bundle:
        rows.append(("bundle", card.bundle))
    return rows


def _vs_parent_cell(step: Step) -> str:
    """``0.912 [0.897, 0.931] n=8`` (the ratio to the parent on the objective, its interval and runs per side)."""
    ci = step.vs_parent
    if not ci:
        return "–"
    runs = f"n={ci['runs_a']}" + ("" if ci["runs_a"] == ci["runs_b"] else f"/{ci['runs_b']}")
    mark = "" if ci.get("significant") else " (ns)"
    return f"{ci['ratio']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] {runs}{mark}"


def _runs_line(step: Step) -> str | None:
    if not step.runs:
        return None
    what = "throughput /s" if step.runs_metric == "throughput_per_s" else "p50 ms"
    kind = ("interleaved runs (head to head " + step.runs_kind.split("#")[-1] + ")"
            if step.runs_kind.startswith("interleaved") else "contiguous blocks of one profile run (not interleaved)")
    if len(step.runs) == 1:
        kind = "profile run, not split into blocks (too few iterations)"
    line = f"runs: {len(step.runs)} {kind}, {what} per run: {', '.join(f'{v:.4g}' for v in step.runs)}"
    if step.vs_parent:
        ci = step.vs_parent
        line += (f"; against {step.parent}: ratio {ci['ratio']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] "
                 f"({ci['confidence'] * 100:.0f} % bootstrap CI, {ci['runs_a']} vs {ci['runs_b']} runs"
                 + (", paired" if ci.get("paired") else "") + ") — "
                 + ("significant" if ci.get("significant") else "no significant change"))
    return line


def _table_row(step: Step) -> list[str]:
    acc, agree, cos = _quality_cells(step)
    return [step.name, step.parent or "–", step.backend, step.precision, str(step.batch),
            fmt_ms(step.latency_p50_ms), _vs_parent_cell(step), fmt_ms(step.latency_p99_ms),
            fmt_num(step.throughput_per_s), fmt_num(step.peak_memory_mb), fmt_bytes(step.size_bytes), acc, agree,
            cos, _status_text(step)]


_HEADERS = ["step", "parent", "backend", "precision", "batch", "p50 ms", "vs parent (95 % CI, runs)", "p99 ms",
            "throughput /s", "peak MB", "size", "accuracy", "agreement", "cosine min", "status"]


def _before_after(card: Card, step: Step) -> list[tuple[str, str, str]]:
    """(metric, parent value, this step's value) for the per-step before/after table."""
    try:
        parent = card.step(step.parent) if step.parent else None
    except KeyError:
        parent = None
    rows = [("p50 latency (ms)", "latency_p50_ms", fmt_ms), ("p99 latency (ms)", "latency_p99_ms", fmt_ms),
            ("throughput (/s)", "throughput_per_s", fmt_num), ("peak memory (MB)", "peak_memory_mb", fmt_num),
            ("size", "size_bytes", fmt_bytes), ("accuracy", "accuracy", fmt_pct),
            ("agreement with fp32", "agreement", fmt_pct),
            ("cosine min", "cosine_min", lambda v: "–" if v is None else f"{v:.6f}")]
    return [(label, fmt(getattr(parent, key)) if parent else "–", fmt(getattr(step, key))) for label, key, fmt in rows]


def _pass_lines(record: Mapping[str, Any] | None) -> list[str]:
    if not record:
        return []
    lines = [f"pass `{record.get('name')}` by {record.get('tool')}: {record.get('summary')}",
             f"nodes {record.get('nodes_before')} -> {record.get('nodes_after')}, ONNX size "
             f"{fmt_bytes(record.get('size_before'))} -> {fmt_bytes(record.get('size_after'))}"]
    details = record.get("details") or {}
    kept = details.get("ops_kept_fp32")
    if kept:
        lines.append("kept in fp32: " + "; ".join(f"{k['node']} ({k['op_type']}): {k['why']}" for k in kept[:20])
                     + (f"; and {len(kept) - 20} more" if len(kept) > 20 else ""))
    elif kept is not None:
        lines.append("kept in fp32: none (no activation or weight exceeds the fp16 range)")
    if "sparsity_pruned_weights" in details:
        lines.append(f"sparsity {details['sparsity_pruned_weights'] * 100:.1f} % of pruned weights, "
                     f"{details['sparsity_all_weights'] * 100:.1f} % of all weights; compressed size "
                     f"{fmt_bytes(details['compressed_size_before'])} -> {fmt_bytes(details['compressed_size_after'])}")
    if "quantized_ops" in details:
        lines.append("quantized ops: " + (", ".join(f"{k} x{v}" for k, v in details["quantized_ops"].items())
                                          or "none") + "; left in float: "
                     + (", ".join(f"{k} x{v}" for k, v in details.get("float_ops", {}).items()) or "none"))
    lines += [f"note: {n}" for n in record.get("notes", [])]
    return lines


# --- Markdown -----------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(card: Card, plot_files: Mapping[str, str]) -> str:
    out = [f"# Evidence card: {card.model} on {card.target}", "", f"**{_md_cell(_verdict(card))}**", ""]
    out += ["| | |", "|---|---|"] + [f"| {k} | {_md_cell(v)} |" for k, v in _constraints_text(card)] + [""]
    out += ["## Steps", "", "| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    out += ["| " + " | ".join(_md_cell(c) for c in _table_row(s)) + " |" for s in card.steps]
    out += ["", "Why each step won or lost:", ""]
    out += [f"- **{s.name}** ({_status_text(s)}): {_md_cell(s.reason or '–')}" for s in card.steps]
    out += [""]
    if plot_files:
        out += ["## Plots", ""]
        if "latency_accuracy" in plot_files:
            out += [f"![latency vs accuracy, Pareto front marked]({plot_files['latency_accuracy']})", ""]
        if "throughput_batch" in plot_files:
            out += [f"![throughput vs batch size]({plot_files['throughput_batch']})", ""]
    out += _md_batching(card.batching)
    out += ["## Each step", ""]
    for step in card.steps:
        out += [f"### {step.name}", "", f"- what changed: {_md_cell(step.change)}"]
        out += [f"- improved: {', '.join(step.improved) or 'nothing'}; worse: {', '.join(step.worse) or 'nothing'}"
                + (f"; risky: {'; '.join(step.risky)}" if step.risky else "")]
        out += [f"- checked: {_md_cell(step.checked or 'no validation run')}"]
        runs = _runs_line(step)
        if runs:
            out += [f"- {_md_cell(runs)}"]
        out += [f"- {_md_cell(line)}" for line in _pass_lines(step.pass_record)]
        out += [f"- note: {_md_cell(n)}" for n in step.notes]
        if step.measured:
            out += ["", "| metric | before (parent) | after |", "|---|---|---|"]
            out += [f"| {a} | {b} | {c} |" for a, b, c in _before_after(card, step)]
        if step.worst:
            out += ["", "Worst examples:", "", "| sample | cosine | label | prediction | fp32 prediction | files |",
                    "|---|---|---|---|---|---|"]
            for e in step.worst:
                files = ", ".join(f"[{Path(p).name}]({p})" for p in (e.npz, e.png) if p)
                out.append(f"| {e.index} | {'–' if e.cosine is None else f'{e.cosine:.5f}'} | "
                           f"{'–' if e.label is None else e.label} | {'–' if e.prediction is None else e.prediction} "
                           f"| {'–' if e.reference_prediction is None else e.reference_prediction} | {files} |")
        out.append("")
    if card.notes:
        out += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in card.notes] + [""]
    out += [f"_{card.host} · onnxsmith {card.onnxsmith_version} · {card.created}_", ""]
    return "\n".join(out)


def _md_batching(batching: Mapping[str, Any] | None) -> list[str]:
    if not batching:
        return []
    out = ["## Batching", "", f"Batch sweep of {batching['sweep'].get('step') or 'the chosen step'}:", "",
           "| batch | p50 ms | p99 ms | throughput /s |", "|---|---|---|---|"]
    for p in batching["sweep"]["points"]:
        out.append(f"| {p['batch']} | {fmt_ms(p['latency_p50_ms'])} | {fmt_ms(p.get('latency_p99_ms'))} | "
                   f"{fmt_num(p['throughput_per_s'])} |")
    out += ["", f"Dynamic batching simulated at {batching['rate_per_s']:,.1f} requests/s (Poisson), end to end "
            f"including queueing:", "", "| max batch | max delay ms | p50 ms | p99 ms | throughput /s | mean batch "
            "| saturated |", "|---|---|---|---|---|---|---|"]
    for s in batching["settings"]:
        out.append(f"| {s['max_batch']} | {s['max_delay_ms']:g} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | "
                   f"{fmt_num(s['throughput_per_s'])} | {s['mean_batch']:.2f} | {'yes' if s['saturated'] else 'no'} |")
    out += ["", _best_text(batching), ""] + [f"- {n}" for n in batching.get("notes", [])] + [""]
    return out


def _best_text(batching: Mapping[str, Any]) -> str:
    best = batching.get("best")
    budget = batching["p99_budget_ms"]
    if not best:
        return f"No setting keeps p99 within {fmt_ms(budget)} ms."
    at = batching.get("best_at_rate") or {}
    return (f"Best for p99 <= {fmt_ms(budget)} ms: max batch {best['max_batch']}, max delay "
            f"{best['max_delay_ms']:g} ms, sustaining up to {best['rate_per_s']:,.1f} requests/s (p99 "
            f"{fmt_ms(best['p99_ms'])} ms there); at {batching['rate_per_s']:,.1f}/s: p50 {fmt_ms(at.get('p50_ms'))} ms, "
            f"p99 {fmt_ms(at.get('p99_ms'))} ms.")


# --- HTML ---------------------------------------------------------------------------------------------------------

def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _img(directory: Path, rel: str | None, alt: str) -> str:
    if not rel or not (directory / rel).is_file():
        return ""
    data = base64.b64encode((directory / rel).read_bytes()).decode("ascii")
    return f'<img class="example" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def render_html(card: Card, directory: Path, plots: Mapping[str, str | None]) -> str:
    verdict_class = "ok" if card.chosen else "fail"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Evidence card: {_e(card.model)} on {_e(card.target)}</title>", f"<style>{CSS}</style>", "</head>",
        "<body>", f"<h1>Evidence card: {_e(card.model)} on {_e(card.target)}</h1>",
        f'<p id="verdict" class="verdict {verdict_class}">{_e(_verdict(card))}</p>',
        '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _constraints_text(card))
        + "</dl>",
        '<h2>Steps</h2>', '<div class="scroll"><table id="steps"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in _HEADERS) + "</tr></thead><tbody>",
    ]
    for step in card.steps:
        cells = _table_row(step)
        cells[0] = f'<a href="#step-{_slug(step.name)}">{_e(step.name)}</a>'
        row = "".join(f"<td>{c if i == 0 else _e(c)}</td>" for i, c in enumerate(cells))
        parts.append(f'<tr class="status-{_e(step.status)}" data-step="{_e(step.name)}" '
                     f'title="{_e(step.reason)}">{row}</tr>')
    parts.append("</tbody></table></div>")
    parts.append('<ul class="reasons">' + "".join(
        f'<li><b>{_e(s.name)}</b> <span class="tag status-{_e(s.status)}">{_e(_status_text(s))}</span> '
        f"{_e(s.reason or '–')}</li>" for s in card.steps) + "</ul>")
    parts.append('<h2>Plots</h2><div class="plots">')
    for key, title in (("latency_accuracy", "Latency vs accuracy (Pareto front marked)"),
                       ("throughput_batch", "Throughput vs batch size")):
        svg = plots.get(key)
        if svg:
            parts.append(f'<figure id="plot-{key.replace("_", "-")}">{svg}<figcaption>{_e(title)}</figcaption></figure>')
    parts.append("</div>")
    parts.append(_html_batching(card.batching))
    parts.append("<h2>Each step</h2>")
    for step in card.steps:
        parts.append(_html_step(card, step, directory))
    if card.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in card.notes) + "</ul>")
    parts.append(f'<footer>{_e(card.host)} · onnxsmith {_e(card.onnxsmith_version)} · {_e(card.created)} · '
                 "every figure comes from card.json</footer>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _html_step(card: Card, step: Step, directory: Path) -> str:
    out = [f'<section class="step status-{_e(step.status)}" id="step-{_slug(step.name)}">',
           f"<h3>{_e(step.name)} <span class=\"tag status-{_e(step.status)}\">{_e(_status_text(step))}</span></h3>",
           "<ul>", f"<li><b>what changed:</b> {_e(step.change)}</li>",
           f"<li><b>improved:</b> {_e(', '.join(step.improved) or 'nothing')}; <b>worse:</b> "
           f"{_e(', '.join(step.worse) or 'nothing')}"
           + (f"; <b>risky:</b> {_e('; '.join(step.risky))}" if step.risky else "") + "</li>",
           f"<li><b>checked:</b> {_e(step.checked or 'no validation run')}</li>",
           f"<li><b>verdict:</b> {_e(step.reason or '–')}</li>"]
    runs = _runs_line(step)
    if runs:
        out.append(f"<li>{_e(runs)}</li>")
    out += [f"<li>{_e(line)}</li>" for line in _pass_lines(step.pass_record)]
    out += [f"<li>note: {_e(n)}</li>" for n in step.notes]
    out.append("</ul>")
    if step.measured:
        rows = _before_after(card, step)
        out.append('<table class="before-after"><thead><tr><th></th>' + "".join(f"<th>{_e(a)}</th>" for a, _, _ in rows)
                   + f"</tr></thead><tbody><tr><td>before ({_e(step.parent or 'no parent')})</td>"
                   + "".join(f"<td>{_e(b)}</td>" for _, b, _ in rows) + "</tr><tr><td>after</td>"
                   + "".join(f"<td>{_e(c)}</td>" for _, _, c in rows) + "</tr></tbody></table>")
    if step.worst:
        out.append('<div class="examples">')
        for e in step.worst:
            caption = (f"sample {e.index}" + (f", label {e.label}" if e.label is not None else "")
                       + (f", predicted {e.prediction}" if e.prediction is not None else "")
                       + (f" (fp32: {e.reference_prediction})" if e.reference_prediction is not None else "")
                       + (f", cosine {e.cosine:.5f}" if e.cosine is not None else ""))
            wrong = " wrong" if e.wrong else ""
            out.append(f'<figure class="example-card{wrong}" data-index="{e.index}">'
                       f"{_img(directory, e.png, caption)}<figcaption>{_e(caption)}"
                       + (f' · <a href="{_e(e.npz)}">npz</a>' if e.npz else "") + "</figcaption></figure>")
        out.append("</div>")
    if step.pass_record:
        out.append(f"<details><summary>pass record (JSON)</summary><pre>{_e(json.dumps(step.pass_record, indent=1))}"
                   "</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _html_batching(batching: Mapping[str, Any] | None) -> str:
    if not batching:
        return ""
    rows = "".join(f"<tr><td>{p['batch']}</td><td>{fmt_ms(p['latency_p50_ms'])}</td>"
                   f"<td>{fmt_ms(p.get('latency_p99_ms'))}</td><td>{fmt_num(p['throughput_per_s'])}</td></tr>"
                   for p in batching["sweep"]["points"])
    sims = "".join(f"<tr><td>{s['max_batch']}</td><td>{s['max_delay_ms']:g}</td><td>{fmt_ms(s['p50_ms'])}</td>"
                   f"<td>{fmt_ms(s['p99_ms'])}</td><td>{fmt_num(s['throughput_per_s'])}</td>"
                   f"<td>{s['mean_batch']:.2f}</td><td>{'yes' if s['saturated'] else 'no'}</td></tr>"
                   for s in batching["settings"])
    notes = "".join(f"<li>{_e(n)}</li>" for n in batching.get("notes", []))
    return (f'<h2>Batching</h2><section id="batching"><p>Batch sweep of '
            f"{_e(batching['sweep'].get('step') or 'the chosen step')}:</p>"
            '<table id="batch-sweep"><thead><tr><th>batch</th><th>p50 ms</th><th>p99 ms</th><th>throughput /s</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
            f"<p>Dynamic batching simulated at {batching['rate_per_s']:,.1f} requests/s (Poisson arrivals), end to "
            "end including queueing:</p>"
            '<table id="batch-simulation"><thead><tr><th>max batch</th><th>max delay ms</th><th>p50 ms</th>'
            "<th>p99 ms</th><th>throughput /s</th><th>mean batch</th><th>saturated</th></tr></thead>"
            f'<tbody>{sims}</tbody></table><p class="best">{_e(_best_text(batching))}</p><ul>{notes}</ul></section>')
