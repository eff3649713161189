"""PyTorch in: module:factory, .pt2 and TorchScript MODELs exported to ONNX, checked, and compiled."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxsmith.errors import UserInputError
from onnxsmith.torchin.inputs import split_shapes
from onnxsmith.torchin.source import torch_kind
from tests.cli.test_cli import cli

ROOT = Path(__file__).resolve().parents[1]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (pip install 'onnxsmith[torch]')")


def test_shape_dtype_suffix_is_stripped_and_ranges_export_at_opt() -> None:
    passthrough, args = split_shapes(["image=1x3x32x32:float32", "ids=1x16:int64", "x=1x8:4x8:16x8", "m=2x3"])
    assert passthrough == ("image=1x3x32x32", "ids=1x16", "x=1x8:4x8:16x8", "m=2x3")
    assert args["image"].dims == (1, 3, 32, 32) and args["image"].dtype == "float32"
    assert args["ids"].dtype == "int64" and args["m"].dtype is None
    assert args["x"].dims == (4, 8) and args["x"].ranges == ((1, 16), None)
    with pytest.raises(UserInputError, match="unknown dtype 'floatx'"):
        split_shapes(["x=1x3:floatx"])


def test_model_kinds(tmp_path: Path, cnn_path: Path) -> None:
    assert torch_kind(str(cnn_path)) is None
    assert torch_kind("tests.torch_models:resnet_cnn") == "factory"
    assert torch_kind("some/file.py:build") == "factory"
    assert torch_kind(str(tmp_path / "missing.onnx")) is None


def test_onnx_model_with_dtype_suffix_is_refused(cnn_path: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["compile", str(cnn_path), "--shape", "input=1x3x16x16:float32", "-o", str(tmp_path / "b")],
                       capsys)
    assert code == 2 and "applies to PyTorch models only" in err


@needs_torch
@pytest.mark.parametrize("factory, shape", [("resnet_cnn", "image=1x3x32x32"),
                                            ("encoder", "input_ids=1x16:int64")])
def test_pytorch_factory_to_validated_openvino_bundle(factory: str, shape: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    bundle = tmp_path / "bundle"
    code, out, err = cli(["compile", f"tests.torch_models:{factory}", "--shape", shape, "--backend", "openvino",
                          "--validate", "-o", str(bundle), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["backend"] == "openvino" and record["validation"]["passed"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    export = manifest["model"]["export"]
    assert export["from"] == f"tests.torch_models:{factory}" and export["exporter"] == "dynamo"
    assert export["opset"] == 18 and export["torch_version"]
    assert export["check"]["cosine_min"] >= 0.9999 and export["check"]["top1_agreement"] == 1.0
    assert export["check"]["onnx_checker"] == "full check passed"
    assert export["dynamic_batch"] and export["check"]["dynamic_batch_check"]["ok"]
    assert "Exported from PyTorch" in (bundle / "report.md").read_text()
    # the same model again: the export comes from the cache, the figures with it
    code, out, err = cli(["compile", f"tests.torch_models:{factory}", "--shape", shape, "--backend", "openvino",
                          "-o", str(tmp_path / "again")], capsys)
    assert code == 0 and "(cached)" in err


@needs_torch
def test_pytorch_factory_with_a_shape_range_compiles_one_dynamic_openvino_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--shape NAME=MIN:OPT:MAX on a PyTorch model: exported at OPT with the batch dim dynamic, compiled as one
    ranged artifact, validated at min, opt and max."""
    pytest.importorskip("openvino")
    bundle = tmp_path / "bundle"
    code, out, err = cli(["compile", "tests.torch_models:resnet_cnn", "--shape", "image=1x3x8x8:2x3x8x8:4x3x8x8",
                          "--backend", "openvino", "--validate", "-o", str(bundle), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["shape_ranges"] == {"image": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}}
    assert record["export"]["inputs"][0]["shape"] == [2, 3, 8, 8]  # exported (and checked) at OPT
    assert record["artifact"]["metadata"]["dynamic_shapes"] == {"image": "[1..4,3,8,8]"}
    validation = record["validation"]
    assert validation["passed"] and [p["point"] for p in validation["shapes"]] == ["min", "opt", "max"]
    assert [p["shape"]["image"][0] for p in validation["shapes"]] == [1, 2, 4]


@needs_torch
@pytest.mark.parametrize("factory, names", [("data_dependent", "`if x.sum() > 0:`"),
                                            ("eigenvalues", "op aten::linalg_eig")])
def test_unexportable_construct_is_one_line_naming_it(factory: str, names: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["export", f"tests.torch_models:{factory}", "--shape", "x=1x4x4", "-o",
                          str(tmp_path / "m.onnx")], capsys)
    lines = err.strip().splitlines()
    assert code == 4 and len(lines) == 1 and lines[0].startswith("error: cannot export"), err
    assert names in lines[0] and "Hint:" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@needs_torch
def test_bad_pytorch_inputs_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "m.onnx")
    for args, why in ((["tests.torch_models:not_a_module"], "returned int, not a torch.nn.Module"),
                      (["tests.torch_models:nope"], "has no function 'nope'"),
                      (["tests.no_such_module:f"], "No module named"),
                      (["tests.torch_models:resnet_cnn"], "needs the shape of input 'image'"),
                      (["tests.torch_models:resnet_cnn", "--shape", "img=1x3x8x8"], "has no input of that name"),
                      (["tests.torch_models:resnet_cnn", "--shape", "image=1x5x8x8"], "cannot run the PyTorch model")):
        code, _, err = cli(["export", *args, "-o", out], capsys)
        assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err


