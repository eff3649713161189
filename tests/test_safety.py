"""Data safety through the real CLI: `-o` never destroys what it should not, bundles never reach outside
themselves, and NaN never validates."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxsmith.signing import seal
from tests.cli.test_cli import _assert_one_line_error, cli


def _edit_manifest(bundle: Path, change, reseal: bool = True) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    if reseal:  # an attacker (or a careless script) who also rewrites the checksum
        seal(bundle, (bundle / "manifest.json").read_bytes())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. `-o` never deletes what it should not ---------------------------------------------------------------------

def _refused_over_a_users_file(verb: str, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """``VERB MODEL -b onnxruntime -o userdir`` into a folder holding the user's file: refused (exit 2, "is not
    empty") and the file kept; returns the folder."""
    userdir = tmp_path / "userdir"
    userdir.mkdir()
    (userdir / "precious.txt").write_text("keep")
    _assert_one_line_error(*cli([verb, str(model), "-b", "onnxruntime", "-o", str(userdir)], capsys), 2,
                           "is not empty")
    assert (userdir / "precious.txt").read_text() == "keep"
    return userdir


def test_compile_refuses_a_non_empty_foreign_output(cnn_path: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    userdir = _refused_over_a_users_file("compile", cnn_path, tmp_path, capsys)
    assert sorted(p.name for p in userdir.iterdir()) == ["precious.txt"]
    code, _, err = cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(userdir), "--force"], capsys)
    assert code == 0, err
    assert (userdir / "manifest.json").is_file() and not (userdir / "precious.txt").exists()


def test_compile_replaces_a_previous_bundle_and_an_empty_dir(bundle: Path, cnn_path: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(bundle)], capsys)
    assert code == 0, err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(empty)], capsys)
    assert code == 0 and (empty / "manifest.json").is_file(), err


def test_output_holding_the_model_data_or_cache_is_refused_even_with_force(
        cnn_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _sha(cnn_path)
    for extra in ([], ["--force"]):
        _assert_one_line_error(*cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(cnn_path.parent),
                                     *extra], capsys), 2, "one of this command's inputs")
    assert _sha(cnn_path) == before
    # the model elsewhere, the calibration data inside -o
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.savez(data_dir / "calib.npz", input=np.zeros((4, 3, 16, 16), np.float32))
    model = tmp_path / "models" / "cnn.onnx"
    model.parent.mkdir()
    model.write_bytes(cnn_path.read_bytes())
    _assert_one_line_error(*cli(["compile", str(model), "-b", "onnxruntime", "--precision", "int8", "--calibration",
                                 str(data_dir / "calib.npz"), "-o", str(data_dir), "--force"], capsys), 2,
                           "calib.npz")
    assert (data_dir / "calib.npz").is_file()
    cache = Path(os.environ["ONNXSMITH_CACHE_DIR"])
    for out in (cache.parent, cache / "inside"):
        _assert_one_line_error(*cli(["compile", str(model), "-b", "onnxruntime", "-o", str(out), "--force"], capsys),
                               2, "compile cache")
    # optimize: the same rules
    _assert_one_line_error(*cli(["optimize", str(cnn_path), "-b", "onnxruntime", "-o", str(cnn_path.parent),
                                 "--force"], capsys), 2, "one of this command's inputs")
    _refused_over_a_users_file("optimize", model, tmp_path, capsys)


# --- 2. bundles never reach outside themselves ---------------------------------------------------------------------

def _elsewhere_model(tmp_path: Path, cnn_path: Path) -> Path:
    evil = tmp_path / "elsewhere" / "evil.onnx"
    evil.parent.mkdir()
    evil.write_bytes(cnn_path.read_bytes())
    return evil


