"""The README stays a guide (what it is, the two set-up commands, the command line, what runs where) and every doc
it links exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_every_linked_doc_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\(((?!https?://)[^)#]+)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).is_file(), link
    for doc in (ROOT / "docs").rglob("*.md"):  # each doc links back, and its own relative links resolve
        for link in re.findall(r"\]\(((?!https?://)[^)#]+)", doc.read_text()):
            assert (doc.parent / link).resolve().exists(), (doc, link)
