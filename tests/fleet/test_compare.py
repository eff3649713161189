"""``onnxsmith compare`` on the local executor through the real CLI: measured host cells, a cell compiled for a
device this machine lacks, a cell whose backend is missing; the table, the JSON record, and the HTML page rendered
by headless Chromium (like the evidence card)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optimize.test_card_browser import _chromium, _flags

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "onnxsmith" / "examples" / "digits"
CELLS = ["host:onnxruntime:fp32", "host:openvino:fp32", "nvidia/h100:onnxruntime:fp32", "host:tensorrt"]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    cache = out.parent / "cache"
    import os

    env = {**os.environ, "ONNXSMITH_CACHE_DIR": str(cache)}
    args = [sys.executable, "-m", "onnxsmith", "compare", str(EXAMPLE / "digits_cnn.onnx"),
            *sum((["-t", c] for c in CELLS), []), "--data", str(EXAMPLE / "validation.npz"), "--labels", "label",
            "-p", "quick", "-o", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    return {"proc": proc, "out": out, "record": json.loads((out / "compare.json").read_text())}


def test_compare_measures_what_runs_here_and_says_why_not_for_the_rest(result: dict) -> None:
    proc = result["proc"]
    assert proc.returncode == 0, proc.stderr
    cells = {c["cell"]: c for c in result["record"]["cells"]}
    assert list(cells) == CELLS
    for name in CELLS[:2]:
        cell = cells[name]
        assert cell["status"] == "measured" and not cell["emulated"] and cell["rank"] in (1, 2)
        assert cell["p50_ms"] > 0 and cell["p99_ms"] >= cell["p50_ms"] and cell["validation_passed"]
        assert cell["accuracy"] == pytest.approx(cell["reference_accuracy"], abs=0.02)
        bundle = result["out"] / cell["bundle"]
        assert json.loads((bundle / "profile.json").read_text())["latency_ms"]["p50"] == cell["p50_ms"]
        assert (bundle / "validation.json").is_file() and (bundle / "manifest.json").is_file()
    h100 = cells["nvidia/h100:onnxruntime:fp32"]
    assert h100["status"] == "compiled" and h100["reason"].startswith("not measured: no such device in the fleet")
    assert h100["artifact_size_bytes"] > 0 and h100["compile_seconds"] is not None and h100["rank"] is None
    trt = cells["host:tensorrt"]
    assert trt["status"] == "failed" and "tensorrt" in trt["reason"] and trt["bundle"] is None
    assert "no such device in the fleet" in proc.stdout and "rank 1" in proc.stdout
    assert not [p for p in result["out"].parent.iterdir() if p.name.startswith(".cmp")]  # no private dir left


def test_compare_refuses_bad_cells_before_running(tmp_path: Path) -> None:
    from onnxsmith.cli import main

    for cell, words in (("host:openvino:int4", "precision"), ("host:openvinoo", "did you mean"),
                        ("nowhere/none", "target")):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", str(EXAMPLE / "digits_cnn.onnx"), "-t", cell, "-o", str(tmp_path / "x")])
        assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.browser
def test_compare_page_renders_in_chromium(result: dict) -> None:
    browser = _chromium()
    html = result["out"] / "compare.html"
    profile_dir = result["out"].parent / "chromium"
    dom = subprocess.run([browser, *_flags(profile_dir), "--dump-dom", html.resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "<title>Compare: digits_cnn</title>" in text
    rows = re.findall(r'<tr class="([^"]+)" data-cell="([^"]+)" data-status="(\w+)"', text)
    assert [r[1] for r in rows] == CELLS
    assert [r[2] for r in rows] == ["measured", "measured", "compiled", "failed"]
    assert any("rank-1" in r[0] for r in rows)
    for plot in ("plot-latency", "plot-accuracy-latency", "plot-efficiency"):
        figure = re.search(rf'<figure id="{plot}">(.*?)</figure>', text, re.DOTALL)
        assert figure is not None and "<svg" in figure.group(1) and "<path" in figure.group(1), plot
    assert "src=\"http" not in text and "href=\"http" not in text  # self-contained
    embedded = re.search(r'<script type="application/json" id="record">(.*?)</script>', text, re.DOTALL)
    assert embedded is not None and json.loads(embedded.group(1)) == result["record"]  # what the browser parsed
    shot = result["out"].parent / "shot.png"
    run = subprocess.run([browser, *_flags(result["out"].parent / "chromium-shot"), "--window-size=1280,1600",
                          f"--screenshot={shot}", html.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file()
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert image.std() > 20
    green = (np.abs(image - np.array([0xDA, 0xFB, 0xE1])).sum(axis=2) < 12).sum()
    assert green > 2000  # the rank-1 row is highlighted


HOSTILE = ["$\\frac{$ unbalanced", "</script><script>alert(1)</script>", "<!-- & \"quoted\" \u2028"]


def test_compare_page_and_plots_keep_hostile_names_as_text(result: dict) -> None:
    """Cell names come from the command line and target files: a '$' is no mathtext (an unbalanced one crashed the
    plot after every cell ran) and no name can end the embedded JSON, which parses back to the record."""
    from html.parser import HTMLParser

    from onnxsmith.fleet.render import accuracy_svg, latency_svg, render_html

    record = json.loads(json.dumps(result["record"]))
    measured = [c for c in record["cells"] if c["status"] == "measured"]
    for cell, name in zip(measured + record["cells"][len(measured):], HOSTILE):
        cell["cell"] = name
    record["model"]["name"] = HOSTILE[1]
    svg = latency_svg(record)
    assert svg is not None and "unbalanced" in svg  # drawn as text
    assert accuracy_svg(record) is not None
    page = render_html(record)

    class Scripts(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.scripts: list[tuple[dict, str]] = []
            self.current: dict | None = None

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "script":
                self.current = dict(attrs)
                self.scripts.append((self.current, ""))

        def handle_data(self, data: str) -> None:
            if self.current is not None:
                attrs, text = self.scripts[-1]
                self.scripts[-1] = (attrs, text + data)

        def handle_endtag(self, tag: str) -> None:
            if tag == "script":
                self.current = None

    parser = Scripts()
    parser.feed(page)
    assert [attrs for attrs, _ in parser.scripts] == [{"type": "application/json", "id": "record"}]
    assert json.loads(parser.scripts[0][1]) == record
