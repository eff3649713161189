"""``onnxsmith run``."""

from __future__ import annotations

from typing import Any

import click

from onnxsmith.cli.common import data_option, echo, json_option


@click.command("run")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(file_okay=False))
@data_option("--input", "input_file", "Inputs: the compiled shapes, or any inside a compiled range (one run), "
             "or N samples along axis 0 of the batched inputs; NaN allowed", required=True)
@click.option("--output", "output_file", type=click.Path(dir_okay=False), default=None,
              help="Where to save the outputs (.npz).")
@json_option
def run_command(bundle_path: str, input_file: str, output_file: str | None, as_json: bool) -> None:
    """Run a bundle on inputs (.npz, .npy folder, images...) and save the outputs."""
    import time
    from pathlib import Path

    import numpy as np

    from onnxsmith.bundle import Bundle
    from onnxsmith.console import print_json
    from onnxsmith.data.dataset import save_npz
    from onnxsmith.data.sources import open_dataset
    from onnxsmith.errors import DataError
    from onnxsmith.dirs import check_output_file
    from onnxsmith.data.values import flatten_values, is_structured

    bundle = Bundle.open(bundle_path)
    if output_file:
        check_output_file(output_file)
    data = open_dataset(input_file, bundle.inputs, what="input data", finite=False, known_batch=bundle.batch_inputs)
    batch = data.batch
    if not data.one_feed and len(data) % batch:
        raise DataError(f"input data '{input_file}' does not fit the model",
                        f"{len(data)} samples is not a multiple of the compiled batch {batch}")
    structured = [o.name for o in bundle.outputs if o.wrap]
    feeds_count = 1 if data.one_feed else len(data) // batch
    if structured and feeds_count > 1:
        raise DataError(f"input data '{input_file}' gives {feeds_count} feeds", f"output '{structured[0]}' is a "
                        "sequence or optional, which has no sample axis to join feeds along",
                        "run one feed at a time (arrays of exactly the compiled shapes)")
    outputs: dict[str, list[Any]] = {}
    start = time.perf_counter()
    with bundle:
        for feeds in data.batches(batch):
            for name, value in bundle.run(feeds).items():
                outputs.setdefault(name, []).append(value if is_structured(value) else np.asarray(value))
    seconds = time.perf_counter() - start
    samples = len(data)
    ranged = [s.name for s in bundle.inputs if s.name in bundle.shape_ranges and s.shape
              and not isinstance(s.shape[0], int)]
    if data.one_feed and ranged:  # a shape range runs the file as one request: its samples are its first dim
        samples = int(np.asarray(data.arrays[ranged[0]]).shape[0])
    merged = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in outputs.items()}
    if output_file:
        save_npz(Path(output_file), flatten_values(merged))  # strings '<U', sequences NAME.0..., no pickle
    summary = {"bundle": str(bundle.path), "samples": samples, "seconds": round(seconds, 4),
               "outputs": {k: _describe(v) for k, v in merged.items()}, "output_file": output_file}
    if as_json:
        print_json(summary)
        return
    for name, info in summary["outputs"].items():
        echo(f"{name}: {info['text']}")
    echo(f"ran {samples} samples in {seconds:.3f} s" + (f"; outputs saved to {output_file}" if output_file else ""))


def _describe(value: Any) -> dict[str, Any]:
    """Shape and dtype of a tensor output (``string`` for text); ``kind`` and ``length`` for a sequence or
    optional."""
    import numpy as np

    from onnxsmith.data.values import describe

    if value is None:
        return {"kind": "optional", "present": False, "text": describe(value)}
    if isinstance(value, (list, tuple)):
        return {"kind": "sequence", "length": len(value), "text": describe(value)}
    arr = np.asarray(value)
    dtype = "string" if arr.dtype.kind in "US" else str(arr.dtype)
    return {"shape": list(arr.shape), "dtype": dtype, "text": describe(value)}
