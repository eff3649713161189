"""TVM target dicts from onnxsmith targets (the ``[device.tvm]`` table of a target file).

Keys read from ``[device.tvm]``:

- ``kind``: ``llvm`` (CPUs) or ``cuda`` (NVIDIA GPUs); default from the target's kind.
- llvm: ``mtriple``, ``mcpu``, ``mattr`` (list, e.g. ``["+neon"]``), ``num-cores``, ``mabi``; ``mcpu = "native"``
  is resolved to this machine's CPU name (TVM's LLVM rejects ``native`` and falls back to ``generic``), and on
  x86 hosts the features that name implies but ``/proc/cpuinfo`` lacks are switched off in ``mattr`` (a
  hypervisor can hide AVX-512 from a Zen 4).
- cuda: ``arch`` (``sm_90``), ``max_threads_per_block``, ``max_shared_memory_per_block``, ``thread_warp_size``,
  ``registers_per_block``, ``l2_cache_size_bytes``, ``max_num_threads``; a ``[device.tvm.host]`` table is the
  llvm target of the host CPU (Jetson: aarch64).
- ``cc``: onnxsmith's own key, the C compiler that links the shared library (``aarch64-linux-gnu-gcc`` for
  cross-compiled targets); default ``<mtriple>-gcc`` when the triple's architecture is not this machine's.

Everything else is TVM's to validate; an unknown key is reported with the target file and key.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import shutil
from collections.abc import Mapping
from typing import Any

from onnxsmith.errors import TargetError, UnsupportedError
from onnxsmith.targets import Target

from onnxsmith.compilers.tvm.common import tvm, vendor_why

LLVM_KEYS = ("kind", "mtriple", "mcpu", "mattr", "num-cores", "mabi", "opt-level")
CUDA_KEYS = ("kind", "arch", "max_threads_per_block", "max_shared_memory_per_block", "thread_warp_size",
             "registers_per_block", "l2_cache_size_bytes", "max_num_threads", "host")
OWN_KEYS = ("cc",)
"""Keys onnxsmith reads itself; they are not passed to TVM."""

_CHECKED_FEATURES = ("avx", "fma", "f16c", "amx", "gfni", "vaes", "vpclmulqdq")
"""LLVM x86 feature prefixes compared with /proc/cpuinfo (same names there, give or take '_', '-', '.')."""
_ARCH_OF_TRIPLE = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}


@dataclasses.dataclass(frozen=True)
class TVMTarget:
    """What TVM compiles for: the target dict, how the library is linked, and where it runs."""

    spec: Mapping[str, Any]
    """The dict given to ``tvm.target.Target`` (JSON form: the string form raises in TVM 0.27)."""
    kind: str
    """``llvm`` or ``cuda``."""
    cc: str | None
    """Cross compiler that links ``model.so``; ``None``: TVM's default (this machine's compiler)."""
    arch: str
    """The CPU architecture the library's host code is for (``x86_64``, ``aarch64``)."""
    notes: tuple[str, ...] = ()

    @property
    def cross(self) -> bool:
        """Whether the library is for another CPU architecture than this machine's."""
        return self.arch != machine_arch()

    def create(self) -> Any:
        """The ``tvm.target.Target``; a bad key becomes a :class:`TargetError`."""
        try:
            return tvm().target.Target(dict(self.spec))
        except Exception as exc:
            raise TargetError("TVM rejects the target", vendor_why(exc),
                              "check the keys under [device.tvm] in the target file") from exc

    def canonical(self) -> str:
        """TVM's own JSON of the target (features included): what generated code depends on."""
        return str(self.create())


def machine_arch() -> str:
    arch = platform.machine().lower()
    return _ARCH_OF_TRIPLE.get(arch, arch)


