"""Decisions that survive noise: a confidence interval on the ratio of two medians, from repeated runs.

Timings on a shared machine drift and jitter; one run each of A and B ranks them by whichever ran in a quiet moment.
Every comparison ``optimize`` and ``profile`` make goes through :func:`compare_runs`: each side is a list of runs
(the median latency of one run, or of one block of a run), the statistic is the ratio of the medians of those runs,
and its confidence interval comes from a seeded bootstrap that resamples runs. When the two sides were measured
interleaved (A B A B ...), run ``i`` of A and run ``i`` of B are resampled together (a paired bootstrap), so slow
drift that hits both sides cancels out of the ratio. A change is significant only when the whole interval lies on
one side of 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 0
NO_CHANGE = "no significant change"


@dataclasses.dataclass(frozen=True)
class RatioCI:
    """``median(a) / median(b)`` with its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    runs_a: int
    runs_b: int
    confidence: float = CONFIDENCE
    paired: bool = False
    """Run ``i`` of each side was measured next to each other (interleaved), and resampled together."""
    method: str = "bootstrap"

    @property
    def significant(self) -> bool:
        return self.high < 1.0 or self.low > 1.0

    def verdict(self, lower_is_better: bool = True, margin: float = 0.0) -> str:
        """``better``, ``worse`` or ``no significant change`` for side a against side b. ``margin``: the smallest
        win that counts as one: "better" needs the whole interval beyond ``1 - margin`` (``1 + margin`` when higher
        is better); a smaller significant win is ``no significant change``."""
        if not self.significant:
            return NO_CHANGE
        if (self.high < 1.0) == lower_is_better:
            beyond = self.high < 1.0 - margin if lower_is_better else self.low > 1.0 + margin
            return "better" if beyond else NO_CHANGE
        return "worse"

    def text(self, unit: str = "") -> str:
        """``0.912 [0.897, 0.931], 95 % CI, 8 interleaved runs each``."""
        runs = (f"{self.runs_a} interleaved runs each" if self.paired and self.runs_a == self.runs_b
                else f"{self.runs_a} vs {self.runs_b} runs")
        return (f"{self.ratio:.3f}{unit} [{self.low:.3f}, {self.high:.3f}], {self.confidence * 100:.0f} % CI, "
                f"{runs}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"significant": self.significant}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RatioCI:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def compare_runs(a: Sequence[float], b: Sequence[float], *, paired: bool | None = None,
                 confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED) -> RatioCI:
    """The ratio ``median(a) / median(b)`` of two sets of per-run figures and its bootstrap confidence interval.

    ``paired`` (default: both sides have the same number of runs) resamples run indices jointly, as suits
    interleaved measurements. Deterministic for a given ``seed``. With one run on a side there is nothing to
    resample: the interval is the point itself on that side, so such a comparison is only as good as its other side.
    """
    import numpy as np

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size == 0 or xb.size == 0:
        raise ValueError("compare_runs needs at least one run on each side")
    if np.any(xa <= 0) or np.any(xb <= 0) or not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
        raise ValueError("run figures must be positive and finite")
    ratio = float(np.median(xa) / np.median(xb))
    if paired is None:
        paired = xa.size == xb.size and xa.size > 1
    rng = np.random.default_rng(seed)
    if paired:
        if xa.size != xb.size:
            raise ValueError("paired runs need the same number of runs on each side")
        idx = rng.integers(0, xa.size, size=(resamples, xa.size))
        stats = np.median(xa[idx], axis=1) / np.median(xb[idx], axis=1)
    else:
        sa = np.median(xa[rng.integers(0, xa.size, size=(resamples, xa.size))], axis=1)
        sb = np.median(xb[rng.integers(0, xb.size, size=(resamples, xb.size))], axis=1)
        stats = sa / sb
    alpha = (1.0 - confidence) / 2
    low, high = (float(v) for v in np.quantile(stats, [alpha, 1.0 - alpha]))
    return RatioCI(round(ratio, 6), round(min(low, ratio), 6), round(max(high, ratio), 6), int(xa.size),
                   int(xb.size), confidence, bool(paired))


def block_medians(samples: Sequence[float], blocks: int = 20) -> list[float]:
    """Medians of ``blocks`` contiguous stretches of one timed loop (fewer when there are too few samples).

    Contiguous blocks keep the slow drift of a run visible to the bootstrap, which i.i.d. resampling of single
    iterations would hide (their interval is too narrow on a shared machine)."""
    import numpy as np

    arr = np.asarray(samples, dtype=np.float64)
    n = max(1, min(blocks, arr.size // 5 or 1))
    return [round(float(np.median(part)), 5) for part in np.array_split(arr, n) if part.size]


def is_busy(load: float | None, cores: int, own_threads: int = 0) -> bool:
    """Whether a load average says other work competed for the cores (``own_threads``: our own runnable ones)."""
    return load is not None and cores > 0 and load - own_threads >= 0.5 * cores
