"""A bad value in a target file's [device.<backend>] table is refused by the option's own declaration, like the
same value given with --option: exit 2, naming the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from onnxsmith.targets import CATALOGUE
from tests.cli.test_cli import cli

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "onnxsmith" / "examples" / "digits" / "digits_cnn.onnx"


def test_a_bad_declared_option_in_a_target_file_exits_2_like_the_option(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = (CATALOGUE / "apple" / "m3.toml").read_text()
    bad = re.sub(r'compute_units\s*=\s*"[^"]*"', 'compute_units = "warp-drive"', text)
    assert bad != text
    path = tmp_path / "my-m3.toml"
    path.write_text(bad.replace('id = "apple/m3"', 'id = "my-m3"'))
    code, _, err = cli(["compile", str(MODEL), "-t", str(path), "-b", "coreml", "-o", str(tmp_path / "a")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "[device.coreml]" in err and "compute_units=warp-drive" in err
    code, _, err = cli(["compile", str(MODEL), "-t", "apple/m3", "-b", "coreml", "--option", "compute_units=warp-drive",
                        "-o", str(tmp_path / "b")], capsys)
    assert code == 2 and "compute_units=warp-drive" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
