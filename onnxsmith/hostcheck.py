"""Can this machine run code built for a target?"""

from __future__ import annotations

import platform

from onnxsmith.plugin import Support
from onnxsmith.targets import Target


def host_matches(target: Target) -> Support:
    """Whether this machine's CPU (arch, OS, ISA flags) can run code built for ``target``'s CPU."""
    from onnxsmith.targets.host import cpu_flags

    req = target.requires
    arch = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
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
