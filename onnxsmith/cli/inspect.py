"""``onnxsmith inspect``."""

from __future__ import annotations

from typing import Any

import click

from onnxsmith.cli.common import batch_option, json_option, shape_option, target_option


def backend_support(model: Any, target: Any) -> list[dict[str, Any]]:
    """For each backend the target lists: installed? compiles for it? runs here? ops it cannot convert."""
    from onnxsmith.errors import OnnxsmithError, first_line
    from onnxsmith.registry import backend_status, get_backend

    rows = []
    for name in target.backends:
        status = backend_status(name, probe_devices=False)
        row: dict[str, Any] = {"backend": name, "installed": status.available, "version": status.version,
                               "supports_target": None, "runs_here": None, "unsupported_ops": None,
                               "reason": status.reason}
        if status.available:
            backend = get_backend(name)
            support = backend.supports(target)
            runs = backend.runs_here(target)
            row.update(supports_target=support.ok, runs_here=runs.ok,
                       reason="; ".join(r for r in (support.reason, runs.reason) if r))
            if support:
                from onnxsmith.build.compile import missing_value_types

                lacking = missing_value_types(backend, model)
                if lacking:
                    kind, spec, _ = lacking[0]
                    row["reason"] = "; ".join(r for r in (row["reason"], f"cannot take {kind} '{spec.name}' "
                                                          f"({spec.type_text()})") if r)
                try:
                    row["unsupported_ops"] = backend.unsupported_ops(model, target)
                except OnnxsmithError as exc:
                    row["reason"] = exc.one_line()
                except Exception as exc:  # op-support probing is advisory
                    row["reason"] = f"op support check failed: {first_line(exc)}"
        rows.append(row)
    return rows


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@shape_option
@batch_option
@json_option
def inspect_command(model: str, target_spec: str, shapes: tuple[str, ...], batch: str | None,
                    as_json: bool) -> None:
    """Show a model's inputs, ops, parameters, FLOPs and backend support.

    MODEL is an ONNX file or a PyTorch model (package.module:factory, .pt2, TorchScript; exported first)."""
    from rich.table import Table

    from onnxsmith.analysis import summarize
    from onnxsmith.console import print_json, shown, stdout_console
    from onnxsmith.model.shapes import parse_batch
    from onnxsmith.report import flop_text
    from onnxsmith.targets import load_target
    from onnxsmith.torchin import open_model
    from onnxsmith.units import fmt_bytes

    target = load_target(target_spec)
    loaded = open_model(model, shapes, target=target, default_batch=None, batch=parse_batch(batch))
    info = summarize(loaded)
    info["target"] = target.id
    info["export"] = loaded.export
    info["backends"] = []
    if all(s.is_static for s in loaded.inputs):
        info["backends"] = backend_support(loaded, target)
    else:
        from onnxsmith.errors import OnnxsmithError

        try:  # a dynamic batch alone is fixed to 1 for the op-support probe (as compile does)
            fixed = open_model(model, shapes, target=target, batch=parse_batch(batch))
            info["backends"] = backend_support(fixed, target)
            fixed_info = summarize(fixed)
            info["flops"], info["flops_unknown_nodes"] = fixed_info["flops"], fixed_info["flops_unknown_nodes"]
            info["notes"] = [*info["notes"], "FLOPs and backend support are for the batch dimension fixed to 1"]
        except OnnxsmithError as exc:
            info["notes"] = [*info["notes"], f"backend support not probed: {exc.one_line()}"]
    if as_json:
        print_json(info)
        return
    out = stdout_console()
    out.print(f"[bold]{shown(info['name'])}[/bold]  opset {info['opset']}, IR {info['ir_version']}, "
              f"producer {shown(info['producer'] or '-')}, sha256 {info['fingerprint'][:16]}")
    io = Table(title="signature")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, specs in (("input", info["inputs"]), ("output", info["outputs"])):
        for s in specs:
            dtype = " of ".join((*s.get("wrap", ()), s["dtype"]))
            io.add_row(kind, shown(s["name"]), shown(dtype), "x".join(str(d) if d is not None else "?" for d in s["shape"]))
    out.print(io)
    out.print(f"{info['nodes']} nodes, {info['parameters']:,} parameters ({fmt_bytes(info['parameter_bytes'])}), "
              f"{flop_text(info['flops'])} per inference (Conv/Gemm/MatMul)")
    out.print("ops: " + ", ".join(f"{shown(op)} x{n}" for op, n in info["ops"].items()))
    if info["dynamic_inputs"]:
        out.print(f"[yellow]dynamic dims[/yellow]: {shown(info['dynamic_inputs'])} (fix with --shape NAME=DIMS, or keep "
                  "them dynamic within bounds with --shape NAME=MIN:OPT:MAX or --batch MIN..MAX)")
    if info["backends"]:
        table = Table(title=f"backend support for {target.id}")
        for col in ("backend", "installed", "compiles for target", "runs here", "unsupported ops", "why not"):
            table.add_column(col)
        yes = {True: "yes", False: "no", None: "-"}
        for row in info["backends"]:
            ops = row["unsupported_ops"]
            ops_text = "-" if ops is None else "none" if not ops else ", ".join(f"{shown(k)} ({len(v)})"
                                                                              for k, v in ops.items())
            table.add_row(row["backend"], yes[row["installed"]], yes[row["supports_target"]], yes[row["runs_here"]],
                          ops_text, shown(row["reason"] or ""))
        out.print(table)
    for note in info["notes"]:
        out.print(f"note: {shown(note)}")
