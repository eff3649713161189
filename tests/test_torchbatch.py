"""--batch with a PyTorch MODEL: it sets the first dim of the --shape dims (the module declares no shapes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from onnxsmith.errors import UserInputError
from onnxsmith.torchin.batch import batch_into_shapes
from tests.cli.test_cli import cli

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed (pip install 'onnxsmith[torch]')")


def test_batch_rewrites_the_shared_first_dim_of_fixed_shapes() -> None:
    shapes = ("ids=1x16:int64", "mask=1x16:int64", "scale=3", "x=1x4:2x4:8x4")
    assert batch_into_shapes("m:f", shapes, (4, 4, 4)) == (
        ("ids=4x16:int64", "mask=4x16:int64", "scale=3", "x=1x4:2x4:8x4"), None)  # a --shape range wins
    assert batch_into_shapes("m:f", ("image=1x3x8x8",), (1, 2, 8)) == (("image=1x3x8x8:2x3x8x8:8x3x8x8",), None)
    assert batch_into_shapes("m:f", ("x=1x4:2x4:8x4",), (4, 4, 4)) == (("x=1x4:2x4:8x4",), (4, 4, 4))
    with pytest.raises(UserInputError, match="do not share a first"):
        batch_into_shapes("m:f", ("a=1x3", "b=5x3"), (4, 4, 4))


@needs_torch
def test_pytorch_model_compiles_at_a_batch_and_a_batch_range(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Was exit 2 ("no input left for it has a dynamic first (batch) dim"): --shape named every input."""
    pytest.importorskip("openvino")
    model = ["tests.torch_models:resnet_cnn", "--shape", "image=1x3x8x8", "--backend", "openvino", "--json"]
    code, out, err = cli(["compile", *model, "--batch", "3", "-o", str(tmp_path / "fixed")], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["export"]["inputs"][0]["shape"] == [3, 3, 8, 8] and record["shape_ranges"] == {}
    manifest = json.loads((tmp_path / "fixed" / "manifest.json").read_text())
    assert manifest["model"]["signature"]["inputs"][0]["shape"] == [3, 3, 8, 8]
    code, out, err = cli(["compile", *model, "--batch", "1..4@2", "--validate", "-o", str(tmp_path / "ranged")],
                         capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["shape_ranges"] == {"image": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}}
    assert record["export"]["inputs"][0]["shape"] == [2, 3, 8, 8]  # exported and checked at OPT
    assert record["validation"]["passed"]
    assert [p["shape"]["image"][0] for p in record["validation"]["shapes"]] == [1, 2, 4]
