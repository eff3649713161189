"""'compile --target host' without --backend picks the backend by a short measurement on this machine (cached), says
why in one line, and --backend still overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxsmith.bundle import Bundle
from onnxsmith.build.pick import PICKS_FILE, candidates
from onnxsmith.model import load_model
from onnxsmith.targets import load_target
from tests.cli.test_cli import cli


def test_compile_for_host_picks_the_measured_fastest_and_caches_it(cnn_path: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  _isolated_cache: Path) -> None:
    monkeypatch.delenv("ONNXSMITH_HOST_PICK")
    names = candidates(load_model(cnn_path), load_target("host"), "fp32")
    if len(names) < 2:
        pytest.skip(f"fewer than two host backends usable here ({names})")
    code, _, err = cli(["compile", str(cnn_path), "-t", "host", "-o", str(tmp_path / "a")], capsys)
    assert code == 0, err
    picks = json.loads((_isolated_cache / PICKS_FILE).read_text())
    (pick,) = [p for p in picks.values() if p["model"] == "cnn"]
    assert Bundle.open(tmp_path / "a").backend == pick["backend"] in names
    line = next(ln for ln in err.splitlines() if "backend " + pick["backend"] + ":" in ln)
    for name in names:  # every candidate's figure is in the one line, with the CPU it was measured on
        assert f"{name} " in line and " ms" in line
    assert "on this machine (" in line and "--backend overrides" in line

    code, _, err = cli(["compile", str(cnn_path), "-t", "host", "-o", str(tmp_path / "b")], capsys)
    assert code == 0 and "measured earlier on this machine" in err, err  # cached: no second measurement
    assert Bundle.open(tmp_path / "b").backend == pick["backend"]

    other = next(n for n in names if n != pick["backend"])
    code, _, err = cli(["compile", str(cnn_path), "-t", "host", "-b", other, "-o", str(tmp_path / "c")], capsys)
    assert code == 0 and "measured" not in err, err
    assert Bundle.open(tmp_path / "c").backend == other  # --backend overrides


def test_compare_takes_the_same_measured_pick_for_a_host_cell_without_a_backend(
        cnn_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        _isolated_cache: Path) -> None:
    monkeypatch.delenv("ONNXSMITH_HOST_PICK")
    names = candidates(load_model(cnn_path), load_target("host"), "fp32")
    if len(names) < 2:
        pytest.skip(f"fewer than two host backends usable here ({names})")
    code, _, err = cli(["compile", str(cnn_path), "-t", "host", "-p", "quick", "-o", str(tmp_path / "a")], capsys)
    assert code == 0, err
    picked = Bundle.open(tmp_path / "a").backend
    code, out, err = cli(["compare", str(cnn_path), "-t", "host", "-p", "quick", "-o", str(tmp_path / "cmp"),
                          "--json"], capsys)
    assert code == 0, err
    (cell,) = json.loads(out)["cells"]
    assert cell["backend"] == picked, cell  # the cached pick: compile and compare agree on the host's backend
    notes = json.loads((tmp_path / "cmp" / cell["bundle"] / "manifest.json").read_text())["notes"]
    assert any("measured earlier on this machine" in n for n in notes), notes