def tvm_target(target: Target) -> TVMTarget:
    """The TVM target for ``target``, from its ``[device.tvm]`` table (see the module docstring)."""
    options = dict(target.options_for("tvm"))
    kind = str(options.get("kind", "cuda" if target.kind == "gpu" else "llvm"))
    where = f"{target.source_file or target.id}: [device.tvm]"
    if kind not in ("llvm", "cuda"):
        raise TargetError(f"invalid {where}", f"kind '{kind}' is not one onnxsmith drives (llvm, cuda)",
                          "use kind = \"llvm\" for CPUs or \"cuda\" for NVIDIA GPUs")
    allowed = (LLVM_KEYS if kind == "llvm" else CUDA_KEYS) + OWN_KEYS
    for key in options:
        if key not in allowed:
            raise TargetError(f"invalid {where}", f"key '{key}' is not a TVM {kind} target key onnxsmith passes "
                              f"on (allowed: {', '.join(allowed)})", "fix the spelling or remove it")
    cc = options.pop("cc", None)
    notes: list[str] = []
    if kind == "llvm":
        if "mtriple" not in options and target.requires.arch and target.requires.arch != machine_arch():
            options["mtriple"] = f"{target.requires.arch}-linux-gnu"
        spec, arch = _llvm_spec(options, notes)
    else:
        if "arch" not in options:
            raise TargetError(f"invalid {where}", "a cuda target needs 'arch' (e.g. \"sm_90\")",
                              "add arch = \"sm_XY\" for the GPU's compute capability X.Y")
        host = dict(options.pop("host", {}) or {})
        host.setdefault("kind", "llvm")
        host_spec, arch = _llvm_spec(host, notes)
        spec = {**options, "kind": "cuda", "host": host_spec}
    if cc is None and arch != machine_arch():
        triple = spec.get("mtriple") or spec.get("host", {}).get("mtriple")
        cc = f"{triple}-gcc"
    return TVMTarget(spec=spec, kind=kind, cc=str(cc) if cc else None, arch=arch, notes=tuple(notes))


def _llvm_spec(options: dict[str, Any], notes: list[str]) -> tuple[dict[str, Any], str]:
    spec = {"kind": "llvm", **options}
    triple = str(spec.get("mtriple", ""))
    arch = _ARCH_OF_TRIPLE.get(triple.split("-")[0], triple.split("-")[0]) if triple else machine_arch()
    if "mattr" in spec and isinstance(spec["mattr"], str):
        spec["mattr"] = [spec["mattr"]]
    if spec.get("mcpu") == "native":
        if arch != machine_arch():
            raise TargetError("invalid [device.tvm]", f"mcpu = \"native\" means this machine's CPU, but the target "
                              f"is {arch} and this machine is {machine_arch()}", "name the device's CPU in mcpu")
        name, masked = host_cpu()
        spec["mcpu"] = name
        if masked:
            spec["mattr"] = list(spec.get("mattr", [])) + [f"-{f}" for f in masked]
            notes.append(f"this CPU is LLVM's '{name}' but does not report {', '.join(masked)} "
                         "(hidden by the hypervisor?): generated code avoids them")
    if "num-cores" in spec:
        spec["num-cores"] = int(spec["num-cores"])
        if spec["num-cores"] <= 0:
            del spec["num-cores"]
    return spec, arch


@functools.lru_cache(maxsize=1)
def host_cpu() -> tuple[str, tuple[str, ...]]:
    """This machine's CPU as LLVM names it, and the LLVM features that name implies but the CPU lacks."""
    codegen = tvm().target.codegen
    name = str(codegen.llvm_get_system_cpu())
    if machine_arch() != "x86_64":
        return name, ()
    from onnxsmith.targets.host import cpu_flags

    flags = {_norm(f) for f in cpu_flags()}
    if not flags:  # no /proc/cpuinfo (macOS): trust LLVM's detection
        return name, ()
    implied = codegen.llvm_get_cpu_features(tvm().target.Target({"kind": "llvm", "mcpu": name}))
    masked = sorted(str(f) for f in implied if str(f).startswith(_CHECKED_FEATURES) and _norm(str(f)) not in flags)
    return name, tuple(masked)


def _norm(feature: str) -> str:
    return feature.lower().replace("_", "").replace("-", "").replace(".", "")


def cuda_sm(spec: Mapping[str, Any]) -> int:
    """``sm_90`` -> 90."""
    digits = "".join(ch for ch in str(spec.get("arch", "")) if ch.isdigit())
    return int(digits) if digits else 0


def check_cross_compiler(tt: TVMTarget) -> None:
    """Raise :class:`UnsupportedError` when the cross compiler that links the library is not installed."""
    if tt.cc and shutil.which(tt.cc) is None:
        package = "gcc-aarch64-linux-gnu" if tt.arch == "aarch64" else f"a C cross compiler for {tt.arch}"
        raise UnsupportedError(f"cannot link the {tt.arch} library", f"the cross compiler '{tt.cc}' is not installed",
                               f"apt-get install {package} (or set cc = \"...\" under [device.tvm])")
