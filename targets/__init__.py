"""The hardware catalogue: one TOML file per device under ``targets/<vendor>/<device>.toml``.

``load_target("nvidia/h100")`` reads the file shipped here, ``load_target("path/to/my.toml")`` a file of the
user's, and ``load_target("host")`` detects this machine (see :mod:`onnxsmith.targets.host`). Files are validated
once, on load, and errors name the file and key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxsmith.errors import OnnxsmithError, TargetError
from onnxsmith.precisions import PRECISIONS, headline_precision
from onnxsmith.tomlutil import Fields, read_toml

CATALOGUE = Path(__file__).parent
KINDS = ("cpu", "gpu", "npu", "soc")


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak compute per precision (TFLOP/s, or TOP/s for int8) and memory bandwidth, with their source."""

    tflops: Mapping[str, float]
    memory_bandwidth_gbps: float
    source: str

    def for_precision(self, precision: str) -> float | None:
        """Peak for ``precision`` in TFLOP/s; int8+bf16 style mixed strings use their first part."""
        return self.tflops.get(headline_precision(precision))


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What this machine must have for an artifact of the target to run here."""

    arch: str = ""
    """``x86_64`` or ``aarch64``; empty when any."""
    cpu_flags: tuple[str, ...] = ()
    """``/proc/cpuinfo`` flags the code generated for the target may use."""
    os: str = ""
    """``linux``, ``darwin``; empty when any."""
    gpu: str = ""
    """A substring of the GPU's name (e.g. ``H100``) when the target is a GPU."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One hardware target."""

    id: str
    name: str
    vendor: str
    kind: str
    backends: tuple[str, ...]
    """Backend preference, best first."""
    precisions: tuple[str, ...]
    peak: Peak
    requires: Requirements
    device_options: Mapping[str, Mapping[str, Any]]
    """Per backend id: options for that backend (device name, llvm mcpu/mattr/triple, GPU arch...)."""
    cores: int = 0
    description: str = ""
    source_file: str = ""
    detected: bool = False
    """True for ``host``: built from this machine's facts rather than read from a file."""

    def options_for(self, backend: str) -> Mapping[str, Any]:
        return self.device_options.get(backend, {})

    def fingerprint(self) -> str:
        """Hash of everything that changes generated code (part of every cache key)."""
        data = {
            "id": self.id,
            "backends": self.backends,
            "precisions": self.precisions,
            "requires": dataclasses.asdict(self.requires),
            "device_options": {k: dict(v) for k, v in self.device_options.items()},
            "cores": self.cores,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["peak"]["tflops"] = dict(self.peak.tflops)
        data["device_options"] = {k: dict(v) for k, v in self.device_options.items()}
        return data


MAX_CORES = 65536
"""The most cores a target file may declare (more is a typo, and would size thread pools absurdly)."""


def parse_target(data: Mapping[str, Any], path: Path | str, target_id: str | None = None) -> Target:
    """Build a :class:`Target` from a TOML table, validating every key."""
    f = Fields(data, path)
    f.unknown({"id", "name", "vendor", "kind", "backends", "precisions", "peak", "requires", "device", "cores",
               "description"})
    peak = f.table("peak", required=True)
    peak.unknown({"fp32_tflops", "bf16_tflops", "fp16_tflops", "int8_tops", "memory_bandwidth_gbps", "source"})
    tflops = {}
    for precision in PRECISIONS:
        key = f"{precision}_tops" if precision == "int8" else f"{precision}_tflops"
        value = peak.get(key, float, None)
        if value is not None:
            if value <= 0:
                raise TargetError(f"invalid {path}", f"key 'peak.{key}' must be positive")
            tflops[precision] = value
    req = f.table("requires")
    req.unknown({"arch", "cpu_flags", "os", "gpu"})
    device = f.table("device")
    from onnxsmith.registry import backend_names

    registered = tuple(backend_names())  # built-in and third-party plugins alike
    backends = f.str_list("backends", choices=registered)
    for name in device.data:
        if name not in registered:
            raise TargetError(f"invalid {path}", f"key 'device.{name}' names no installed backend "
                              f"({', '.join(registered)})", "install the backend's plugin, or fix the name")
        device.table(name)
        _check_declared_options(name, device.data[name], path)
    cores = f.get("cores", int, 0)
    if not 0 <= cores <= MAX_CORES:
        raise TargetError(f"invalid {path}", f"key 'cores' is {cores}; it must be between 1 and {MAX_CORES} "
                          "(0 or absent: unknown)")
    file_id = f.get("id", str)
    if target_id is not None and file_id != target_id:
        raise TargetError(f"invalid {path}", f"key 'id' is {file_id!r} but the file's place in the catalogue "
                          f"makes it {target_id!r}")
    return Target(
        id=file_id,
        name=f.get("name", str),
        vendor=f.get("vendor", str),
        kind=f.get("kind", str, choices=KINDS),
        backends=backends,
        precisions=f.str_list("precisions", choices=PRECISIONS),
        peak=Peak(tflops=tflops, memory_bandwidth_gbps=peak.get("memory_bandwidth_gbps", float),
                  source=peak.get("source", str)),
        requires=Requirements(
            arch=req.get("arch", str, "", choices=("", "x86_64", "aarch64")),
            cpu_flags=req.str_list("cpu_flags", ()),
            os=req.get("os", str, "", choices=("", "linux", "darwin", "ios")),
            gpu=req.get("gpu", str, ""),
        ),
        device_options={k: dict(v) for k, v in device.data.items()},
        cores=cores,
        description=f.get("description", str, ""),
        source_file=str(path),
    )


def _check_declared_options(backend: str, table: Mapping[str, Any], path: Path | str) -> None:
    """A ``[device.<backend>]`` key that the backend declares as an option is parsed by the same declaration as
    ``--option`` (exit 2 naming the file and the key); target-only keys (a TVM ``mcpu``, an OpenVINO ``device``)
    are the backend's to check. A plugin that cannot be loaded is reported where it is used, not here."""
    from onnxsmith.registry import get_backend

    try:
        declared = {o.name: o for o in get_backend(backend).options}
    except OnnxsmithError:
        return
    for key, value in table.items():
        if key in declared:
            declared[key].parse(value, f"[device.{backend}] option in {path}:")


def catalogue_files() -> dict[str, Path]:
    """Target id -> file, for every target shipped in the catalogue."""
    files = {}
    for path in sorted(CATALOGUE.glob("*/*.toml")):
        files[f"{path.parent.name}/{path.stem}"] = path
    return files


def list_targets() -> list[Target]:
    """Every target in the catalogue, plus ``host`` first."""
    from onnxsmith.targets.host import detect_host

    return [detect_host()] + [parse_target(read_toml(p), p, tid) for tid, p in catalogue_files().items()]


def load_target(spec: str) -> Target:
    """A target by catalogue id (``intel/xeon-sapphire-rapids``), ``host``, or path to a TOML file."""
    if spec == "host":
        from onnxsmith.targets.host import detect_host

        return detect_host()
    files = catalogue_files()
    if spec in files:
        return parse_target(read_toml(files[spec]), files[spec], spec)
    path = Path(spec)
    if path.suffix == ".toml" and path.is_file():
        return parse_target(read_toml(path), path)
    import difflib

    close = difflib.get_close_matches(spec, ["host", *files], n=5, cutoff=0.5) or ["host", *sorted(files)[:5]]
    raise TargetError(f"unknown target '{spec}'", "no catalogue entry or TOML file has that id",
                      f"run 'onnxsmith targets' to list them; close: {', '.join(close)}")
