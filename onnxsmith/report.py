"""Stage 5, report: ``report.md`` rebuilt from the bundle's manifest, profile.json and validation.json.

Every figure here is read from those JSON files (the same record ``--json`` prints); nothing is measured here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onnxsmith.units import fmt_bytes

if TYPE_CHECKING:
    from onnxsmith.bundle import Bundle


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def _ratio_word(ours: float, base: float, lower_is_better: bool = True) -> str:
    if not base or not ours:
        return ""
    ratio = ours / base
    better = ratio < 0.97 if lower_is_better else ratio > 1.03
    worse = ratio > 1.03 if lower_is_better else ratio < 0.97
    return f"{ratio:.2f}x " + ("(better)" if better else "(worse)" if worse else "(same)")


def flop_text(n: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} FLOP"


def _export_lines(export: dict[str, Any] | None) -> list[str]:
    """The PyTorch export's record (:mod:`onnxsmith.torchin`), when the model came from PyTorch."""
    if not export:
        return []
    check = export["check"]
    top1 = check.get("top1_agreement")
    lines = [f"- **Exported from PyTorch**: `{export['from']}` with torch {export['torch_version']}, "
             f"{export['exporter']} exporter, opset {export['opset']} ({export['opset_reason']}); checked: ONNX "
             f"checker ({check['onnx_checker']}), shape inference ({check['shape_inference']}), ONNX Runtime vs "
             f"eager PyTorch on {check['data']}: cosine min {check['cosine_min']:.6f}, max abs error "
             f"{check['max_abs_error']:.3g}" + (f", top-1 agreement {top1:.4f}" if top1 is not None else "")]
    lines += [f"- Export note: {note}" for note in export.get("notes", [])]
    return lines


