"""Can this machine run code built for a target?"""

from __future__ import annotations

import platform

from onnxsmith.plugin import Support
from onnxsmith.targets import Target
from onnxsmith.units import machine_arch


def host_matches(target: Target) -> Support:
    """Whether this machine's CPU (arch, OS, ISA flags) can run code built for ``target``'s CPU."""
    from onnxsmith.targets.host import cpu_flags

    req = target.requires
    arch = machine_arch()
    system = platform.system().lower()
    if req.arch and req.arch != arch:
        return Support(False, f"{target.id} is an {req.arch} device and this machine is {arch}",
                       "copy the bundle to the device, or profile there with --rpc where the backend offers it")
    if req.os and req.os != system:
        return Support(False, f"{target.id} runs on {req.os} and this machine runs {system}",
                       "copy the bundle to the device")
    if req.gpu:
        return Support(False, f"{target.id} needs an NVIDIA {req.gpu} GPU", "run on a machine that has one")
    missing = [f for f in req.cpu_flags if f not in cpu_flags()]
    if missing:
        return Support(False, f"{target.id} code may use CPU features this machine lacks ({', '.join(missing)})",
                       "compile for 'host' or a target matching this CPU")
    return Support(True)


def nvidia_gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs on this machine (``nvidia-smi``), empty without one."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def gpu_name_matches(wanted: str, name: str) -> bool:
    """Whole-word match, so "L4" does not match "NVIDIA L40S"."""
    import re

    return bool(re.search(rf"(?<![\w-]){re.escape(wanted)}(?![\w-])", name, re.IGNORECASE))


def gpu_matches(target: Target) -> Support:
    """Whether this machine has the GPU ``target`` names in ``requires.gpu``."""
    wanted = target.requires.gpu
    names = nvidia_gpu_names()
    if not names:
        return Support(False, f"{target.id} needs an NVIDIA GPU and this machine has none",
                       "run on a machine with the GPU, or profile on the device")
    if wanted and not any(gpu_name_matches(wanted, n) for n in names):
        return Support(False, f"{target.id} needs an NVIDIA {wanted}; this machine has {', '.join(names)}",
                       "compile for the GPU you have (see 'onnxsmith targets')")
    return Support(True)
