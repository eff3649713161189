"""Optimization presets: one TOML file per profile under ``profiles/``.

A profile says how hard to try and how to measure: the precision ladder ``optimize`` walks, the batch sizes it
sweeps, the accuracy it may give up, the runtime hint (latency or throughput) and the measurement settings.
``--profile NAME`` picks one; ``--profile path/to/file.toml`` reads a user's file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from onnxsmith.errors import TargetError
from onnxsmith.tomlutil import Fields, read_toml

PRESETS = Path(__file__).parent
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclasses.dataclass(frozen=True)
class Measure:
    """How a profile run measures: warm-up, then at least ``min_iterations`` and ``min_seconds``."""

    warmup_iterations: int = 10
    min_iterations: int = 100
    min_seconds: float = 3.0
    max_seconds: float = 60.0
    throughput_seconds: float = 3.0
    """Length of the parallel-requests throughput run (0 disables it)."""
    rounds: int = 6
    """Interleaved runs per side whenever two runners are compared (profile vs its baseline, ladder steps): each
    run lasts ``round_seconds``; the ratio of medians gets a bootstrap confidence interval from them (< 2: off)."""
    round_seconds: float = 0.5


@dataclasses.dataclass(frozen=True)
class Profile:
    """One optimization preset."""

    name: str
    description: str
    precision: str
    """Default precision for ``compile`` when ``--precision`` is not given."""
    ladder: tuple[str, ...]
    """Precisions ``optimize`` tries, in order."""
    batch_sizes: tuple[int, ...]
    max_accuracy_drop: float
    """Largest accepted drop of accuracy (or agreement with fp32), as a fraction (0.01 = 1 %)."""
    performance_hint: str
    """``latency`` or ``throughput``: passed to backends that take one (OpenVINO)."""
    streams: int
    """Parallel streams; 0 lets the backend choose."""
    threads: int
    """Inference threads; 0 uses every core the target has."""
    prune: bool
    simplify: bool
    measure: Measure
    knobs: bool = False
    """``optimize`` tries the backends' runtime knobs (threads, streams, hints, graph level...) as ladder steps."""
    source_file: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_profile(data: dict[str, Any], path: Path | str) -> Profile:
    f = Fields(data, path)
    f.unknown({"name", "description", "precision", "ladder", "batch_sizes", "max_accuracy_drop", "runtime",
               "measure", "passes"})
    runtime = f.table("runtime")
    runtime.unknown({"performance_hint", "streams", "threads", "knobs"})
    measure = f.table("measure")
    measure.unknown({"warmup_iterations", "min_iterations", "min_seconds", "max_seconds", "throughput_seconds",
                     "rounds", "round_seconds"})
    passes = f.table("passes")
    passes.unknown({"simplify", "prune"})
    batch_sizes = f.get("batch_sizes", list, [1])
    if not batch_sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batch_sizes):
        raise TargetError(f"invalid {path}", "key 'batch_sizes' must be a non-empty list of positive integers")
    drop = f.get("max_accuracy_drop", float, 0.01)
    if not 0 <= drop <= 1:
        raise TargetError(f"invalid {path}", "key 'max_accuracy_drop' must be a fraction between 0 and 1")
    m = Measure(
        warmup_iterations=measure.get("warmup_iterations", int, 10),
        min_iterations=measure.get("min_iterations", int, 100),
        min_seconds=measure.get("min_seconds", float, 3.0),
        max_seconds=measure.get("max_seconds", float, 60.0),
        throughput_seconds=measure.get("throughput_seconds", float, 3.0),
        rounds=measure.get("rounds", int, 6),
        round_seconds=measure.get("round_seconds", float, 0.5),
    )
    if m.min_iterations < 1 or m.warmup_iterations < 0 or m.min_seconds < 0 or m.max_seconds < m.min_seconds:
        raise TargetError(f"invalid {path}", "table 'measure' needs min_iterations >= 1, warmup_iterations >= 0 "
                          "and 0 <= min_seconds <= max_seconds")
    if m.rounds < 0 or m.rounds > 1000 or not 0 < m.round_seconds <= 60:
        raise TargetError(f"invalid {path}", "table 'measure' needs 0 <= rounds <= 1000 and 0 < round_seconds <= 60")
    return Profile(
        name=f.get("name", str),
        description=f.get("description", str, ""),
        precision=f.get("precision", str, "fp32", choices=PRECISIONS),
        ladder=f.str_list("ladder", ("fp32",), choices=PRECISIONS),
        batch_sizes=tuple(batch_sizes),
        max_accuracy_drop=drop,
        performance_hint=runtime.get("performance_hint", str, "latency", choices=("latency", "throughput")),
        streams=runtime.get("streams", int, 0),
        threads=runtime.get("threads", int, 0),
        prune=passes.get("prune", bool, False),
        simplify=passes.get("simplify", bool, True),
        measure=m,
        knobs=runtime.get("knobs", bool, False),
        source_file=str(path),
    )


def profile_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESETS.glob("*.toml"))}


def list_profiles() -> list[Profile]:
    return [parse_profile(read_toml(p), p) for p in profile_files().values()]


def load_profile(spec: str = "balanced") -> Profile:
    """A profile by name (``latency``) or path to a TOML file."""
    files = profile_files()
    if spec in files:
        return parse_profile(read_toml(files[spec]), files[spec])
    path = Path(spec)
    if path.suffix == ".toml" and path.is_file():
        return parse_profile(read_toml(path), path)
    raise TargetError(f"unknown profile '{spec}'", "no preset or TOML file has that name",
                      f"choose one of {', '.join(files)} or give a path to a .toml file")
