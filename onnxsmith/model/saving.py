"""Save a model, its weights beside it when the protobuf would be too large."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


def save_model(proto: onnx.ModelProto, path: Path) -> Path:
    """Save a model; models over 1.8 GB keep their weights in ``<name>.data`` beside it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if proto.ByteSize() > 1_800_000_000:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(proto, str(path))
    return path