def render_report(manifest: dict[str, Any], profile: dict[str, Any] | None,
                  validation: dict[str, Any] | None, layers: dict[str, Any] | None = None) -> str:
    art = manifest["artifact"]
    target = manifest["target"]
    lines = [
        f"# onnxsmith report: {manifest['model']['name']} for {target['id']}",
        "",
        f"- **Model**: `{manifest['model']['source']}` (sha256 `{manifest['model']['fingerprint'][:16]}`, "
        f"opset {manifest['model']['opset']})",
        *_export_lines(manifest["model"].get("export")),
        f"- **Target**: {target['name']} (`{target['id']}`)",
        f"- **Backend**: {manifest['backend']} {manifest['backend_version']} on `{art['device']}`: "
        f"{manifest['artifact_kind']}",
        f"- **Precision**: requested {manifest['precision']}, **actually used {manifest['precision_used']}**",
        "- **Runs here**: " + ("yes" if manifest["runs_here"]["ok"] else f"no: {manifest['runs_here']['reason']}"),
        f"- **Built**: {manifest['created']} by onnxsmith {manifest['onnxsmith_version']}, compile "
        f"{manifest.get('compile_seconds') or 0:.2f} s" + (" (cache hit)" if manifest["cache"]["hit"] else ""),
        "",
        "## What changed",
        "",
        f"- The fp32 ONNX model was compiled by {manifest['backend']} into: "
        + ", ".join(f"`{f}`" for f in art["files"]) + ".",
    ]
    if manifest["precision_used"] != "fp32":
        lines.append(f"- Arithmetic precision changed from fp32 to **{manifest['precision_used']}**.")
    if manifest.get("calibration"):
        cal = manifest["calibration"]
        lines.append(f"- Calibrated on {cal['samples']} samples from `{cal['source']}`.")
    for key, value in (art.get("options") or {}).items():
        lines.append(f"- Setting `{key}` = `{value}`.")
    for note in manifest.get("notes", []):
        lines.append(f"- Note: {note}")
    for name, bounds in (manifest.get("shape_ranges") or {}).items():
        lines.append(f"- Input `{name}` is dynamic in one artifact: min {'x'.join(map(str, bounds['min']))}, opt "
                     f"{'x'.join(map(str, bounds['opt']))}, max {'x'.join(map(str, bounds['max']))}.")
    lines += ["", "## Profile", ""]
    if profile is None:
        lines.append("Not profiled yet: run `onnxsmith profile BUNDLE`.")
    else:
        base = profile.get("baseline")
        lat, blat = profile["latency_ms"], (base or {}).get("latency_ms", {})
        where = f"Measured on {profile['host']}"
        if profile.get("rpc_round_trip_ms"):
            where = (f"Measured on the device behind RPC {profile['remote']} (latency timed on the device; through "
                     f"RPC the p50 is {_ms(profile['rpc_round_trip_ms']['p50'])}); the baseline ran on "
                     f"{profile['host']}, so the ratio compares two machines")
        elif profile.get("remote"):
            where += f" through RPC {profile['remote']}"
        lines += [
            f"{where}, batch {profile['batch']}, inputs: {profile['inputs']}; {lat['iterations']} timed iterations "
            f"after {profile['measure']['warmup_iterations']} warm-up.",
            "",
            f"| metric | {manifest['backend']} ({profile['precision_used']}) | ONNX Runtime fp32 baseline | ratio |",
            "|---|---|---|---|",
        ]
        for key in ("p50", "p90", "p99", "mean", "min", "max"):
            ours, theirs = lat[key], blat.get(key)
            lines.append(f"| latency {key} | {_ms(ours)} | {_ms(theirs)} | {_ratio_word(ours, theirs or 0)} |")
        rows = [
            ("throughput (1 request)", profile["throughput_per_s"], (base or {}).get("throughput_per_s"), "/s", False),
            ("throughput (parallel)", profile.get("parallel_throughput_per_s"),
             (base or {}).get("parallel_throughput_per_s"), "/s", False),
            ("first inference", profile["first_inference_ms"], (base or {}).get("first_inference_ms"), " ms", True),
            ("load time", profile["load_seconds"], (base or {}).get("load_seconds"), " s", True),
            ("peak memory (RSS)", profile["peak_rss_mb"], (base or {}).get("peak_rss_mb"), " MB", True),
        ]
        for name, ours, theirs, unit, lower in rows:
            o = "-" if ours is None else f"{ours:.2f}{unit}"
            t = "-" if theirs is None else f"{theirs:.2f}{unit}"
            lines.append(f"| {name} | {o} | {t} | {_ratio_word(ours or 0, theirs or 0, lower)} |")
        lines.append(f"| artifact size | {fmt_bytes(profile['artifact_size_bytes'])} | "
                     f"{fmt_bytes(os.path.getsize(manifest['_reference_path'])) if manifest.get('_reference_path') else '-'} | |")
        lines.append("")
        if profile.get("shapes"):
            lines += ["Across the compiled shape range (the table above is at its opt point):", "",
                      "| point | shape | batch | p50 | p99 | throughput | ONNX Runtime fp32 p50 |", "|---|---|---|---|---|---|---|"]
            for point in profile["shapes"]:
                shape = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in point["shape"].items())
                base_p50 = (point.get("baseline_latency_ms") or {}).get("p50")
                lines.append(f"| {point['point']} | {shape} | {point['batch']} | {_ms(point['latency_ms']['p50'])} | "
                             f"{_ms(point['latency_ms']['p99'])} | {point['throughput_per_s']:.2f}/s | "
                             f"{_ms(base_p50)} |")
            lines.append("")
        if profile.get("efficiency") is not None:
            lines.append(f"Efficiency: {flop_text(profile['flops'])} per inference at p50 = "
                         f"{profile['achieved_tflops'] * 1000:.2f} GFLOP/s, "
                         f"{profile['efficiency'] * 100:.2f} % of the target's {profile['peak_tflops']} TFLOP/s "
                         f"peak for {profile['precision_used']} ({target['peak']['source']}).")
        speed = profile.get("speedup_vs_baseline")
        if speed is not None:
            verdict = "faster than" if speed > 1.03 else "slower than" if speed < 0.97 else "as fast as"
            ratio = _interleaved_ratio(profile)
            if ratio is not None:  # decided by the interval of the interleaved runs, not by a fixed threshold
                verdict = {"better": "faster than", "worse": "slower than"}.get(
                    ratio.verdict(), "no significant difference from")
            lines.append(f"\n**Verdict**: p50 is {speed:.2f}x the baseline's speed ({verdict} ONNX Runtime fp32).")
            advice = _slow_advice(manifest) if speed < 1 else ""
            if advice:
                p50, base_p50 = profile["latency_ms"]["p50"], base["latency_ms"]["p50"]
                lines.append(f"\n**Warning**: its p50 is {p50 / base_p50:.1f}x ONNX Runtime fp32's ({p50:.3f} ms "
                             f"vs {base_p50:.3f} ms), measured in this run; {advice}.")
        vendor = profile.get("vendor_timing")
        if vendor:
            lines += ["", f"The runtime's own timing ({vendor.get('method', '')}): GPU compute median "
                      f"{_ms(vendor['gpu_compute_ms']['median'])}, p99 {_ms(vendor['gpu_compute_ms']['p99'])}; "
                      f"H2D {_ms(vendor['h2d_ms']['median'])}, D2H {_ms(vendor['d2h_ms']['median'])}; host latency "
                      f"median {_ms(vendor['host_latency_ms']['median'])} over {vendor['iterations']} iterations."]
        if profile.get("layer_precision"):
            from onnxsmith.profiling.record import precision_line

            shares = profile["layer_precision"]
            lines.append(f"\n**Time at each precision** (backend profiler, {shares['total_ms']:.3f} ms over "
                         f"{sum(shares['layers'].values())} layers): {precision_line(shares)}.")
        lines += _noise_lines(profile, manifest)
        if profile.get("layers"):
            lines += ["", "Slowest layers (backend profiler):", "", "| layer | op | kernel | precision | time |",
                      "|---|---|---|---|---|"]
            for layer in profile["layers"][:10]:
                lines.append(f"| {layer['name'][:60]} | {layer['op_type']} | {layer['exec_type']} | "
                             f"{layer.get('precision') or '-'} | {layer['time_ms']:.3f} ms |")
    lines += ["", "## Validation", ""]
    if validation is None:
        lines.append("Not validated yet: run `onnxsmith validate BUNDLE [--data val.npz --labels KEY]`.")
    else:
        v = validation
        lines += [
            f"Checked {v['samples']} examples from `{v['data']}` against ONNX Runtime fp32 on the original model "
            f"(outputs: {v['output_checked']}).",
            "",
        ]
        if v.get("evaluated_by"):
            e = v["evaluated_by"]
            lines += [f"**{e['label']}.** The bundle cannot run here; its backend evaluated the compiled program "
                      "instead.", "", "- Checked: " + "; ".join(e["checked"]),
                      "- Not checked: " + "; ".join(e["not_checked"]), ""]
        lines += [
            f"- **{'PASSED' if v['passed'] else 'FAILED'}** (required: cosine >= {v['min_cosine_required']} on every "
            f"sample)" + ("" if v["passed"] else ": " + "; ".join(v["failures"])),
            f"- cosine min {v['cosine_min']:.6f}, mean {v['cosine_mean']:.6f}; max abs error "
            f"{v['max_abs_error']:.3g}, max rel error {v['max_rel_error']:.3g}",
        ]
        exact = {k: s for k, s in (v.get("per_output") or {}).items() if "exact_match" in s}
        if exact:  # string outputs and sequence/optional structure: compared exactly, no cosine
            lines.append("- compared exactly (strings, sequence/optional structure): " + ", ".join(
                f"`{k}` {s['exact_match'] * 100:.2f} % of samples equal" for k, s in exact.items()))
        if v.get("top1_agreement") is not None:
            lines.append(f"- top-1 agreement {v['top1_agreement'] * 100:.2f} %, reference top-1 within top-5 "
                         f"{v['top5_agreement'] * 100:.2f} %")
        for point in v.get("shapes") or []:
            shape = "; ".join(f"{k} {'x'.join(map(str, dims))}" for k, dims in point["shape"].items())
            lines.append(f"- at {point['point']} ({shape}): " + (f"skipped, {point['skipped']}" if "skipped" in point
                         else f"{point['samples']} samples, cosine min {point['cosine_min']:.6f}, "
                         f"{'passed' if point['passed'] else 'FAILED'}"))
        if v.get("accuracy") is not None:
            drop = v["reference_accuracy"] - v["accuracy"]
            lines.append(f"- accuracy {v['accuracy'] * 100:.2f} % vs reference {v['reference_accuracy'] * 100:.2f} % "
                         f"({'drop' if drop > 0 else 'gain'} {abs(drop) * 100:.2f} points)")
        if v.get("worst"):
            lines += ["", "Worst examples (kept in the bundle):", "",
                      "| sample | cosine | max abs error | label | prediction | reference | file |",
                      "|---|---|---|---|---|---|---|"]
            for w in v["worst"]:
                lines.append(f"| {w['index']} | {w['cosine']:.6f} | {w['max_abs_error']:.3g} | "
                             f"{'-' if w['label'] is None else w['label']} | "
                             f"{'-' if w['prediction'] is None else w['prediction']} | "
                             f"{'-' if w['reference_prediction'] is None else w['reference_prediction']} | "
                             f"`{w['file']}` |")
    if layers:
        lines += render_divergence(layers)
    lines += ["", "## Improved, worse, risky", ""]
    lines += summarize_changes(manifest, profile, validation)
    return "\n".join(lines) + "\n"


