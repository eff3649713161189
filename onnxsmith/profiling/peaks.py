"""The measured-peaks store: what ``onnxsmith probe`` measured on a device, kept per device fingerprint under
``<cache>/peaks/``, read by every profile for its efficiency figure. The measuring routine is :mod:`onnxsmith.probe`
(it compiles and profiles, so it sits above :mod:`onnxsmith.profiling.run`; this store sits below it)."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from onnxsmith.precisions import headline_precision


def host_fingerprint() -> str:
    """This machine's CPU as the peaks depend on it: model name, ISA flags, cores available, architecture."""
    from onnxsmith.targets.host import cpu_flags, detect_host

    host = detect_host()
    data = {"name": host.name, "flags": sorted(cpu_flags()), "cores": host.cores, "machine": platform.machine()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def peaks_path(fingerprint: str | None = None) -> Path:
    from onnxsmith.build.cache import cache_root

    return cache_root() / "peaks" / f"{fingerprint or host_fingerprint()}.json"


def load_peaks(fingerprint: str | None = None) -> dict[str, Any] | None:
    """The stored probe of this machine (or of ``fingerprint``), None when it was never probed."""
    try:
        data = json.loads(peaks_path(fingerprint).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "peaks" in data else None


def measured_peak(precision: str) -> float | None:
    """Measured TFLOP/s (TOP/s for int8) of this machine for ``precision`` (mixed ``int8+fp32``: its first part)."""
    peaks = load_peaks()
    entry = (peaks or {}).get("peaks", {}).get(headline_precision(precision))
    return None if not entry else entry["tflops"]


def describe(record: dict[str, Any] | None) -> str:
    """One line for doctor and targets show."""
    if not record:
        return "measured peaks: none yet (run 'onnxsmith probe')"
    parts = [f"{p} {e['tflops'] * 1000:.0f} G{'OP' if p == 'int8' else 'FLOP'}/s" for p, e in record["peaks"].items()]
    return (f"measured peaks ({record['backend']}, {record['measured']}): {', '.join(parts)}, memory "
            f"{record['memory_bandwidth_gbps']} GB/s")
