"""``onnxsmith verify``: the seal covers every file of a bundle, the ones compile writes (manifest.json) and the
records written later (records.json), so an edited, added or removed file anywhere is a mismatch (exit 6)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from onnxsmith.cli import main
from tests.cli.test_cli import cli
from tests.models import make_cnn

KEY = "ONNXSMITH_BUNDLE_KEY"


def _run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None), args


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A signed bundle with every later record: compile, validate (examples/), profile, serving/."""
    import onnx

    root = tmp_path_factory.mktemp("verify")
    (root / "key").write_text("k" * 32)
    onnx.save_model(make_cnn(), str(root / "cnn.onnx"))
    before = os.environ.get(KEY)
    os.environ[KEY] = str(root / "key")
    try:
        bundle = root / "bundle"
        _run(["compile", str(root / "cnn.onnx"), "-b", "onnxruntime", "-o", str(bundle)])
        _run(["validate", str(bundle), "--samples", "8"])
        _run(["profile", str(bundle), "-p", "quick"])
        _run(["serving", str(bundle)])
        yield bundle
    finally:
        if before is None:
            os.environ.pop(KEY, None)
        else:
            os.environ[KEY] = before


@pytest.fixture
def copy(sealed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY, str(sealed.parent / "key"))
    shutil.copytree(sealed, tmp_path / "b")
    return tmp_path / "b"


def _one(bundle: Path, folder: str) -> Path:
    return sorted(p for p in (bundle / folder).rglob("*") if p.is_file())[0] if (bundle / folder).is_dir() \
        else bundle / folder


def test_a_fresh_bundle_verifies(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["verify", str(copy)], capsys)
    assert code == 0, err
    assert "signature ok" in out
    listed = json.loads((copy / "manifest.json").read_text())["files"]
    records = json.loads((copy / "records.json").read_text())["files"]
    assert any(n.startswith("deploy/") for n in listed)
    assert {"report.md", "profile.json", "validation.json"} <= set(records)
    assert any(n.startswith("serving/") for n in records) and any(n.startswith("examples/") for n in records)
    assert f"verified {len(listed) + len(records)} files" in out


PLACES = ("artifact", "reference", "deploy", "serving", "examples", "profile.json", "report.md")


@pytest.mark.parametrize("change", ("edited", "added", "removed"))
@pytest.mark.parametrize("where", PLACES)
def test_any_change_anywhere_is_a_mismatch(copy: Path, where: str, change: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    file = _one(copy, where)
    rel = file.relative_to(copy).as_posix()
    if change == "edited":
        with open(file, "ab") as f:
            f.write(b"\n")
    elif change == "removed":
        file.unlink()
    else:
        rel = f"{where}/extra.txt" if (copy / where).is_dir() else f"{where}.orig"
        (copy / rel).write_text("x")
    code, out, err = cli(["verify", str(copy)], capsys)
    assert code == 6, (out, err)
    assert f"'{rel}' {'is missing' if change == 'removed' else 'was ' + change}" in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_forged_records_list_needs_the_key(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone without the key edits profile.json and rewrites records.json's sha256 to match: refused."""
    (copy / "profile.json").write_text("{}\n")
    data = json.loads((copy / "records.json").read_text())
    data["files"]["profile.json"] = hashlib.sha256(b"{}\n").hexdigest()
    manifest_sha = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    body = json.dumps({"manifest_sha256": manifest_sha, "files": dict(sorted(data["files"].items()))},
                      sort_keys=True, separators=(",", ":")).encode()
    data["sha256"] = hashlib.sha256(body).hexdigest()
    (copy / "records.json").write_text(json.dumps(data))
    code, _, err = cli(["verify", str(copy)], capsys)
    assert code == 6 and "records.json has no valid signature" in err, err


def test_a_later_writer_keeps_an_earlier_edit_visible(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Resealing after `validate` lists what it wrote afresh, not whatever it finds: an edited deploy program or
    serving config stays a mismatch."""
    config = sorted((copy / "serving").rglob("config.pbtxt"))[0]
    config.write_text(config.read_text() + "\n# edited\n")
    assert cli(["validate", str(copy), "--samples", "8"], capsys)[0] == 0
    code, _, err = cli(["verify", str(copy)], capsys)
    assert code == 6 and f"'{config.relative_to(copy).as_posix()}' was edited" in err, err


def test_not_a_bundle_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["verify", str(tmp_path)], capsys)
    assert code == 2 and "not an onnxsmith bundle" in err