def _interleaved_ratio(profile: dict[str, Any]) -> Any:
    """The artifact-to-baseline p50 ratio of the interleaved runs (a ``RatioCI``), or None."""
    from onnxsmith.profiling.stats import RatioCI

    ci = (profile.get("comparison") or {}).get("ratio_p50")
    return RatioCI.from_json(ci) if ci else None


def _noise_lines(profile: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """The interleaved comparison with the baseline (ratio with its interval and runs), the machine it ran on,
    and the warnings: a busy machine, an artifact slower than ONNX Runtime fp32."""
    from onnxsmith.profiling.environment import busy_warning
    from onnxsmith.profiling.record import slower_than_baseline
    from onnxsmith.profiling.stats import RatioCI

    out = []
    comparison = profile.get("comparison") or {}
    if comparison.get("ratio_p50"):
        ratio = RatioCI.from_json(comparison["ratio_p50"])
        word = {"better": "faster than", "worse": "slower than"}.get(ratio.verdict(), "no significant change against")
        out.append(f"\nInterleaved runs ({ratio.runs_a} of {comparison['round_seconds']:g} s per side, alternating): "
                   f"p50 ratio to the baseline {ratio.text('x')}: {word} ONNX Runtime fp32.")
    env = profile.get("environment") or {}
    if env:
        other = env.get("other_processes_cpu_share")
        out.append(f"\nMachine: {env.get('cpu_model')}, {env.get('usable_cores')} usable cores, frequency governor "
                   f"{env.get('frequency_governor') or 'not readable'}; load average {env.get('load_average_before')} "
                   f"before the run, {env.get('load_average_after')} after"
                   + ("" if other is None else f"; other processes used {other * 100:.0f} % of the CPU during it") + ".")
    disagreement = (profile.get("comparison") or {}).get("disagreement")
    for warning in (busy_warning(env), disagreement, slower_than_baseline(profile, manifest)):
        if warning:
            out.append(f"\n**Warning**: {warning}.")
    return out


def summarize_changes(manifest: dict[str, Any], profile: dict[str, Any] | None,
                      validation: dict[str, Any] | None) -> list[str]:
    out = []
    if profile and profile.get("baseline"):
        base = profile["baseline"]
        checks = [("p50 latency", profile["latency_ms"]["p50"], base["latency_ms"]["p50"], True),
                  ("p99 latency", profile["latency_ms"]["p99"], base["latency_ms"]["p99"], True),
                  ("throughput", profile["throughput_per_s"], base["throughput_per_s"], False),
                  ("peak memory", profile["peak_rss_mb"], base["peak_rss_mb"], True)]
        interleaved = _interleaved_ratio(profile)
        for name, ours, theirs, lower in checks:
            if not theirs:
                continue
            ratio = ours / theirs
            improved = ratio < 0.97 if lower else ratio > 1.03
            worse = ratio > 1.03 if lower else ratio < 0.97
            if name == "p50 latency" and interleaved is not None:
                improved, worse = interleaved.verdict() == "better", interleaved.verdict() == "worse"
            word = "Improved" if improved else "Worse" if worse else "Unchanged"
            out.append(f"- {word}: {name} {ours:.3f} vs {theirs:.3f} ({ratio:.2f}x the baseline)")
    if validation:
        if validation.get("accuracy") is not None and validation["reference_accuracy"] - validation["accuracy"] > 0:
            out.append(f"- Worse: accuracy dropped {(validation['reference_accuracy'] - validation['accuracy']) * 100:.2f}"
                       " points")
        if not validation["passed"]:
            out.append("- Risky: validation failed; see above.")
        elif validation["cosine_min"] < 0.9999:
            out.append(f"- Risky: outputs differ from fp32 (cosine min {validation['cosine_min']:.5f}); inspect the "
                       "worst examples.")
    if not manifest["runs_here"]["ok"]:
        out.append(f"- Not measured here: {manifest['runs_here']['reason']}.")
    return out or ["- Nothing measured yet."]


def save_record(bundle: Bundle, name: str, record: dict[str, Any]) -> None:
    """Write one of a bundle's records (``profile.json``, ``validation.json``, ``layers.json``) atomically and
    rebuild ``report.md`` from all of them: what every stage does when it finishes, wherever it runs."""
    bundle.write_json(name, record)
    write_report(bundle)


def write_report(bundle: Bundle) -> str:
    manifest = dict(bundle.manifest)
    manifest["_reference_path"] = str(bundle.reference_model)
    text = render_report(manifest, bundle.read_json("profile.json"), bundle.read_json("validation.json"),
                         bundle.read_json("layers.json"))
    path = bundle.path / "report.md"
    tmp = path.with_name(f".report.md.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    bundle.seal_records("report.md")  # every writer into a bundle ends here: the records' list follows
    return text


def _slow_advice(manifest: dict[str, Any]) -> str:
    """The backend's own advice for an artifact slower than the baseline ("" when it has none or is not here)."""
    from onnxsmith.errors import OnnxsmithError
    from onnxsmith.plugin import Artifact
    from onnxsmith.registry import get_backend

    try:
        return get_backend(manifest["backend"]).slow_artifact_advice(Artifact.from_json(manifest["artifact"]))
    except OnnxsmithError:
        return ""


def render_divergence(record: Mapping[str, Any], limit: int = 40) -> list[str]:
    """The report section: what was compared, the first layer past the tolerance, the table, the plot."""
    lines = ["", "## Per-layer divergence", "",
             f"{record['backend']} ({record['precision_used']}) against ONNX Runtime fp32 on the reference model, "
             f"{record['samples']} samples from `{record['data']}`; intermediate tensors exposed as "
             f"{record['exposed_by']}. Tolerance: cosine >= {record['min_cosine']}"
             + (f" and relative error <= {record['max_rel_l2']}" if record.get("max_rel_l2") else "") + ".", ""]
    lines.append(f"- **First layer past the tolerance: {record['first']}** (`{record['first_tensor']}`)"
                 if record.get("first") else "- No layer exceeds the tolerance.")
    lines.append(f"- {record['growth']}.")
    if record.get("not_exposed"):
        shown = ", ".join(f"`{n}`" for n in record["not_exposed"][:8])
        more = len(record["not_exposed"]) - 8
        lines.append(f"- Not exposed by the artifact (fused away or renamed): {shown}"
                     + (f" and {more} more" if more > 0 else ""))
    for note in record.get("notes", []):
        lines.append(f"- Note: {note}")
    if record.get("plot"):
        lines += ["", f"![per-layer error]({record['plot']})"]
    rows = record["layers"]
    first = next((r["index"] for r in rows if r["exceeds"]), None)
    shown_rows = rows if len(rows) <= limit else [
        r for r in rows if r["index"] < 5 or r["exceeds"] and first is not None and r["index"] < first + 10
        or r["index"] >= len(rows) - 5]
    lines += ["", "| # | layer | node (op) | tensor | cosine min | max abs | rel error | growth | past |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in shown_rows:
        added = "new" if r["added"] is None else "-" if r["added"] == 1.0 else f"{r['added']:.2f}x"
        lines.append(f"| {r['index']} | {r['layer']} | {r['node']} ({r['op_type']}) | `{r['tensor']}` | "
                     f"{r['cosine_min']:.5f} | {r['max_abs_error']:.3g} | {r['rel_l2_error']:.3g} | {added} | "
                     f"{'**yes**' if r['exceeds'] else ''} |")
    if len(shown_rows) < len(rows):
        lines.append(f"\n{len(rows) - len(shown_rows)} rows left out; all are in `layers.json`.")
    return lines
