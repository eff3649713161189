"""compare's --option per cell: BACKEND.KEY applies to that backend's cells, a plain KEY to every cell; an option a
cell's backend does not declare is refused before any cell runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnxsmith
from tests.cli.test_cli import cli

DIGITS = Path(onnxsmith.__file__).parent / "examples" / "digits"
MODEL = str(DIGITS / "digits_cnn.onnx")


def test_options_scoped_to_a_backend_reach_only_its_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "cmp"
    code, _, err = cli(["compare", MODEL, "-t", "host:openvino:fp32", "-t", "host:onnxruntime:fp32", "-p", "quick",
                        "--option", "openvino.num_threads=1", "--option", "onnxruntime.threads=1", "-o", str(out),
                        "--json"], capsys)
    assert code == 0, err
    options = {}
    for cell in (out / "cells").iterdir():
        manifest = json.loads((cell / "manifest.json").read_text())
        options[manifest["backend"]] = manifest["artifact"]["options"]  # what each backend applied
    assert options["openvino"]["INFERENCE_NUM_THREADS"] == "1" and options["onnxruntime"]["threads"] == 1, options


@pytest.mark.parametrize("option,words", [("num_threads=2", ["host:onnxruntime", "unknown onnxruntime option"]),
                                          ("tvm.threads=1", ["tvm", "no cell uses it"])])
def test_an_option_a_cell_cannot_take_is_refused_before_any_cell_runs(tmp_path: Path, option: str, words: list[str],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    code, _, err = cli(["compare", MODEL, "-t", "host:openvino", "-t", "host:onnxruntime", "--option", option,
                        "-o", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".cmp")]
