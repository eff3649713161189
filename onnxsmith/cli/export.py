"""``onnxsmith export``: a PyTorch model to a checked ONNX file, and nothing else."""

from __future__ import annotations

import click

from onnxsmith.cli.common import data_option, echo, echo_err, json_option, shape_option


@click.command("export")
@click.argument("model")
@shape_option
@click.option("--target", "-t", "target_spec", default=None,
              help="Export at an opset every backend of this target reads (default: the exporter's opset).")
@click.option("--opset", type=click.IntRange(min=7), default=None, help="Export at this ONNX opset instead.")
@data_option("--data", "data_spec", "Real inputs for the numerics check (default: random inputs)")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="The .onnx file to write.")
@click.option("--force", is_flag=True, help="Replace an existing -o file.")
@json_option
def export_command(model: str, shapes: tuple[str, ...], target_spec: str | None, opset: int | None,
                   data_spec: str | None, output: str, force: bool, as_json: bool) -> None:
    """Export a PyTorch model to ONNX, checked against eager PyTorch.

    MODEL: package.module:factory (a function returning an nn.Module), path/to/file.py:factory, a torch.export
    .pt2 or a TorchScript file. Inputs: --shape NAME=DIMS[:dtype]. The dynamo exporter runs first, the TorchScript
    exporter as a fallback; the export is checked (ONNX checker, shape inference, ONNX Runtime vs eager PyTorch:
    cosine, max abs error, top-1 agreement) and the record is stored in the file's metadata (onnxsmith.export)."""
    import json
    import os
    from pathlib import Path

    from onnxsmith.console import print_json, progress
    from onnxsmith.errors import UserInputError
    from onnxsmith.targets import load_target
    from onnxsmith.torchin.api import describe, export_cached
    from onnxsmith.torchin.inputs import split_shapes
    from onnxsmith.torchin.source import torch_kind

    kind = torch_kind(model)
    if kind is None:
        raise UserInputError(f"cannot export '{model}'", "it is not a PyTorch model (module:factory, .pt2 or "
                             "TorchScript)" + (" but already an ONNX file" if model.endswith(".onnx") else ""),
                             "give the PyTorch model; ONNX files go straight to compile, inspect or optimize")
    out = Path(output)
    if out.suffix != ".onnx":
        raise UserInputError(f"invalid --output '{output}'", "it must end in .onnx", "for example -o model.onnx")
    if out.exists() and not force:
        raise UserInputError(f"'{output}' exists", "export never overwrites a file unasked", "pass --force")
    if out.is_dir():
        raise UserInputError(f"invalid --output '{output}'", "it is a directory", "name the .onnx file")
    passthrough, args = split_shapes(shapes)
    bad = [v for v, a in zip(passthrough, shapes) if v.rpartition("=")[0] not in args]
    if bad:
        from onnxsmith.model.shapes import parse_shape_overrides

        parse_shape_overrides(bad)  # the one message for a malformed --shape
    target = load_target(target_spec) if target_spec else None
    with progress(f"exporting {model}", not as_json) as update:
        path, record = export_cached(model, kind, args, target=target, data=data_spec, progress=update, opset=opset)
    import onnx

    proto = onnx.load_model(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "onnxsmith.export", json.dumps({k: v for k, v in record.items() if k != "cache"})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    if as_json:
        print_json({"onnx": str(out), **record})
        return
    echo(describe(record))
    for note in record["notes"]:
        echo_err(f"note: {note}")
    echo(f"onnx: {out}")
