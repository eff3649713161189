"""Profiles (presets) load and validate with file and key in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxsmith.errors import TargetError
from onnxsmith.profiles import list_profiles, load_profile


def test_presets_load() -> None:
    names = {p.name for p in list_profiles()}
    assert {"latency", "throughput", "balanced", "edge", "quick"} <= names
    latency = load_profile("latency")
    assert latency.performance_hint == "latency" and latency.batch_sizes == (1,)
    assert load_profile("throughput").performance_hint == "throughput"


def test_unknown_profile() -> None:
    with pytest.raises(TargetError, match="unknown profile 'fastest'.*latency"):
        load_profile("fastest")


def test_bad_profile_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nmax_accuracy_drop = 5\n')
    with pytest.raises(TargetError, match=r"mine.toml.*max_accuracy_drop"):
        load_profile(str(path))
    path.write_text('name = "mine"\n[runtime]\nperformance_hint = "fast"\n')
    with pytest.raises(TargetError, match=r"runtime.performance_hint.*latency, throughput"):
        load_profile(str(path))
    path.write_text('name = "mine"\nladder = ["fp64"]\n')
    with pytest.raises(TargetError, match=r"'ladder' has 'fp64'"):
        load_profile(str(path))