@needs_torch
def test_export_command_pt2_and_torchscript(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx
    import torch

    from tests.torch_models import resnet_cnn

    model = resnet_cnn()
    example = (torch.randn(1, 3, 16, 16),)
    torch.export.save(torch.export.export(model, example), str(tmp_path / "m.pt2"))
    torch.jit.save(torch.jit.trace(model, example), str(tmp_path / "m.ts"))
    np.savez(tmp_path / "data.npz", image=np.random.default_rng(0).standard_normal((6, 3, 16, 16), np.float32))
    for source, shapes in ((tmp_path / "m.pt2", []), (tmp_path / "m.ts", ["--shape", "image=1x3x16x16"])):
        assert torch_kind(str(source)) in ("exported", "torchscript")
        target = tmp_path / f"{source.suffix[1:]}.onnx"
        code, out, err = cli(["export", str(source), *shapes, "--data", str(tmp_path / "data.npz"), "-o",
                              str(target), "--json"], capsys)
        assert code == 0, err
        record = json.loads(out)
        assert record["check"]["cosine_min"] >= 0.9999 and record["check"]["samples"] == 6
        assert "data.npz" in record["check"]["data"]
        proto = onnx.load(str(target))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["onnxsmith.export"])["exporter"] == record["exporter"]
    code, _, err = cli(["export", str(tmp_path / "m.pt2"), "-o", str(tmp_path / "pt2.onnx")], capsys)
    assert code == 2 and "--force" in err


@needs_torch
def test_pytorch_model_inspects(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["inspect", "tests.torch_models:resnet_cnn", "--shape", "image=1x3x16x16", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["export"]["exporter"] == "dynamo" and info["inputs"][0]["name"] == "image"


NO_TORCH = ("import sys; sys.modules['torch'] = None\n"
            "from onnxsmith.cli import main\n"
            "main(sys.argv[1:])\n")


@pytest.mark.parametrize("args", [
    ["export", "tests.torch_models:resnet_cnn", "--shape", "image=1x3x8x8", "-o", "{tmp}/m.onnx"],
    ["compile", "tests.torch_models:resnet_cnn", "--shape", "image=1x3x8x8", "-o", "{tmp}/b"],
    ["distill", str(ROOT / "onnxsmith/examples/digits/digits_cnn.onnx"), "--student",
     "onnxsmith.examples.digits.student:mlp", "--data", str(ROOT / "onnxsmith/examples/digits/train.npz"),
     "--epochs", "1", "-o", "{tmp}/d"],
])
def test_without_torch_the_extra_is_named(args: list[str], tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert "torch is not installed" in proc.stderr and "pip install 'onnxsmith[torch]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", ["export", "distill", "compile", "optimize"])
def test_help_of_pytorch_verbs_imports_no_torch(verb: str) -> None:
    code = ("import sys; from onnxsmith.cli import main\n"
            f"try:\n    main(['{verb}', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED:' + ','.join(m for m in ('torch', 'onnxscript', 'onnxruntime') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "LOADED:"
