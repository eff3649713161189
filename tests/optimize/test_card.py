"""The evidence card renderer: JSON, Markdown and self-contained HTML from one record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onnxsmith.optimize.card import write_card
from onnxsmith.optimize.record import Card
from tests.optimize.cards import STEP_NAMES, synthetic_card


@pytest.fixture(scope="module")
def card_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Card, Path]:
    directory = tmp_path_factory.mktemp("card")
    return synthetic_card(directory), directory


def test_card_files_come_from_one_record(card_dir: tuple[Card, Path]) -> None:
    card, tmp_path = card_dir
    files = write_card(card, tmp_path)
    assert {k: p.name for k, p in files.items()} == {
        "latency_accuracy": "latency_accuracy.svg", "throughput_batch": "throughput_batch.svg",
        "json": "card.json", "md": "card.md", "html": "card.html"}
    assert Card.from_json(json.loads(files["json"].read_text())) == card
    md = files["md"].read_text()
    html = files["html"].read_text()
    for name in STEP_NAMES:
        assert re.search(rf"^\| {re.escape(name)} \|", md, re.MULTILINE), name
        assert f'data-step="{name}"' in html
        assert f'id="step-{name.replace(":", "-")}"' in html
    chosen = card.step(card.chosen or "")
    assert f"Chosen: {chosen.name}" in md and f"Chosen: {chosen.name}" in html
    # figures in the HTML are the record's, formatted
    assert f"<td>{chosen.latency_p50_ms:.2f}</td>" in html
    assert "accuracy drop 2.22 % exceeds the 1.00 % allowed by 1.22 %" in md
    assert "compile failed: synthetic failure for the renderer test" in html
    assert "![latency vs accuracy, Pareto front marked](card_files/latency_accuracy.svg)" in md
    assert "Best for p99 &lt;= 10.00 ms" in html


def test_html_is_self_contained(card_dir: tuple[Card, Path]) -> None:
    card, directory = card_dir
    html = write_card(card, directory)["html"].read_text()
    assert "<style>" in html and "<link" not in html and "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere
    assert html.count("<svg") == 2 and "Pareto front" in html
    examples = sum(len(s.worst) for s in card.steps)
    assert html.count('src="data:image/png;base64,') == examples == 5
    assert re.findall(r'src="(?!data:)', html) == []  # every image is inline, none is read from a file


def test_failure_card_says_which_constraint_failed(card_dir: tuple[Card, Path], tmp_path: Path) -> None:
    import dataclasses

    from onnxsmith.optimize.selection import select

    card, _ = card_dir
    strict = dataclasses.replace(card.constraints, latency_budget_ms=0.5)
    selection = select(card.steps, strict, "baseline")
    failed = dataclasses.replace(card, constraints=strict, steps=selection.steps, chosen=None,
                                 failure=selection.failure)
    files = write_card(failed, tmp_path / "failed")
    text = files["md"].read_text()
    assert "Nothing met the constraints: latency: the fastest step that meets the accuracy constraint, " \
           "onnxruntime-int8, has p50 1.10 ms, 0.600 ms (120.0 %) over the 0.500 ms budget" in text
    assert 'class="verdict fail"' in files["html"].read_text()
