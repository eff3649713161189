"""The HTML evidence card in a real browser: headless Chromium renders it; we check its DOM and a screenshot.

Needs the Debian package ``chromium`` (``make system-deps`` installs it); skipped when it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxsmith.optimize.card import write_card
from tests.optimize.cards import STEP_NAMES, synthetic_card

pytestmark = pytest.mark.browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


def _flags(profile_dir: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={profile_dir}"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    browser = _chromium()
    directory = tmp_path_factory.mktemp("card")
    card = synthetic_card(directory)
    html = write_card(card, directory)["html"]
    url = html.resolve().as_uri()
    dom = subprocess.run([browser, *_flags(directory / "profile-dom"), "--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = directory / "screenshot.png"
    run = subprocess.run([browser, *_flags(directory / "profile-shot"), "--window-size=1280,2400",
                          f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    return {"dom": dom.stdout, "shot": shot, "card": card}


def test_dom_has_a_row_for_every_step(rendered: dict[str, object]) -> None:
    dom = str(rendered["dom"])
    assert "<title>Evidence card: digits_cnn on host</title>" in dom
    rows = re.findall(r'<tr class="status-(\w+)" data-step="([^"]+)"', dom)
    assert [name for _, name in rows] == list(STEP_NAMES)
    card = rendered["card"]
    assert dict((n, s) for s, n in rows) == {s.name: s.status for s in card.steps}  # type: ignore[attr-defined]
    assert ("chosen", card.chosen) in rows  # type: ignore[attr-defined]


def test_dom_has_the_plots_and_the_example_images(rendered: dict[str, object]) -> None:
    dom = str(rendered["dom"])
    for plot in ("plot-latency-accuracy", "plot-throughput-batch"):
        figure = re.search(rf'<figure id="{plot}">(.*?)</figure>', dom, re.DOTALL)
        assert figure is not None, plot
        assert "<svg" in figure.group(1) and "<path" in figure.group(1)
    assert "Pareto front" in dom and "throughput (samples/s)" in dom
    images = re.findall(r'<img class="example" alt="([^"]+)" src="data:image/png;base64,', dom)
    assert len(images) == 5 and images[0].startswith("sample 3, label 0, predicted 1")


def test_screenshot_is_a_rendered_page(rendered: dict[str, object]) -> None:
    import numpy as np
    from PIL import Image

    shot = Path(str(rendered["shot"]))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert image.shape[:2] == (2400, 1280)
    assert image.std() > 20  # not blank
    coarse = image // 16
    colors = np.unique(coarse[..., 0] * 256 + coarse[..., 1] * 16 + coarse[..., 2])
    assert len(colors) > 50  # text, tables, plot lines and images, not a flat page
    # the chosen step's row is highlighted green (#dafbe1) somewhere on the first screen
    green = (np.abs(image - np.array([0xDA, 0xFB, 0xE1])).sum(axis=2) < 12).sum()
    assert green > 2000