def test_manifest_edits_are_caught_by_its_checksum(bundle: Path, tmp_path: Path, cnn_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    evil = _elsewhere_model(tmp_path, cnn_path)
    _edit_manifest(bundle, lambda m: m["artifact"].update(files=[str(evil)]), reseal=False)
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    _assert_one_line_error(*cli(["run", str(bundle), "--input", str(tmp_path / "x.npz")], capsys), 2,
                           "manifest.json does not match manifest.sha256")
    (bundle / "manifest.sha256").unlink()
    _assert_one_line_error(*cli(["run", str(bundle), "--input", str(tmp_path / "x.npz")], capsys), 2,
                           "has no manifest.sha256")


@pytest.mark.parametrize("case", ["absolute", "dotdot", "reference", "files-outside", "unlisted-artifact"])
def test_manifest_paths_are_confined_to_the_bundle(case: str, bundle: Path, tmp_path: Path, cnn_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    evil = _elsewhere_model(tmp_path, cnn_path)
    rel_evil = os.path.relpath(evil, bundle / "artifact")

    def change(m: dict) -> None:
        if case == "absolute":
            m["artifact"]["files"] = [str(evil)]
            m["files"][str(evil)] = _sha(evil)
        elif case == "dotdot":
            m["artifact"]["files"] = [rel_evil]
            m["files"]["artifact/" + rel_evil] = _sha(evil)
        elif case == "reference":
            m["reference"] = "../../../../../../../../etc/passwd"
            m["files"][m["reference"]] = _sha(Path("/etc/passwd"))
        elif case == "files-outside":
            m["files"]["../../../../../../../../etc/passwd"] = "0" * 64
        else:
            m["artifact"]["files"] = ["other.onnx"]

    _edit_manifest(bundle, change)
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    code, out, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz")], capsys)
    _assert_one_line_error(code, out, err, 2, "unsafe")


def test_symlinked_and_extra_artifact_files_are_refused(bundle: Path, tmp_path: Path, cnn_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    artifact = bundle / "artifact" / "model.optimized.onnx"
    copy = tmp_path / "elsewhere.onnx"
    copy.write_bytes(artifact.read_bytes())  # same bytes, same sha256: only the link gives it away
    artifact.unlink()
    artifact.symlink_to(copy)
    _assert_one_line_error(*cli(["run", str(bundle), "--input", str(tmp_path / "x.npz")], capsys), 2,
                           "symbolic link")
    artifact.unlink()
    artifact.write_bytes(copy.read_bytes())
    code, _, err = cli(["run", str(bundle), "--input", str(tmp_path / "x.npz")], capsys)
    assert code == 0, err
    (bundle / "artifact" / "extra.so").write_bytes(b"\x7fELF")
    _assert_one_line_error(*cli(["run", str(bundle), "--input", str(tmp_path / "x.npz")], capsys), 2,
                           "not listed in manifest.json")


def test_a_signing_key_makes_tampering_detectable(cnn_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "bundle.key"
    key.write_bytes(os.urandom(32).hex().encode())
    monkeypatch.setenv("ONNXSMITH_BUNDLE_KEY", str(key))
    out = tmp_path / "signed"
    code, _, err = cli(["compile", str(cnn_path), "-b", "onnxruntime", "-o", str(out)], capsys)
    assert code == 0 and (out / "manifest.sig").is_file(), err
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    assert cli(["run", str(out), "--input", str(tmp_path / "x.npz")], capsys)[0] == 0
    monkeypatch.delenv("ONNXSMITH_BUNDLE_KEY")
    _edit_manifest(out, lambda m: m["notes"].append("edited"))  # checksum rewritten, signature cannot be
    monkeypatch.setenv("ONNXSMITH_BUNDLE_KEY", str(key))
    _assert_one_line_error(*cli(["run", str(out), "--input", str(tmp_path / "x.npz")], capsys), 2, "bad signature")


# --- 3. NaN never validates ---------------------------------------------------------------------------------------

def _poison_artifact(bundle: Path, value: float) -> None:
    """Make the artifact multiply its output by ``value`` (NaN: a backend that computes garbage)."""
    path = bundle / "artifact" / "model.optimized.onnx"
    model = onnx.load(str(path))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "poison"))
    model.graph.node.append(helper.make_node("Mul", [f"{out}_raw", "poison"], [out]))
    onnx.save(model, str(path))
    _edit_manifest(bundle, lambda m: m["files"].update({"artifact/model.optimized.onnx": _sha(path)}))


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_nan_outputs_fail_validation_and_json_stays_valid(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _poison_artifact(bundle, float("nan"))
    code, out, err = cli(["validate", str(bundle), "--json"], capsys)
    assert code == 6, err
    record = json.loads(out, parse_constant=lambda c: pytest.fail(f"stdout holds {c}"))
    assert record["passed"] is False and record["nonfinite_outputs"] == record["samples"] * 10
    assert record["cosine_min"] == 0.0 and "NaN or infinite" in record["failures"][0]
    assert _strict_json(bundle / "validation.json")["passed"] is False
    assert "FAILED" in (bundle / "report.md").read_text()


def test_nan_in_data_and_nan_thresholds_are_refused(bundle: Path, tmp_path: Path, cnn_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = np.zeros((4, 3, 16, 16), np.float32)
    data[2, 0, 0, 0] = np.nan
    np.savez(tmp_path / "val.npz", input=data)
    _assert_one_line_error(*cli(["validate", str(bundle), "--data", str(tmp_path / "val.npz")], capsys), 2,
                           "NaN or infinite values")
    data[2, 0, 0, 0] = np.inf
    np.savez(tmp_path / "calib.npz", input=data)
    _assert_one_line_error(*cli(["compile", str(cnn_path), "-b", "onnxruntime", "--precision", "int8",
                                 "--calibration", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "q")], capsys), 2,
                           "first in sample 2")
    assert not (tmp_path / "q").exists()
    for value in ("nan", "inf", "2"):
        _assert_one_line_error(*cli(["validate", str(bundle), "--min-cosine", value], capsys), 2,
                               "invalid minimum cosine")
